"""`train.compile`: the training loss and the decoding step, each compiled once per shape.

torch.compile specialises a graph on the shapes it sees, and a decoder's shapes change all the time:
rows shrink as captions end, a split's last batch is smaller, captions differ in length. Compiling
that recompiles for nearly every step until Dynamo gives up and runs eagerly. So the compiled path
runs on fixed shapes (docs/architecture.md, "The device contract"):

- rows: every batch is padded to `train.batch_size` rows (captions of pads, zero features) and every
  row runs every word step (`Decoder.teacher_forced`); the loss leaves pad targets and caption-less
  rows out, so padding changes nothing but the work;
- caption length: padded to the next multiple of LENGTH_BUCKET tokens;
- decoding: image batches are padded to `train.batch_size` images (their captions are dropped), so
  a search's step always sees B·K rows (trainers.evaluation.caption_batches).

A run thus compiles one training graph and one validation graph per length bucket it meets (two or
three for captions of up to 22 tokens) and one decoding graph per search setting. On a GPU the
training loss compiles with mode="reduce-overhead": its forward and its backward are each captured
as a CUDA graph and replayed with one launch, where eager stepping launches thousands of kernels a
batch (benchmarks/bench_train.py counts both).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from trainers.data.vocab import PAD_ID
from trainers.losses import fixed_shape_loss

LENGTH_BUCKET = 8  # caption lengths, <start> and <end> included, are padded to a multiple of this

Backend = Union[str, Callable]


def bucketed(length: int) -> int:
    """The padded caption length a compiled graph sees for captions of `length` tokens."""
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


class CompiledSteps:
    """The training loss compiled with fixed shapes; builds the decoder's `step` compiled in place
    (the state dict is unchanged: the compiled function is an attribute, not a module).

    `backend`: torch.compile's; tests and benchmarks pass a counting one to count graphs."""

    def __init__(self, decoder: torch.nn.Module, device: torch.device, rows: int, backend: Backend = "inductor"):
        self.decoder, self.rows = decoder, rows
        graphs = {"mode": "reduce-overhead"} if backend == "inductor" and device.type == "cuda" else {}
        self._loss = torch.compile(fixed_shape_loss, dynamic=False, fullgraph=True, backend=backend, **graphs)
        decoder.step = torch.compile(decoder.step, dynamic=False, fullgraph=True, backend=backend)

    def loss(self, features: torch.Tensor, captions: torch.Tensor, ss_rate: torch.Tensor | None, *, ss_per: str,
             alpha_c: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, cross-entropy) of features (b, P, C) and captions (b, T), b <= rows, at fixed shapes."""
        features, captions = self.padded(features, captions)  # (R, P, C), (R, T')
        return self._loss(self.decoder, features, captions, ss_rate, ss_per=ss_per, alpha_c=alpha_c)

    def padded(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (R, P, C) and captions (R, T') with R = rows and T' the length's bucket."""
        batch, length = captions.shape
        if batch > self.rows:
            raise ValueError(f"a batch of {batch} captions is larger than the compiled graph's {self.rows} rows")
        extra_rows, extra_steps = self.rows - batch, bucketed(length) - length
        if extra_rows or extra_steps:
            captions = F.pad(captions, (0, extra_steps, 0, extra_rows), value=PAD_ID)  # (R, T')
        if extra_rows:
            features = F.pad(features, (0, 0, 0, 0, 0, extra_rows))  # (R, P, C)
        return features, captions
