"""The GPU hot loops never wait for the device, apart from their documented every-N checks.

A read of a device tensor's value on the host (`.item()`, `bool(t)`, `nonzero`, `unique`, a boolean
mask) stalls the host until the GPU has caught up, and every kernel queued after it starts late.
These tests run the GPU path on the "meta" device, whose tensors have shapes but no values: every
such read is recorded by a dispatch mode (and answered with a made-up value so the loop goes on),
while host tensors (caption lengths, which the loaders keep on the CPU) stay free to read.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.conftest import tiny_trainer_dict
from trainers.config import DecodeConfig, ModelConfig, TrainConfig, TrainerConfig
from trainers.decoding import ACCELERATOR_CHECK_EVERY, _beam_search, _one_token_at_a_time
from trainers.loop import CaptionRecipe, make_optimizer
from trainers.losses import caption_loss
from trainers.models import Decoder

aten = torch.ops.aten
# Ops whose result depends on a device tensor's values on the host: each waits for the device.
SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.nonzero_static, aten.masked_select, aten.unique_dim,
           aten._unique, aten._unique2, aten.unique_consecutive, aten.unique_dim_consecutive, aten.equal,
           aten.is_nonzero, aten.allclose, aten.repeat_interleave, aten.bincount, aten.histc}


class HostSyncs(TorchDispatchMode):
    """Records every syncing op on a non-CPU tensor; answers a scalar read with `answer`."""

    def __init__(self, answer=1):
        super().__init__()
        self.answer = answer
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        on_device = any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in tree_leaves((args, kwargs)))
        if on_device and func.overloadpacket in SYNCING:
            self.seen.append(str(func.overloadpacket))
            if func.overloadpacket is aten._local_scalar_dense:
                return self.answer
        return func(*args, **(kwargs or {}))


def _decoder(decoder="lstm", attention="soft") -> Decoder:
    return Decoder(ModelConfig(decoder=decoder, attention=attention, embed_dim=8, hidden_dim=10, attention_dim=6,
                               dropout=0.5), 12, 30).to("meta").train()


def _batch(batch=6, length=9):
    lengths = torch.arange(length, length - batch, -1).clamp(min=3)  # (B,) on the host, longest first
    captions = torch.randint(4, 30, (batch, length)).to("meta")  # (B, T)
    return torch.empty(batch, 5, 12, device="meta"), captions, lengths


@pytest.mark.parametrize("ss_rate", [0.0, 0.5])
@pytest.mark.parametrize("decoder,attention", [("lstm", "soft"), ("gru", "dot"), ("rnn", "mean")])
def test_a_training_step_on_a_device_reads_nothing_back(decoder, attention, ss_rate):
    """Forward (with scheduled sampling), backward, clipping and the optimizer's step, as the recipe
    runs them on a GPU."""
    model = _decoder(decoder, attention)
    optimizer = make_optimizer(TrainConfig(), [{"params": list(model.parameters()), "lr": 1e-3}], torch.device("meta"))
    features, captions, lengths = _batch()
    with HostSyncs() as syncs:
        loss, _ = caption_loss(model, features, captions, lengths, ss_rate=ss_rate, ss_per="token", alpha_c=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(list(model.parameters()), 5.0)
        optimizer.step()
    assert syncs.seen == []


def test_the_fixed_shape_step_reads_nothing_back():
    model = _decoder()
    features, captions, _ = _batch()
    with HostSyncs() as syncs:
        logits, alphas = model.teacher_forced(features, captions, torch.tensor(0.25, device="meta"))
        logits.sum().backward()
    assert syncs.seen == []


def test_encoding_a_fine_tuned_batch_reads_nothing_back(prepared_dir, tmp_path):
    """The recipe's images path with its captions grouped by image: each distinct image is encoded once,
    found from the loader's host rows, never by `unique` on the device."""
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir, model={"fine_tune": True},
                                                            train={"batch_size": 8}))
    recipe = CaptionRecipe(config, tmp_path)
    recipe.setup()
    inputs, _, _, rows = next(iter(recipe._batches("train", 1)))
    assert len(rows.unique()) < len(rows)  # grouped: some image appears twice
    recipe.model.to("meta")
    recipe.device = torch.device("meta")
    with HostSyncs() as syncs:
        features = recipe._to_features(inputs, rows)
    assert features.shape[0] == len(rows) and syncs.seen == []


@pytest.mark.parametrize("strategy", ["beam", "greedy", "sample"])
def test_decoding_reads_back_only_its_every_nth_step_check(strategy):
    """max_len 12 steps, none ended early (the made-up answer says some caption still runs): one read
    every ACCELERATOR_CHECK_EVERY steps, none in between, none while tracing the captions back."""
    model = _decoder().eval()
    features = torch.empty(3, 5, 12, device="meta")
    cfg = DecodeConfig(strategy=strategy, beam_size=3, max_len=12)
    with torch.no_grad(), HostSyncs(answer=1 if strategy == "beam" else 0) as syncs:
        memory = model.prepare(features)
        if strategy == "beam":
            _beam_search(model, memory, cfg, [0.0, 1.0])
        else:
            _one_token_at_a_time(model, memory, cfg, None)
    assert syncs.seen == ["aten._local_scalar_dense"] * (cfg.max_len // ACCELERATOR_CHECK_EVERY)
