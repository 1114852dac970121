"""Show, Attend and Tell's recurrence over a whole batch as one autograd function, for the CPU.

At the coursework's sizes (batch 32, a 14x14x2048 grid) a teacher-forced step through autograd is
memory-bound. Every step writes the LSTM's 21 MB weight gradient and adds it to the running sum. It
stores the (rows, P, A) attention energies, and its slices of the projected grid each send back a
zero-filled gradient of the whole grid. This function runs the same steps forward with the decoder's
own modules. Its backward walks the steps in reverse:

- each weight's gradient is one product over all steps at the end, as cuDNN's RNNs do;
- the energies are recomputed a few images at a time, in chunks that stay in cache;
- the grid's gradient is summed in place.

`Decoder.forward` uses it for an LSTM core with soft attention and its f_beta gate, on a CPU, without
autocast or scheduled sampling. Every other case steps through `Decoder._hidden_step`.
tests/trainers/models/test_recurrence.py checks its outputs against the stepwise path bit for bit, and
its gradients in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.models.attention import image_chunks


def attend_and_tell(decoder, embedded: torch.Tensor, memory, state: tuple[torch.Tensor, torch.Tensor],
                    rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (N, H) and attention weights (N, P) of every real step, step after step.

    embedded (B, T, E) are the teacher-forced inputs, rows[t] the captions still running at step t
    (a prefix of the batch, longest first), N = sum(rows).
    """
    cell, attention, gate = decoder.core.cell, decoder.attention, decoder.f_beta
    return _Recurrence.apply(decoder, rows, embedded, memory.features, memory.prepared, *state,
                             attention.decoder_att.weight, attention.decoder_att.bias, attention.full_att.weight,
                             attention.full_att.bias, gate.weight, gate.bias,
                             cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh)


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_ih, bias_ih, weight_hh, bias_hh,
              gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nn.LSTMCell's CPU arithmetic, in its order (aten's LSTMCell), keeping what backward needs.

    Writes the activated gates i, f, g, o into `gates` (rows, 4H); returns h' (rows, H), c' and tanh(c').
    """
    torch.add(F.linear(h, weight_hh, bias_hh), F.linear(x, weight_ih, bias_ih), out=gates)  # (rows, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # (rows, H) views
    i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()
    c = (f * c).add_(i * g)  # (rows, H)
    tanh_c = c.tanh()  # (rows, H)
    return o * tanh_c, c, tanh_c


class _Recurrence(torch.autograd.Function):
    """attend_and_tell's function: its inputs are the decoder's tensors that take a gradient."""

    @staticmethod
    def forward(ctx, decoder, rows, embedded, features, prepared, h, c,
                att_weight, att_bias, score_weight, score_bias, gate_weight, gate_bias,
                weight_ih, bias_ih, weight_hh, bias_hh):
        # Detached: the decoder's modules run on them here, and no autograd view may leak out of the function.
        embedded, features, prepared, h, c = (part.detach() for part in (embedded, features, prepared, h, c))
        n, embed, (hidden_dim, channels) = sum(rows), embedded.shape[2], (h.shape[1], features.shape[2])
        ctx.batch, ctx.embedded_shape = h.shape[0], embedded.shape
        tape = _Tape(embedded, n, embed + channels, hidden_dim, channels, features.shape[1])
        for t, (start, count) in enumerate(_spans(rows)):
            h, c = h[:count], c[:count]  # (rows, H)
            at = slice(start, start + count)
            tape.h_in[at], tape.c_in[at] = h, c
            context, alpha = decoder.attention(features[:count], h, prepared[:count])  # (rows, C), (rows, P)
            torch.sigmoid(F.linear(h, gate_weight, gate_bias), out=tape.gate[at])  # (rows, C)
            tape.context[at], tape.alpha[at] = context, alpha
            # A fresh tensor, as a step makes it: MKL's sums can depend on where an operand starts in memory.
            tape.x[at] = x = torch.cat([embedded[:count, t], tape.gate[at] * context], dim=1)  # (rows, E + C)
            h, c, tape.tanh_c[at] = lstm_cell(x, h, c, weight_ih, bias_ih, weight_hh, bias_hh, tape.gates[at])
            tape.h_out[at] = h
        ctx.rows, ctx.embed, ctx.attention = rows, embed, decoder.attention
        ctx.tape = tape
        ctx.save_for_backward(features, prepared, att_weight, att_bias, score_weight, gate_weight, weight_ih,
                              weight_hh)
        return tape.h_out, tape.alpha

    @staticmethod
    def backward(ctx, grad_h_out, grad_alpha_out):  # (N, H), (N, P)
        features, prepared, att_weight, att_bias, score_weight, gate_weight, weight_ih, weight_hh = ctx.saved_tensors
        tape, rows, embed = ctx.tape, ctx.rows, ctx.embed
        score_weight = score_weight.view(-1)  # (A,)
        grad_gates = torch.empty_like(tape.gates)  # (N, 4H): LSTM pre-activations
        grad_gate = torch.empty_like(tape.gate)  # (N, C): f_beta's pre-activation
        grad_att_h = torch.empty(tape.gates.shape[0], prepared.shape[2], dtype=prepared.dtype)  # (N, A)
        grad_embedded = prepared.new_zeros(ctx.embedded_shape)  # (B, T, E)
        grad_prepared = torch.zeros_like(prepared)  # (B, P, A)
        grad_features = torch.zeros_like(features) if ctx.needs_input_grad[3] else None  # (B, P, C)
        grad_score_weight, grad_score_bias = torch.zeros_like(score_weight), prepared.new_zeros(1)
        grad_h = grad_c = prepared.new_zeros(0, tape.h_out.shape[1])  # carried from the step after
        for t, (start, count) in reversed(list(enumerate(_spans(rows)))):
            at = slice(start, start + count)
            dh = grad_h_out[at].clone()  # (rows, H)
            dh[:grad_h.shape[0]] += grad_h
            dc = torch.zeros_like(dh)
            dc[:grad_c.shape[0]] = grad_c
            i, f, g, o = tape.gates[at].chunk(4, dim=1)  # (rows, H)
            di, df, dg, do = grad_gates[at].chunk(4, dim=1)
            tanh_c = tape.tanh_c[at]
            dc += dh * o * (1 - tanh_c * tanh_c)
            torch.mul(dh * tanh_c, o * (1 - o), out=do)
            torch.mul(dc * g, i * (1 - i), out=di)
            torch.mul(dc * tape.c_in[at], f * (1 - f), out=df)
            torch.mul(dc * i, 1 - g * g, out=dg)
            grad_c = dc * f  # (rows, H)
            dx = grad_gates[at] @ weight_ih  # (rows, E + C)
            grad_h = grad_gates[at] @ weight_hh  # (rows, H)
            grad_embedded[:count, t] = dx[:, :embed]
            d_gated = dx[:, embed:]  # (rows, C)
            gate, context = tape.gate[at], tape.context[at]
            torch.mul(d_gated * context, gate * (1 - gate), out=grad_gate[at])
            grad_h.addmm_(grad_gate[at], gate_weight)
            d_context = d_gated * gate  # (rows, C)
            alpha = tape.alpha[at]  # (rows, P)
            d_alpha = torch.bmm(d_context.unsqueeze(1), features[:count].transpose(1, 2)).squeeze(1)  # (rows, P)
            d_alpha += grad_alpha_out[at]  # the regulariser's (autograd passes zeros when there is none)
            if grad_features is not None:
                grad_features[:count].baddbmm_(alpha.unsqueeze(2), d_context.unsqueeze(1))
            d_scores = alpha * (d_alpha - (d_alpha * alpha).sum(dim=1, keepdim=True))  # (rows, P)
            grad_score_bias += d_scores.sum()
            att_h = F.linear(tape.h_in[at], att_weight, att_bias).view(count, 1, 1, -1)  # (rows, 1, 1, A)
            for first, size in image_chunks(prepared[:count], 1):
                chunk = slice(first, min(first + size, count))
                energies = ctx.attention.energies(prepared[chunk], att_h[chunk]).squeeze(1)  # (n, P, A)
                grad_score_weight.addmv_(energies.view(-1, energies.shape[2]).t(), d_scores[chunk].reshape(-1))
                d_energies = energies.gt_(0).mul_(d_scores[chunk].unsqueeze(2)).mul_(score_weight)  # (n, P, A)
                grad_prepared[chunk] += d_energies
                torch.sum(d_energies, dim=1, out=grad_att_h[at][chunk])
            grad_h.addmm_(grad_att_h[at], att_weight)
        bias_grad = grad_gates.sum(dim=0)  # (4H,): the same for bias_ih and bias_hh
        return (None, None, grad_embedded, grad_features, grad_prepared,
                _padded(grad_h, ctx.batch), _padded(grad_c, ctx.batch),
                grad_att_h.t() @ tape.h_in, grad_att_h.sum(dim=0), grad_score_weight.view(1, -1), grad_score_bias,
                grad_gate.t() @ tape.h_in, grad_gate.sum(dim=0),
                grad_gates.t() @ tape.x, bias_grad, grad_gates.t() @ tape.h_in, bias_grad.clone())


class _Tape:
    """What the forward pass keeps for backward, every step's rows one after another (N rows)."""

    def __init__(self, like: torch.Tensor, n: int, input_dim: int, hidden_dim: int, channels: int, pixels: int):
        new = like.new_empty
        self.x = new(n, input_dim)  # the LSTM's input [embedding, gated context]
        self.h_in, self.c_in = new(n, hidden_dim), new(n, hidden_dim)  # the state each step starts from
        self.gates = new(n, 4 * hidden_dim)  # i, f, g, o after their activations
        self.tanh_c, self.h_out = new(n, hidden_dim), new(n, hidden_dim)
        self.gate, self.context = new(n, channels), new(n, channels)  # sigmoid(f_beta(h)), sum_p alpha_p f_p
        self.alpha = new(n, pixels)


def _padded(grad: torch.Tensor, batch: int) -> torch.Tensor:
    """The gradient of a (batch, H) initial state from that of its first `len(grad)` rows."""
    return torch.cat([grad, grad.new_zeros(batch - grad.shape[0], grad.shape[1])])


def _spans(rows: list[int]) -> list[tuple[int, int]]:
    """(first packed row, rows) of each step."""
    starts = [0]
    for count in rows[:-1]:
        starts.append(starts[-1] + count)
    return list(zip(starts, rows))
