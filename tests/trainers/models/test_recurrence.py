"""The LSTM or GRU + soft-attention recurrence as one autograd function against stepping through autograd.

Both paths run the same decoder on the same batch: captions of uneven lengths (so rows drop out
step by step), unsorted, with the attention energies split into several chunks.
"""

import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.config import ModelConfig
from trainers.losses import caption_loss
from trainers.models import Decoder, attention

VOCAB, FEATURES, PIXELS = 17, 12, 9


def decoder(name="lstm", attention_kind="soft", dropout=0.0, dtype=torch.float32) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=name, attention=attention_kind, embed_dim=6, hidden_dim=10, attention_dim=8,
                      dropout=dropout)
    return Decoder(cfg, FEATURES, VOCAB).to(dtype)


def a_batch(dtype=torch.float32):
    """6 captions of 3 to 8 tokens (with <start> and <end>), not sorted by length."""
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([4, 8, 3, 8, 6, 5])
    captions = torch.zeros(6, 8, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0], captions[row, n - 1] = 1, 2
        captions[row, 1:n - 1] = torch.randint(4, VOCAB, (n - 2,), generator=generator)
    return torch.randn(6, PIXELS, FEATURES, generator=generator, dtype=dtype), captions, lengths


@pytest.fixture(autouse=True)
def several_chunks(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * PIXELS * 8)  # two images per chunk


def stepwise(monkeypatch, model: Decoder):
    monkeypatch.setattr(model, "_runs_as_one_function", lambda features, ss_rate: False)


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_outputs_equal_stepping_bit_for_bit_with_dropout_on(monkeypatch, core):
    model = decoder(core, dropout=0.5).train()
    features, captions, lengths = a_batch()
    torch.manual_seed(5)
    logits, alphas = model(features, captions, lengths)
    stepwise(monkeypatch, model)
    torch.manual_seed(5)
    expected_logits, expected_alphas = model(features, captions, lengths)
    assert torch.equal(logits, expected_logits)
    assert torch.equal(alphas, expected_alphas)


@pytest.mark.parametrize("fine_tune", [False, True])
@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_gradients_equal_steppings(monkeypatch, core, fine_tune):
    """In float64, every parameter's gradient (and the features', when the encoder is fine-tuned), with
    the attention regulariser on so the attention weights' own gradient flows back too."""
    def gradients(model):
        features, captions, lengths = a_batch(torch.float64)
        features.requires_grad_(fine_tune)
        loss, _ = caption_loss(model, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.5)
        model.zero_grad()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        return loss.item(), grads, features.grad

    model = decoder(core, dtype=torch.float64)
    loss, grads, feature_grad = gradients(model)
    stepwise(monkeypatch, model)
    expected_loss, expected, expected_feature_grad = gradients(model)

    assert loss == pytest.approx(expected_loss, abs=1e-12)
    assert grads.keys() == expected.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected[name], atol=1e-12, rtol=1e-9), name
    assert (feature_grad is None) == (not fine_tune)
    if fine_tune:
        assert torch.allclose(feature_grad, expected_feature_grad, atol=1e-12, rtol=1e-9)


def test_a_batch_frees_what_its_backward_kept_once_the_graph_is_gone():
    """The function's context must not hold its own outputs: Python's collector cannot see that cycle,
    and every training batch would leak what it kept for backward (20 MB at the coursework's sizes)."""
    model = decoder()
    features, captions, lengths = a_batch()
    loss, ce = caption_loss(model, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
    nodes, seen = [loss.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_RecurrenceBackward":
            kept = weakref.ref(node.tape.x)
        nodes.extend(next_node for next_node, _ in node.next_functions)
    loss.backward()
    del loss, ce, nodes, seen, node
    gc.collect()
    assert kept() is None


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(2, 7), min_size=1, max_size=6), images_per_chunk=st.integers(1, 4),
       core=st.sampled_from(["lstm", "gru"]))
def test_any_lengths_give_steppings_outputs_and_gradients(lengths, images_per_chunk, core):
    """Any batch: one caption, equal lengths, captions that end at the first word, any chunking."""
    attention.CHUNK_ELEMENTS = images_per_chunk * PIXELS * 8
    generator = torch.Generator().manual_seed(len(lengths))
    captions = torch.randint(4, VOCAB, (len(lengths), max(lengths)), generator=generator)
    captions[:, 0] = 1
    features = torch.randn(len(lengths), PIXELS, FEATURES, generator=generator, dtype=torch.float64)
    model = decoder(core, dtype=torch.float64)

    def run(as_one_function: bool):
        model._runs_as_one_function = lambda features, ss_rate: as_one_function
        loss, _ = caption_loss(model, features, captions, torch.tensor(lengths), ss_rate=0.0, ss_per="token",
                               alpha_c=1.0)
        model.zero_grad()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    loss, grads = run(True)
    expected_loss, expected = run(False)
    assert loss == pytest.approx(expected_loss, abs=1e-12)
    for grad, expected_grad in zip(grads, expected):
        assert torch.allclose(grad, expected_grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("name,attention_kind,ss_rate,autocast,expected", [
    ("lstm", "soft", 0.0, False, True),
    ("gru", "soft", 0.0, False, True),
    ("lstm", "soft", 0.25, False, False),  # scheduled sampling feeds back each step's own output
    ("lstm", "soft", 0.0, True, False),  # autocast picks each op's dtype: autograd's business
    ("rnn", "soft", 0.0, False, False),
    ("mrnn", "none", 0.0, False, False),
    ("lstm", "dot", 0.0, False, False),
])
def test_only_teacher_forced_lstm_or_gru_with_soft_attention_runs_as_one_function(name, attention_kind, ss_rate, autocast,
                                                                           expected):
    model = decoder(name, attention_kind)
    features, _, _ = a_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert model._runs_as_one_function(features, ss_rate) is expected
