"""train.compile: the fixed-shape path gives eager stepping's numbers and compiles once per shape.

The counting backend runs each graph eagerly, so these tests count what Dynamo compiles without
paying inductor's compile time; one integration test compiles for real with inductor.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tests.conftest import tiny_trainer_dict
from tests.trainers.models.test_all_models import COMBINATIONS
from trainers.compiled import LENGTH_BUCKET, CompiledSteps, bucketed
from trainers.config import ModelConfig, TrainerConfig
from trainers.loop import CaptionRecipe
from trainers.losses import caption_loss, fixed_shape_loss
from trainers.models import Decoder

VOCAB, PIXELS, FEATURES = 17, 5, 12


def _decoder(decoder="lstm", attention="soft", seed=0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig(decoder=decoder, attention=attention, embed_dim=8, hidden_dim=10, attention_dim=6,
                               dropout=0.0), FEATURES, VOCAB).train()


def _batch(lengths: list[int], seed=0):
    """Captions (B, max length) longest first as the loaders batch them, with their lengths and features."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(sorted(lengths, reverse=True))
    captions = torch.randint(4, VOCAB, (len(lengths), int(lengths.max())), generator=generator)
    captions[:, 0] = 1
    for row, length in enumerate(lengths.tolist()):
        captions[row, length - 1] = 2
        captions[row, length:] = 0
    return torch.rand(len(lengths), PIXELS, FEATURES, generator=generator), captions, lengths


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_lengths_are_bucketed_to_a_multiple_of_the_bucket():
    assert [bucketed(n) for n in (1, LENGTH_BUCKET, LENGTH_BUCKET + 1, 22)] == [8, 8, 16, 24]


@pytest.mark.parametrize("decoder,attention", COMBINATIONS)
def test_padded_rows_and_steps_give_eager_stepping_loss_and_gradients(decoder, attention):
    """A batch of 3 captions padded to 8 rows and a bucketed length: the same loss and gradients as
    `Decoder.forward`, which shrinks its rows as captions end."""
    features, captions, lengths = _batch([7, 4, 2])
    eager = _decoder(decoder, attention)
    loss, ce = caption_loss(eager, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
    loss.backward()

    fixed = _decoder(decoder, attention)
    steps = CompiledSteps(fixed, torch.device("cpu"), rows=8, backend="eager")
    padded_features, padded_captions = steps.padded(features, captions)
    assert padded_captions.shape == (8, LENGTH_BUCKET) and padded_features.shape == (8, PIXELS, FEATURES)
    fixed_loss, fixed_ce = fixed_shape_loss(fixed, padded_features, padded_captions, None, ss_per="token",
                                            alpha_c=1.0)
    fixed_loss.backward()

    assert fixed_ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert fixed_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    expected, got = _gradients(eager), _gradients(fixed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_compiled_loss_under_aot_autograd_equals_eager_and_compiles_once_across_batches():
    """AOTAutograd traces forward and backward as inductor would; the batches differ in rows (the last
    batch of a split is smaller) and in length within one bucket: one graph for all of them."""
    counter = CompileCounter()
    eager, compiled = _decoder(), _decoder()
    steps = CompiledSteps(compiled, torch.device("cpu"), rows=4, backend="aot_eager")
    steps._loss = torch.compile(steps._loss, backend=counter, dynamic=False, fullgraph=True)  # count its graphs
    for seed, lengths in enumerate([[7, 6, 3, 2], [8, 5, 5, 4], [6, 2]]):
        features, captions, host_lengths = _batch(lengths, seed=seed)
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
        loss, _ = caption_loss(eager, features, captions, host_lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
        loss.backward()
        compiled_loss, _ = steps.loss(features, captions, None, ss_per="token", alpha_c=1.0)
        compiled_loss.backward()
        assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-6)
        for name, grad in _gradients(eager).items():
            torch.testing.assert_close(_gradients(compiled)[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert counter.frame_count == 1


def test_one_training_compiles_one_graph_per_length_bucket_and_one_per_search(prepared_dir, tmp_path):
    """Train, validation loss and beam search over a split whose batches differ in rows and in caption
    length: the graphs are bounded by the length buckets met, not by the shapes met."""
    counter = CompileCounter()
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir, train={"epochs": 1, "batch_size": 12,
                                                                                 "compile": True}))
    recipe = CaptionRecipe(config, tmp_path, compile_backend=counter)
    recipe.setup()
    shapes = {purpose: [(captions.shape[0], captions.shape[1]) for _, captions, _, _ in recipe._batches(purpose, 1)]
              for purpose in ("train", "val_pairs")}
    assert len(set(shapes["train"])) >= 3  # the shapes a compile without padding would specialise on

    recipe.train_epoch(1)
    after_training = counter.frame_count
    recipe.validation_loss()
    after_validation = counter.frame_count
    recipe.evaluate("val", [recipe.reference])

    buckets = {purpose: {bucketed(length) for _, length in seen} for purpose, seen in shapes.items()}
    assert after_training == len(buckets["train"])
    assert after_validation - after_training == len(buckets["val_pairs"])
    assert counter.frame_count - after_validation == 1  # beam search's step: B·K rows, every batch


@pytest.mark.integration
def test_train_compile_runs_with_inductor_on_the_cpu(prepared_dir, tmp_path):
    """The real compiler, at tiny sizes (about 2 minutes of C++ compiling on 2 cores): a compiled
    training's first epoch has a finite loss and its beam search decodes."""
    config = TrainerConfig.model_validate(tiny_trainer_dict(
        prepared_dir, train={"epochs": 1, "batch_size": 32, "compile": True, "max_batches_per_epoch": 2},
        decode={"beam_size": 2, "max_len": 6}))
    recipe = CaptionRecipe(config, tmp_path)
    recipe.setup()
    assert torch.isfinite(torch.tensor(recipe.train_epoch(1)))
    captions, scores = recipe.evaluate("val", [recipe.reference])[recipe.reference.id]
    assert len(captions.texts) == len(recipe.dataset.split("val")) and all(captions.texts)
