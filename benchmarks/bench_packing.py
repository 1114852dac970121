"""What one coursework trial asks of a GPU: memory and arithmetic of a training step, measured on CPU.

    PYTHONPATH=. python benchmarks/bench_packing.py [--batch 80] [--vocab 5000] [--tokens 30]

How many trials to pack per GPU (`resources.gpu: 1 / k`) is bounded by the GPU's memory (every
trial holds its decoder, gradients, Adam state, a step's activations and its own CUDA context) and
by how busy one trial keeps the GPU. The first bound is measured here: a Show-Attend-Tell decoder at
the coursework's sizes (embed / attention / hidden 512, soft attention, α_c 1) on cached ResNet-101
features (B, 196, 2048) takes training steps on the CPU, in a fresh process per decoder, and the
process's peak resident memory over its memory before the first step is what the step allocates
(freed memory is kept by glibc here, so the peak is seen). Tensor sizes are the same on a GPU; the
CUDA context (about 0.5 GiB per process) and the caching allocator's slack come on top.
The arithmetic per step is counted with torch's FlopCounterMode (forward and backward), and the
bytes of one batch of fp16 cached features are what the data path must feed per step.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource

PIXELS, CHANNELS = 196, 2048
DIMS = dict(attention="soft", embed_dim=512, attention_dim=512, hidden_dim=512, dropout=0.5)
GIB = 2 ** 30


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_step(decoder_kind: str, batch: int, vocab: int, tokens: int, answer) -> None:
    """In a fresh process: parameters, peak step memory and FLOPs of one training step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainers.config import ModelConfig
    from trainers.losses import caption_loss
    from trainers.memory import reuse_freed_memory
    from trainers.models.decoder import Decoder

    reuse_freed_memory()  # as every trial does
    torch.set_num_threads(1)
    torch.manual_seed(0)
    decoder = Decoder(ModelConfig(decoder=decoder_kind, **DIMS), feature_dim=CHANNELS, vocab_size=vocab).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    features = torch.rand(batch, PIXELS, CHANNELS)  # (B, P, C)
    captions = torch.randint(4, vocab, (batch, tokens))  # (B, T)
    captions[:, 0], captions[:, -1] = 1, 2  # <start> ... <end>
    lengths = torch.full((batch,), tokens)  # (B,)

    def step() -> None:
        loss, _ = caption_loss(decoder, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(decoder.parameters(), 5.0)
        optimizer.step()

    before = resident_bytes()
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with FlopCounterMode(display=False) as counter:
        step()
    parameters = sum(p.numel() for p in decoder.parameters())
    answer.put({"decoder": decoder_kind, "parameters": parameters,
                "weights_grads_adam_gib": round(16 * parameters / GIB, 3),
                "step_peak_gib": round((peak - before) / GIB, 3),
                "step_gflops": round(counter.get_total_flops() / 1e9, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=80, help="the coursework's train.batch_size")
    parser.add_argument("--vocab", type=int, default=5000, help="Flickr8k ~2600 words at min freq 5, COCO ~9500")
    parser.add_argument("--tokens", type=int, default=30, help="padded caption length of a batch")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1")
    context = multiprocessing.get_context("spawn")
    results = []
    for kind in ("lstm", "gru"):
        answer = context.Queue()
        process = context.Process(target=measure_step, args=(kind, args.batch, args.vocab, args.tokens, answer))
        process.start()
        results.append(answer.get())
        process.join()
    print(json.dumps({
        "benchmark": "GPU demand of one coursework training step (measured on CPU)",
        "batch": args.batch, "vocab": args.vocab, "tokens": args.tokens,
        "feature_batch_fp16_mib": round(args.batch * PIXELS * CHANNELS * 2 / 2 ** 20, 1),
        "by_decoder": results,
    }, indent=1))


if __name__ == "__main__":
    main()
