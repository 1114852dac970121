"""orch against the Show-Attend-Tell tutorial (sgrvinod) and the paper (Xu et al. 2015), at equal weights
on an equal batch.

The tutorial's decoder, loss and per-image beam search are written here again from its `models.py`,
`train.py` and `caption.py`, independently of orch's code: orch's weights are copied in by name and
nothing else is shared. The coursework carries its settings (alpha_c, beam size) over from there, so
a difference here would confound every coursework verdict.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from trainers.config import DecodeConfig, ModelConfig
from trainers.decoding import decode
from trainers.losses import caption_loss
from trainers.models import Decoder

START, END, PAD = 1, 2, 0
VOCAB, FEATURES, PIXELS = 13, 12, 9


class TutorialAttention(nn.Module):
    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, encoder_out, decoder_hidden):
        att1 = self.encoder_att(encoder_out)  # (batch_size, num_pixels, attention_dim)
        att2 = self.decoder_att(decoder_hidden)  # (batch_size, attention_dim)
        att = self.full_att(torch.relu(att1 + att2.unsqueeze(1))).squeeze(2)  # (batch_size, num_pixels)
        alpha = torch.softmax(att, dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class TutorialDecoder(nn.Module):
    """models.py's DecoderWithAttention (dropout off: equal weights must mean an equal function)."""

    def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim):
        super().__init__()
        self.vocab_size = vocab_size
        self.attention = TutorialAttention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def init_hidden_state(self, encoder_out):
        mean_encoder_out = encoder_out.mean(dim=1)
        return self.init_h(mean_encoder_out), self.init_c(mean_encoder_out)

    def one_step(self, encoder_out, words, h, c):
        awe, alpha = self.attention(encoder_out, h)
        awe = torch.sigmoid(self.f_beta(h)) * awe
        h, c = self.decode_step(torch.cat([self.embedding(words), awe], dim=1), (h, c))
        return self.fc(h), h, c, alpha

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        batch_size = encoder_out.size(0)
        caption_lengths, sort_ind = caption_lengths.sort(dim=0, descending=True)
        encoder_out, encoded_captions = encoder_out[sort_ind], encoded_captions[sort_ind]
        h, c = self.init_hidden_state(encoder_out)
        decode_lengths = (caption_lengths - 1).tolist()
        predictions = encoder_out.new_zeros(batch_size, max(decode_lengths), self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, max(decode_lengths), encoder_out.size(1))
        for t in range(max(decode_lengths)):
            batch_size_t = sum(length > t for length in decode_lengths)
            preds, h, c, alpha = self.one_step(encoder_out[:batch_size_t], encoded_captions[:batch_size_t, t],
                                               h[:batch_size_t], c[:batch_size_t])
            predictions[:batch_size_t, t, :] = preds
            alphas[:batch_size_t, t, :] = alpha
        return predictions, encoded_captions, decode_lengths, alphas


def tutorial_loss(decoder, encoder_out, captions, lengths, alpha_c):
    """train.py: cross-entropy over packed (real) positions + alpha_c * ((1 - alphas.sum(dim=1)) ** 2).mean()."""
    scores, caps_sorted, decode_lengths, alphas = decoder(encoder_out, captions, lengths)
    targets = caps_sorted[:, 1:]
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    loss = F.cross_entropy(scores, targets)
    return loss + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean(), alphas


def paper_regulariser(alphas, lam):
    """Xu et al. (2015) eq. 14's penalty: λ Σ_i (1 - Σ_t α_ti)², summed over the L pixels (per caption)."""
    return lam * ((1.0 - alphas.sum(dim=1)) ** 2).sum(dim=1).mean()


def orch_decoder(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(decoder="lstm", attention="soft", embed_dim=7, hidden_dim=10, attention_dim=8, dropout=0.0)
    return Decoder(cfg, FEATURES, VOCAB).double()


def tutorial_copy(orch: Decoder) -> TutorialDecoder:
    """The tutorial's decoder holding orch's weights, parameter by parameter."""
    tutorial = TutorialDecoder(8, 7, 10, VOCAB, FEATURES).double()
    names = {"attention.encoder_att": "attention.encoder_att", "attention.decoder_att": "attention.decoder_att",
             "attention.full_att": "attention.full_att", "embedding": "embedding", "decode_step": "core.cell",
             "init_h": "core.init_h", "init_c": "core.init_c", "f_beta": "f_beta", "fc": "fc"}
    theirs = orch.state_dict()
    mine = {}
    for key in tutorial.state_dict():
        module, _, leaf = key.rpartition(".")
        mine[key] = theirs[f"{names[module]}.{leaf}"].clone()
    tutorial.load_state_dict(mine)
    assert sum(p.numel() for p in tutorial.parameters()) == sum(p.numel() for p in orch.parameters())
    return tutorial


def a_batch(seed: int = 1):
    """8 captions of 3 to 9 tokens (with <start> and <end>), padded; features (8, P, C)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 9, 3, 9, 7, 4, 6, 8])
    captions = torch.zeros(8, 9, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0], captions[row, n - 1] = START, END
        captions[row, 1:n - 1] = torch.randint(4, VOCAB, (n - 2,), generator=generator)
    features = torch.randn(8, PIXELS, FEATURES, generator=generator, dtype=torch.float64)
    return features, captions, lengths


@pytest.mark.parametrize("alpha_c", [0.0, 1.0, 3.5])
def test_loss_and_gradients_equal_the_tutorials(alpha_c):
    orch = orch_decoder()
    tutorial = tutorial_copy(orch)
    features, captions, lengths = a_batch()

    theirs, _ = tutorial_loss(tutorial, features, captions, lengths, alpha_c)
    ours, _ = caption_loss(orch, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=alpha_c)
    theirs.backward()
    ours.backward()

    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    named = dict(orch.named_parameters())
    for name, param in tutorial.named_parameters():
        module, _, leaf = name.rpartition(".")
        counterpart = {"decode_step": "core.cell", "init_h": "core.init_h", "init_c": "core.init_c"}.get(module, module)
        assert torch.allclose(named[f"{counterpart}.{leaf}"].grad, param.grad, atol=1e-6, rtol=0), name


def test_alpha_c_is_the_papers_lambda_times_the_number_of_pixels():
    orch = orch_decoder()
    features, captions, lengths = a_batch()
    with torch.no_grad():
        ce = caption_loss(orch, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=0.0)[0]
        regularised = caption_loss(orch, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=2.0)[0]
        _, alphas = tutorial_loss(tutorial_copy(orch), features, captions, lengths, 0.0)
    assert (regularised - ce).item() == pytest.approx(paper_regulariser(alphas, 2.0 / PIXELS).item(), abs=1e-9)


def tutorial_beam_search(decoder: TutorialDecoder, encoder_out, beam_size: int, max_len: int, beta: float):
    """caption.py's caption_image_beam_search for one image (features (1, P, C)); its `step > 50` cut-off
    becomes max_len steps, where the captions still running compete as they are (orch's documented
    rule; the tutorial crashes there), and complete captions are ranked by log P / ((5 + |y|) / 6) ** β
    (β = 0 is the tutorial's own ranking). Returns the chosen words, without <start> and <end>."""
    k = beam_size
    encoder_out = encoder_out.expand(k, *encoder_out.shape[1:])
    k_prev_words = torch.full((k,), START, dtype=torch.long)
    seqs = k_prev_words.unsqueeze(1)  # (k, 1)
    top_k_scores = torch.zeros(k, 1, dtype=encoder_out.dtype)
    complete_seqs, complete_seqs_scores = [], []
    h, c = decoder.init_hidden_state(encoder_out)
    for step in range(1, max_len + 1):
        logits, h, c, _ = decoder.one_step(encoder_out, k_prev_words, h, c)
        scores = top_k_scores.expand(-1, VOCAB) + F.log_softmax(logits, dim=1)
        if step == 1:
            top_k_scores, top_k_words = scores[0].topk(k, 0, True, True)
        else:
            top_k_scores, top_k_words = scores.view(-1).topk(k, 0, True, True)
        prev_word_inds, next_word_inds = top_k_words // VOCAB, top_k_words % VOCAB
        seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)
        incomplete = [i for i, word in enumerate(next_word_inds.tolist()) if word != END]
        complete = [i for i in range(len(next_word_inds)) if i not in incomplete]
        for i in complete:
            words = seqs[i, 1:-1].tolist()
            complete_seqs.append(words)
            complete_seqs_scores.append(top_k_scores[i].item() / ((5 + len(words)) / 6) ** beta)
        k -= len(complete)
        if k == 0:
            break
        seqs = seqs[incomplete]
        h, c = h[prev_word_inds[incomplete]], c[prev_word_inds[incomplete]]
        encoder_out = encoder_out[prev_word_inds[incomplete]]
        top_k_scores = top_k_scores[incomplete].unsqueeze(1)
        k_prev_words = next_word_inds[incomplete]
    else:
        for i in range(k):
            words = seqs[i, 1:].tolist()
            complete_seqs.append(words)
            complete_seqs_scores.append(top_k_scores[i].item() / ((5 + len(words)) / 6) ** beta)
    return complete_seqs[complete_seqs_scores.index(max(complete_seqs_scores))]


@functools.lru_cache(maxsize=None)
def trained_decoder(seed: int) -> tuple[Decoder, torch.Tensor]:
    """A decoder fitted for a few steps to captions of 1 to 11 words, and 8 of its training grids:
    an untrained one says <end> at once or never, which would compare nothing."""
    orch = orch_decoder(seed)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (16,), generator=generator)
    captions = torch.zeros(16, 14, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0], captions[row, n - 1] = START, END
        captions[row, 1:n - 1] = torch.randint(4, VOCAB, (n - 2,), generator=generator)
    features = torch.randn(16, PIXELS, FEATURES, generator=generator, dtype=torch.float64)
    optimizer = torch.optim.Adam(orch.parameters(), lr=2e-2)
    for _ in range(40):
        loss, _ = caption_loss(orch, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return orch, features[:8]


@pytest.mark.parametrize("beam_size,beta", [(1, 0.0), (3, 0.0), (5, 0.0), (3, 1.0), (5, 1.5)])
@pytest.mark.parametrize("seed", [0, 2])
def test_beam_search_gives_the_tutorials_captions(seed, beam_size, beta):
    orch, features = trained_decoder(seed)
    tutorial = tutorial_copy(orch)
    cfg = DecodeConfig(beam_size=beam_size, length_penalty=beta, max_len=10, block_unk=False)

    found = decode(orch, features, cfg)
    with torch.no_grad():
        per_image = [tutorial_beam_search(tutorial, features[i:i + 1], beam_size, 10, beta) for i in range(8)]
    assert [h.tokens for h in found] == per_image
    # Not a comparison of empty captions: many lengths, some cut at max_len.
    assert len({len(h.tokens) for h in found}) >= 4 and not all(h.finished for h in found)
