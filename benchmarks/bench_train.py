"""Training throughput: orch's decoder step against the tutorial's, the fraction of matmul peak it
reaches, and what an epoch costs through a frozen ResNet-101 against the feature cache.

    PYTHONPATH=. python benchmarks/bench_train.py [--rounds 5] [--steps 2] [--threads 2] [--epochs-part]
    PYTHONPATH=. python benchmarks/bench_train.py --quick            # a minute: small sizes, checks it runs

(a) The decoder training step at the coursework's sizes (ResNet-101's 14x14x2048 grid, embed /
    attention / hidden 512, LSTM, soft attention, α_c 1, batch 32, vocabulary 5000, captions of
    10-22 tokens), two arms with the same sizes and data, Adam (orch's fused, as its recipe makes
    it), gradients clipped at 5:
    - `tutorial`: sgrvinod's Show-Attend-Tell decoder as its tutorial trains it, written here: the
      batch sorted by length, and at every step the attention re-projects the whole encoder grid
      (`encoder_att(encoder_out[:batch_size_t])`);
    - `orch`: trainers.models.Decoder with trainers.loop.caption_loss, as the recipe runs it (on a CPU
      the steps run as one autograd function, trainers.models.recurrence);
    - `orch_stepwise` (CPU only): the same decoder stepping through autograd, `_hidden_step` by step.
    The arms alternate over `--rounds` rounds (each warmed first); medians, min/max and the
    speed-up are reported, with the FLOPs of one step (torch's FlopCounterMode: the matmuls) and
    the fraction of the machine's matmul peak, measured in the same run with a large sgemm.
    On a GPU each arm also runs under bf16 autocast; `--compile` adds orch's step compiled
    (`train.compile`) under the default amp (bf16 on a GPU), its compilation in the warm-up.
(b) `--epochs-part`: one training epoch of the recipe (CaptionRecipe.train_epoch) on a synthetic
    dataset at `--image-size`, with a frozen ResNet-101 (weights none, 14x14 grid), on the feature
    cache and through the encoder (and on a GPU in float32 and bf16), timed over `--epoch-batches`
    batches per round and scaled to the epoch; plus building the cache, in images/s.

Like every trial and `orch train`, the process first keeps freed memory (trainers.memory;
`--glibc-default` leaves glibc's thresholds). Prints one JSON object. Targets on 2 CPU threads:
orch >= 6x the tutorial, >= 50 % of matmul peak.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launches import ceiling, dispatched, profiled  # noqa: E402
from timing import environment, interleaved, matmul_peak_gflops, ratio, summary  # noqa: E402

from trainers.compiled import CompiledSteps  # noqa: E402
from trainers.config import ModelConfig, TrainConfig, TrainerConfig  # noqa: E402
from trainers.devices import pick_device  # noqa: E402
from trainers.loop import CaptionRecipe, make_optimizer  # noqa: E402
from trainers.losses import caption_loss  # noqa: E402
from trainers.data.vocab import END_ID, PAD_ID, START_ID  # noqa: E402
from trainers.memory import reuse_freed_memory  # noqa: E402
from trainers.models.decoder import Decoder  # noqa: E402



class TutorialDecoder(nn.Module):
    """sgrvinod's DecoderWithAttention (a-PyTorch-Tutorial-to-Image-Captioning, models.py), written
    from its description: the encoder grid is projected again at every step, for the captions still
    running, which are a prefix of the batch sorted by length."""

    def __init__(self, vocab: int, feature_dim: int, embed: int, hidden: int, attention: int, dropout: float):
        super().__init__()
        self.encoder_att = nn.Linear(feature_dim, attention)
        self.decoder_att = nn.Linear(hidden, attention)
        self.full_att = nn.Linear(attention, 1)
        self.embedding = nn.Embedding(vocab, embed)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(embed + feature_dim, hidden)
        self.init_h = nn.Linear(feature_dim, hidden)
        self.init_c = nn.Linear(feature_dim, hidden)
        self.f_beta = nn.Linear(hidden, feature_dim)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, encoder_out: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor):
        lengths, order = lengths.sort(descending=True)
        encoder_out, captions = encoder_out[order], captions[order]  # (B, P, C), (B, T)
        embeddings = self.embedding(captions)  # (B, T, E)
        mean = encoder_out.mean(dim=1)  # (B, C)
        h, c = self.init_h(mean), self.init_c(mean)  # (B, H)
        decode_lengths = (lengths - 1).tolist()
        steps = max(decode_lengths)
        predictions = encoder_out.new_zeros(captions.shape[0], steps, self.fc.out_features)  # (B, T-1, V)
        alphas = encoder_out.new_zeros(captions.shape[0], steps, encoder_out.shape[1])  # (B, T-1, P)
        for t in range(steps):
            rows = sum(length > t for length in decode_lengths)
            att1 = self.encoder_att(encoder_out[:rows])  # (rows, P, A): the grid, projected again
            att2 = self.decoder_att(h[:rows])  # (rows, A)
            alpha = F.softmax(self.full_att(F.relu(att1 + att2.unsqueeze(1))).squeeze(2), dim=1)  # (rows, P)
            context = (encoder_out[:rows] * alpha.unsqueeze(2)).sum(dim=1)  # (rows, C)
            context = torch.sigmoid(self.f_beta(h[:rows])) * context  # (rows, C)
            h, c = self.decode_step(torch.cat([embeddings[:rows, t], context], dim=1), (h[:rows], c[:rows]))
            predictions[:rows, t] = self.fc(self.dropout(h))  # (rows, V)
            alphas[:rows, t] = alpha
        return predictions, captions, decode_lengths, alphas


def tutorial_loss(decoder: TutorialDecoder, features, captions, lengths, alpha_c: float) -> torch.Tensor:
    """The tutorial's loss: cross-entropy over the packed (real) positions, plus α_c's regulariser."""
    predictions, captions, decode_lengths, alphas = decoder(features, captions, lengths)
    scores = nn.utils.rnn.pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = nn.utils.rnn.pack_padded_sequence(captions[:, 1:], decode_lengths, batch_first=True).data
    return F.cross_entropy(scores.float(), targets) + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean()


def decoder_arms(args, device: torch.device) -> dict:
    """(a): both decoders' training steps, interleaved, in float32 (and bf16 on a GPU)."""
    torch.manual_seed(args.seed)
    dims = dict(embed=args.dim, hidden=args.dim, attention=args.dim)
    orch = Decoder(ModelConfig(decoder="lstm", attention="soft", embed_dim=args.dim, hidden_dim=args.dim,
                               attention_dim=args.dim, dropout=0.5), args.channels, args.vocab).to(device).train()
    tutorial = TutorialDecoder(args.vocab, args.channels, dropout=0.5, **dims).to(device).train()
    features = torch.rand(args.batch, args.pixels, args.channels, device=device)  # (B, P, C)
    lengths = torch.randint(args.tokens // 2, args.tokens + 1, (args.batch,), device=device)  # (B,) with <start>, <end>
    captions = torch.randint(4, args.vocab, (args.batch, args.tokens), device=device)  # (B, T)
    positions = torch.arange(args.tokens, device=device)  # (T,)
    captions[:, 0] = START_ID
    captions[positions.unsqueeze(0) == (lengths - 1).unsqueeze(1)] = END_ID
    captions[positions.unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    order = lengths.argsort(descending=True)  # as orch's loaders batch them: longest first
    captions, lengths = captions[order], lengths[order]  # (B, T), (B,)
    host_lengths = lengths.cpu()  # orch's loaders keep lengths on the host; the tutorial's are on the device

    def step_of(model: nn.Module, loss_of, amp: torch.dtype | None):
        # orch's optimizer as the recipe makes it (fused Adam); the tutorial's as its train.py does
        optimizer = (make_optimizer(TrainConfig(), [{"params": list(model.parameters()), "lr": 4e-4}], device)
                     if isinstance(model, Decoder) else torch.optim.Adam(model.parameters(), lr=4e-4))

        def step() -> None:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_value_(model.parameters(), 5.0)
            optimizer.step()

        def steps() -> None:
            for _ in range(args.steps):
                step()

        return step, steps

    def orch_loss(decoder: Decoder):
        return lambda: caption_loss(decoder, features, captions, host_lengths, ss_rate=0.0, ss_per="token",
                                    alpha_c=1.0)[0]

    def compiled_loss(steps: CompiledSteps):
        return lambda: steps.loss(features, captions, None, ss_per="token", alpha_c=1.0)[0]

    losses = {"tutorial": (tutorial, lambda: tutorial_loss(tutorial, features, captions, lengths, 1.0)),
              "orch": (orch, orch_loss(orch))}
    amps = {"fp32": None, **({"bf16": torch.bfloat16} if device.type == "cuda" else {})}
    arms, flops = {}, {}
    for amp_name, amp in amps.items():
        for name, (model, loss_of) in losses.items():
            step, steps = step_of(model, loss_of, amp)
            arms[f"{name}-{amp_name}"] = steps
            if amp is None:
                with FlopCounterMode(display=False) as counter:
                    step()
                flops[name] = counter.get_total_flops()
    default_amp = list(amps)[-1]  # what train.amp: auto picks here: bf16 on a GPU, fp32 on the CPU
    if device.type == "cpu":  # orch's step through autograd step by step, as before trainers.models.recurrence
        stepwise = copy.deepcopy(orch)
        stepwise._runs_as_one_function = lambda features, ss_rate: False
        arms["orch_stepwise-fp32"] = step_of(stepwise, orch_loss(stepwise), None)[1]
    launches = launch_counts(args, device, orch, orch_loss, amps[default_amp], step_of)
    if args.compile:  # train.compile as the recipe does it, under the default amp only: compiling takes minutes
        compiled = copy.deepcopy(orch)
        steps = CompiledSteps(compiled, device, rows=args.batch)
        compiled_step, compiled_steps = step_of(compiled, compiled_loss(steps), amps[default_amp])
        launches["compiled"] = compiled_launches(compiled_step, device, args.batch)
        arms[f"orch_compiled-{default_amp}"] = compiled_steps
    seconds = interleaved(arms, args.rounds, device)
    peak = matmul_peak_gflops(device)
    result = {"sizes": {"batch": args.batch, "grid": [args.pixels, args.channels], "dims": args.dim,
                        "vocab": args.vocab, "caption_tokens": [args.tokens // 2, args.tokens],
                        "steps_per_round": args.steps},
              "gflop_per_step": {name: round(f / 1e9, 3) for name, f in flops.items()},
              "matmul_peak_gflops": round(peak, 1), "launches_per_batch": launches}
    for arm, times in seconds.items():
        result[arm] = summary(times, args.steps * args.batch, "captions_per_s")
        result[arm]["steps_per_s"] = round(args.steps / summary(times)["median_s"], 3)
    for amp_name in amps:
        result[f"orch_over_tutorial-{amp_name}"] = ratio(seconds[f"tutorial-{amp_name}"], seconds[f"orch-{amp_name}"])
    if "orch_stepwise-fp32" in seconds:
        result["one_function_over_stepwise-fp32"] = ratio(seconds["orch_stepwise-fp32"], seconds["orch-fp32"])
    if args.compile:
        result[f"compiled_over_eager-{default_amp}"] = ratio(seconds[f"orch-{default_amp}"],
                                                             seconds[f"orch_compiled-{default_amp}"])
    orch_rate = flops["orch"] * result["orch-fp32"]["steps_per_s"] / 1e9
    result["orch_fraction_of_peak"] = round(orch_rate / peak, 3)
    tutorial_rate = flops["tutorial"] * result["tutorial-fp32"]["steps_per_s"] / 1e9
    result["tutorial_fraction_of_peak"] = round(tutorial_rate / peak, 3)
    return result


def launch_counts(args, device: torch.device, orch: Decoder, orch_loss, amp, step_of) -> dict:
    """Launches of one training step of the GPU path (stepping through `_hidden_step`, under the default
    amp: bf16 on a GPU; emulated on a CPU with bf16 autocast, as the issue counting it did), counted by
    the dispatcher, and the launch-bound ceilings they imply."""
    stepping = copy.deepcopy(orch)
    stepping._runs_as_one_function = lambda features, ss_rate: False  # the CPU's one-function path is not the GPU's
    emulated = amp if device.type == "cuda" else torch.bfloat16
    step = step_of(stepping, orch_loss(stepping), emulated)[0]
    step()  # warm: the optimizer's state exists, as in every step but the first
    ops = dispatched(step)
    eager = {"dispatched_ops": ops, "amp": str(emulated).removeprefix("torch."),
             "ceiling_captions_per_s": {f"{us}us": ceiling(ops, args.batch, us) for us in (5, 10)}}
    if device.type == "cuda":
        eager["profiled"] = profiled(step, device)
    return {"eager": eager}


def compiled_launches(step, device: torch.device, batch: int) -> dict:
    """The compiled step (`train.compile`) after its compile: kernels inside and outside its graphs, the
    graphs it calls, what it launches with and without CUDA graphs, and the ceilings."""
    step()  # compiles forward and backward
    counted = profiled(step, device)
    with_graphs = counted["launches"] if device.type == "cuda" else counted["launches_with_cuda_graphs"]
    counted["ceiling_captions_per_s"] = {f"{us}us": ceiling(with_graphs, batch, us) for us in (5, 10)}
    counted["graphs_compiled"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return counted


def epoch_arms(args, device: torch.device, workdir: Path) -> dict:
    """(b): seconds per epoch on the cache and through the frozen encoder (per amp), and cache builds."""
    from trainers.data.prepare import prepare_dataset
    from trainers.data.synthetic import write_synthetic_dataset
    from trainers.features import cached_features

    raw, prepared = workdir / "raw", workdir / "prepared"
    write_synthetic_dataset(raw, n=args.images, size=args.image_size, seed=args.seed)
    prepare_dataset(raw / "dataset.json", raw, prepared, min_word_freq=1, max_len=50, image_size=args.image_size)
    amps = ["none", "bf16"] if device.type == "cuda" else ["none"]
    recipes = {}
    for amp in amps:
        for cached in (True, False):
            config = TrainerConfig.model_validate({
                "data": {"prepared": str(prepared), "image_size": args.image_size, "num_workers": 0,
                         "feature_cache": cached, "cache_dir": str(workdir / "features")},
                "model": {"encoder": args.encoder, "weights": "none", "fine_tune": False, "encoded_size": 14,
                          "decoder": "lstm", "attention": "soft", "embed_dim": 512, "attention_dim": 512,
                          "hidden_dim": 512, "dropout": 0.5},
                "train": {"epochs": 1, "batch_size": args.batch, "seed": args.seed, "amp": amp,
                          "max_batches_per_epoch": args.epoch_batches}})
            recipe = CaptionRecipe(config, workdir / f"run-{amp}-{cached}")
            recipe.setup()  # the cached one builds its cache here, which warms the encoder
            recipes[f"{'cache' if cached else 'encoder'}-{'fp32' if amp == 'none' else amp}"] = recipe
    first = next(iter(recipes.values()))
    images = sum(len(first.dataset.split(s)) for s in ("train", "val", "test"))
    builds = {}
    for name, recipe in recipes.items():
        if name.startswith("encoder"):
            seconds = interleaved({name: lambda r=recipe, n=name: cached_features(
                r.dataset, r.model.encoder, encoder_name=args.encoder, image_size=args.image_size, encoded_size=14,
                cache_dir=Path(tempfile.mkdtemp(dir=workdir)), device=device, autocast=r.autocast_dtype)},
                rounds=1, device=device, warmup=0)[name]
            builds[name.replace("encoder", "cache_build")] = summary(seconds, images, "images_per_s")
    seconds = interleaved({name: lambda r=recipe: r.train_epoch(1) for name, recipe in recipes.items()},
                          args.epoch_rounds, device)
    train_captions = len(first.dataset.split("train").caption_image)
    batches = -(-train_captions // args.batch)
    result = {"encoder": args.encoder, "image_size": args.image_size, "images": images,
              "train_captions": train_captions, "batches_per_epoch": batches, "batches_timed": args.epoch_batches,
              **builds}
    for name, times in seconds.items():
        per_batch = [t / args.epoch_batches for t in times]
        result[name] = {**summary(per_batch, args.batch, "captions_per_s"),
                        "epoch_s_median": round(summary(per_batch)["median_s"] * batches, 1)}
    for amp in ("fp32", "bf16"):
        if f"cache-{amp}" in seconds:
            result[f"encoder_over_cache-{amp}"] = ratio(seconds[f"encoder-{amp}"], seconds[f"cache-{amp}"])
    if "cache-bf16" in seconds:
        result["fp32_over_bf16-cache"] = ratio(seconds["cache-fp32"], seconds["cache-bf16"])
        result["fp32_over_bf16-encoder"] = ratio(seconds["encoder-fp32"], seconds["encoder-bf16"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of (a)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per arm per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pixels", type=int, default=196, help="grid cells: 14x14")
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512, help="embed, attention and hidden size")
    parser.add_argument("--vocab", type=int, default=5000, help="within Flickr8k/COCO's 2000-10000")
    parser.add_argument("--tokens", type=int, default=22, help="longest caption, with <start> and <end>")
    parser.add_argument("--compile", action="store_true", help="also orch's step under torch.compile (train.compile)")
    parser.add_argument("--epochs-part", action="store_true", help="also (b): epochs through the encoder vs the cache")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=200, help="synthetic images for (b), 80%% train")
    parser.add_argument("--epoch-batches", type=int, default=2, help="batches per arm per round of (b)")
    parser.add_argument("--epoch-rounds", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and rounds: checks that it runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap/trim thresholds as they are")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.batch, args.pixels, args.channels, args.dim = 2, 1, 8, 16, 64, 32
        args.vocab, args.tokens, args.encoder, args.image_size, args.images = 200, 10, "resnet18", 64, 40
        args.epoch_batches, args.epoch_rounds = 1, 2

    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    malloc_reuse = not args.glibc_default and reuse_freed_memory()  # as every trial and `orch train` run
    started = environment(device)
    result = {"environment": started, "quick": args.quick, "malloc_reuse": malloc_reuse,
              "decoder_step": decoder_arms(args, device)}
    if args.epochs_part:
        with tempfile.TemporaryDirectory(prefix="bench_train.") as folder:
            result["epoch"] = epoch_arms(args, device, Path(folder))
    result["load_average_at_end"] = environment(device)["load_average"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
