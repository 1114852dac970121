"""The sentence BRNN follows eqs. (2)-(6); image fragments follow eq. (1)."""

from __future__ import annotations

import torch

from trainers.alignment.model import AlignmentModel, SentenceBRNN
from trainers.config import TrainerConfig


def _by_hand(brnn: SentenceBRNN, words: list[int]) -> torch.Tensor:
    """Eqs. (2)-(6) written out for one sentence."""
    relu = torch.relu
    e = [relu(brnn.encode(brnn.words.weight[w])) for w in words]
    forward, h = [], torch.zeros(brnn.encode.out_features)
    for e_t in e:
        h = relu(e_t + brnn.forward_recurrence(h))
        forward.append(h)
    backward, h = [None] * len(words), torch.zeros(brnn.encode.out_features)
    for t in reversed(range(len(words))):
        h = relu(e[t] + brnn.backward_recurrence(h))
        backward[t] = h
    return torch.stack([relu(brnn.output(f + b)) for f, b in zip(forward, backward)])


def test_sentence_fragments_follow_the_equations_and_ignore_padding():
    torch.manual_seed(0)
    brnn = SentenceBRNN(vocab_size=12, word_dim=5, hidden_dim=7)
    words = torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0]])  # the second sentence is padded
    with torch.no_grad():
        s = brnn(words, torch.tensor([4, 2]))  # (2, 4, 7)
        assert torch.allclose(s[0], _by_hand(brnn, [4, 5, 6, 7]), atol=1e-6)
        assert torch.allclose(s[1, :2], _by_hand(brnn, [8, 9]), atol=1e-6)
    assert (s[1, 2:] == 0).all() and (s >= 0).all()


def test_a_later_word_changes_an_earlier_fragment_through_the_backward_states():
    torch.manual_seed(0)
    brnn = SentenceBRNN(vocab_size=12, word_dim=5, hidden_dim=7)
    with torch.no_grad():
        s = brnn(torch.tensor([[4, 5, 6], [4, 5, 11]]), torch.tensor([3, 3]))
    assert not torch.allclose(s[0, 0], s[1, 0])


def test_image_fragments_are_an_affine_map_of_standardised_cnn_features():
    config = TrainerConfig.model_validate({"trainer": "alignment", "alignment": {"embed_dim": 6, "word_dim": 4},
                                           "model": {"decoder": "mrnn", "attention": "none", "embed_dim": 4,
                                                     "hidden_dim": 4}})
    model = AlignmentModel(config, feature_dim=3, vocab_size=10)
    features = torch.rand(50, 3) * torch.tensor([1.0, 10.0, 100.0]) + 5.0  # (n, C)
    model.set_feature_statistics(features)
    standardised = (features - features.mean(0)) / features.std(0)
    with torch.no_grad():
        assert torch.allclose(model.embed_images(features[None])[0], model.image(standardised), atol=1e-4)
    assert {"feature_mean", "feature_std"} <= set(model.state_dict())
