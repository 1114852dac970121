import pytest
import torch

from trainers.config import ModelConfig
from trainers.models import Decoder, attention_regularisation
from trainers.models.cores import MultimodalRNNCore

VOCAB, FEATURES, PIXELS = 13, 6, 4


def decoder(name="lstm", attention="soft", dropout=0.0, seed=0) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(decoder=name, attention=attention, embed_dim=8, hidden_dim=10, attention_dim=7, dropout=dropout)
    return Decoder(cfg, FEATURES, VOCAB)


def batch(size=4, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, VOCAB, (size, length), generator=generator)
    captions[:, 0] = 1
    captions[:, -1] = 2
    features = torch.rand(size, PIXELS, FEATURES, generator=generator)
    return features, captions, torch.full((size,), length)


@pytest.mark.parametrize("per", ["token", "sequence"])
@pytest.mark.parametrize("name,attention", [("lstm", "soft"), ("gru", "dot"), ("rnn", "none"), ("mrnn", "none")])
def test_zero_sampling_rate_is_exactly_teacher_forcing(name, attention, per):
    """Dropout on and the same seed: forward at ss_rate 0 equals stepping through the ground truth, bit
    for bit (so it draws nothing from the global generator either)."""
    model = decoder(name, attention, dropout=0.5).train()
    features, captions, lengths = batch()

    torch.manual_seed(7)
    logits, alphas = model(features, captions, lengths, ss_rate=0.0, ss_per=per)
    torch.manual_seed(7)
    memory = model.prepare(features)
    state = model.init_state(memory)
    for t in range(captions.shape[1] - 1):
        logprobs, state, alpha = model.step(captions[:, t], state, memory)
        assert torch.equal(logits[:, t].log_softmax(dim=1), logprobs)
        assert torch.equal(alphas[:, t], alpha)


@pytest.mark.parametrize("per", ["token", "sequence"])
def test_full_sampling_rate_never_reads_the_ground_truth_after_start(per):
    model = decoder().eval()
    features, captions, lengths = batch()
    other_words = captions.clone()
    other_words[:, 1:-1] = (captions[:, 1:-1] + 1 - 4) % (VOCAB - 4) + 4

    fed_own, _ = model(features, captions, lengths, ss_rate=1.0, ss_per=per, generator=torch.Generator().manual_seed(3))
    fed_own_again, _ = model(features, other_words, lengths, ss_rate=1.0, ss_per=per,
                             generator=torch.Generator().manual_seed(3))
    teacher_forced, _ = model(features, captions, lengths)

    assert torch.equal(fed_own, fed_own_again)
    assert not torch.equal(fed_own, teacher_forced)


PEAKED = 5  # the token a peaked decoder all but always predicts


def peaked_decoder(name="lstm", attention="soft") -> Decoder:
    """A decoder whose output layer favours one token by e^30 to 1: its own sample is that token."""
    model = decoder(name, attention).eval()
    with torch.no_grad():
        model.fc.bias[PEAKED] = 30.0
    return model


@pytest.mark.parametrize("per", ["token", "sequence"])
@pytest.mark.parametrize("name,attention", [("lstm", "soft"), ("gru", "dot"), ("mrnn", "none")])
def test_full_sampling_rate_feeds_the_models_own_token(name, attention, per):
    """At rate 1 every input after <start> is the token the model predicted, not a ground-truth or a random one."""
    model = peaked_decoder(name, attention)
    features, captions, lengths = batch()
    fed_own, _ = model(features, captions, lengths, ss_rate=1.0, ss_per=per, generator=torch.Generator().manual_seed(3))

    memory = model.prepare(features)
    state = model.init_state(memory)
    tokens = captions[:, 0]
    for t in range(captions.shape[1] - 1):
        logprobs, state, _ = model.step(tokens, state, memory)
        assert torch.allclose(fed_own[:, t].log_softmax(dim=1), logprobs, atol=1e-5), t
        tokens = logprobs.argmax(dim=1)
        assert (tokens == PEAKED).all()


def test_full_sampling_rate_feeds_the_models_own_token_on_the_fixed_shape_path():
    model = peaked_decoder()
    features, captions, _ = batch()
    fed_own, _ = model.teacher_forced(features, captions, ss_rate=torch.tensor(1.0))
    own_captions = torch.full_like(captions, PEAKED)
    own_captions[:, 0] = captions[:, 0]
    teacher_forced_on_own, _ = model.teacher_forced(features, own_captions)
    assert torch.allclose(fed_own, teacher_forced_on_own, atol=1e-5)
    assert not torch.allclose(fed_own, model.teacher_forced(features, captions)[0], atol=1e-3)


def test_a_sampled_token_follows_the_models_distribution():
    """Per token at rate 1, the fed tokens are drawn from the model's softmax, so a peaked model's
    second choice is fed about as often as its probability says."""
    from trainers.models.decoder import sample_tokens

    probs = torch.tensor([[0.0, 0.7, 0.3, 0.0]]).repeat(4000, 1)
    drawn = sample_tokens(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert 0.65 < counts[1] / 4000 < 0.75


def test_one_coin_per_caption_feeds_whole_captions_one_way():
    """Per sequence, about half the captions are teacher-forced throughout; per token, almost none are."""
    model = decoder().eval()
    features, captions, lengths = batch(size=64, length=9)
    teacher_forced, _ = model(features, captions, lengths)

    def captions_untouched(per):
        generator = torch.Generator().manual_seed(5)
        logits, _ = model(features, captions, lengths, ss_rate=0.5, ss_per=per, generator=generator)
        return int((logits == teacher_forced).flatten(1).all(dim=1).sum())

    assert 16 <= captions_untouched("sequence") <= 48
    assert captions_untouched("token") <= 6


def test_steps_past_a_caption_end_are_skipped_and_do_not_change_the_others():
    model = decoder().eval()
    features, captions, _ = batch(size=3, length=6)
    lengths = torch.tensor([4, 6, 2])
    captions[0, 4:] = 0
    captions[2, 2:] = 0

    logits, alphas = model(features, captions, lengths)
    alone, _ = model(features[:1], captions[:1, :4], lengths[:1])

    assert torch.allclose(logits[0, :3], alone[0], atol=1e-6)
    assert logits[0, 3:].abs().sum() == 0 and logits[2, 1:].abs().sum() == 0
    assert torch.allclose(alphas[1].sum(dim=1), torch.ones(5))


@pytest.mark.parametrize("attention", ["soft", "dot", "mean", "none"])
def test_attention_weights_are_a_distribution_over_the_grid(attention):
    features, captions, lengths = batch()
    _, alphas = decoder("gru", attention).eval()(features, captions, lengths)
    assert (alphas >= 0).all()
    assert torch.allclose(alphas.sum(dim=2), torch.ones(alphas.shape[:2]))


def test_attention_regularisation_counts_only_real_steps():
    alphas = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
                           [[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]]])  # (B=2, T=3, P=2); last step of caption 2 is padding
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # caption 1 attends 1.5 to each pixel: 0.25, 0.25; caption 2 attends 2 and 0: 1, 1; the mean of all 4
    assert attention_regularisation(alphas, mask).item() == pytest.approx((0.25 + 0.25 + 1.0 + 1.0) / 4)


def test_multimodal_rnn_adds_the_image_at_the_first_step_only():
    torch.manual_seed(0)
    core = MultimodalRNNCore(input_dim=5, hidden_dim=4, feature_dim=3)
    image, words = torch.rand(2, 3), torch.rand(3, 2, 5)
    state = core.init_state(image)
    h1, state = core(words[0], state)
    h2, _ = core(words[1], state)

    assert torch.allclose(h1, torch.relu(core.input(words[0]) + core.image(image)))
    assert torch.allclose(h2, torch.relu(core.input(words[1]) + core.recurrent(h1)))


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_without_attention_the_image_only_starts_the_state(name):
    """`attention: none` is the tutorial's "without attention": with the state's image projection
    zeroed, the captions no longer depend on the image. `mean` still feeds the mean at every step."""
    features, captions, lengths = batch()
    other = torch.rand_like(features)
    for attention, sees_the_image in (("none", False), ("mean", True)):
        model = decoder(name, attention).eval()
        with torch.no_grad():
            for layer in (model.core.init_h, getattr(model.core, "init_c", model.core.init_h)):
                layer.weight.zero_()
            same = torch.equal(model(features, captions, lengths)[0], model(other, captions, lengths)[0])
        assert same != sees_the_image, attention


@pytest.mark.parametrize("attention", ["none", "mean"])
def test_alpha_c_regularises_learned_attention_only(attention):
    from trainers.losses import caption_loss

    features, captions, lengths = batch()
    model = decoder("lstm", attention)
    loss, ce = caption_loss(model, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
    assert loss.item() == ce.item()
    learned, learned_ce = caption_loss(decoder("lstm", "soft"), features, captions, lengths, ss_rate=0.0,
                                       ss_per="token", alpha_c=1.0)
    assert learned.item() > learned_ce.item()
