"""Show, Attend and Tell's recurrence over a whole batch as one autograd function, for the CPU.

At the coursework's sizes (batch 32, a 14x14x2048 grid) a teacher-forced step through autograd is
memory-bound. Every step writes the LSTM's 21 MB weight gradient and adds it to the running sum. It
stores the (rows, P, A) attention energies, and its slices of the projected grid each send back a
zero-filled gradient of the whole grid. This function runs the same steps forward with the decoder's
own modules and its cell's arithmetic. Its backward walks the steps in reverse:

- each weight's gradient is one product over all steps at the end, as cuDNN's RNNs do;
- the energies are recomputed a few images at a time, in chunks that stay in cache;
- the grid's gradient is summed in place.

`Decoder.forward` uses it for an LSTM or GRU core with soft attention and its f_beta gate, on a
CPU, without autocast or scheduled sampling. Every other case steps through `Decoder._hidden_step`.
tests/trainers/models/test_recurrence.py checks its outputs against the stepwise path bit for bit,
and its gradients in float64.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.attention import image_chunks


def attend_and_tell(decoder, embedded: torch.Tensor, memory, state: tuple[torch.Tensor, ...],
                    rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (N, H) and attention weights (N, P) of every real step, step after step.

    embedded (B, T, E) are the teacher-forced inputs, rows[t] the captions still running at step t
    (a prefix of the batch, longest first), N = sum(rows).
    """
    cell, attention, gate = decoder.core.cell, decoder.attention, decoder.f_beta
    return _Recurrence.apply(decoder, CELLS[type(cell)], rows, embedded, memory.features, memory.prepared,
                             attention.decoder_att.weight, attention.decoder_att.bias, attention.full_att.weight,
                             attention.full_att.bias, gate.weight, gate.bias,
                             cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh, *state)


class _LSTM:
    """nn.LSTMCell's CPU arithmetic in aten's order (so a step's outputs are equal bit for bit), and
    its backward. Gates i, f, g, o; the state (h, c)."""

    gates = 4

    @staticmethod
    def keep(tape, new, n: int, hidden: int) -> None:
        tape.c_in, tape.tanh_c = new(n, hidden), new(n, hidden)
        tape.gates = new(n, 4 * hidden)  # i, f, g, o after their activations

    @staticmethod
    def forward(x, state, weight_ih, bias_ih, weight_hh, bias_hh, tape, at) -> tuple[torch.Tensor, ...]:
        h, c = state  # (rows, H)
        tape.c_in[at] = c
        gates = tape.gates[at]  # (rows, 4H)
        torch.add(F.linear(h, weight_hh, bias_hh), F.linear(x, weight_ih, bias_ih), out=gates)
        i, f, g, o = gates.chunk(4, dim=1)  # (rows, H) views
        i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()
        c = (f * c).add_(i * g)  # (rows, H)
        tape.tanh_c[at] = tanh_c = c.tanh()
        return o * tanh_c, c

    @staticmethod
    def gradient_buffers(new, n: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4H) gradients of the gates' pre-activations from the input and from h: the same here."""
        both = new(n, 4 * hidden)
        return both, both

    @staticmethod
    def backward(dh, carried, tape, at, d_input, d_hidden) -> tuple[torch.Tensor | None, tuple]:
        """Writes the gates' gradients at `at`; returns h's gradient that skips the gates (none) and c's."""
        (dc,) = carried  # (rows, H)
        i, f, g, o = tape.gates[at].chunk(4, dim=1)
        di, df, dg, do = d_input[at].chunk(4, dim=1)
        tanh_c = tape.tanh_c[at]
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        torch.mul(dh * tanh_c, o * (1 - o), out=do)
        torch.mul(dc * g, i * (1 - i), out=di)
        torch.mul(dc * tape.c_in[at], f * (1 - f), out=df)
        torch.mul(dc * i, 1 - g * g, out=dg)
        return None, (dc * f,)


class _GRU:
    """nn.GRUCell's CPU arithmetic in aten's order, and its backward. Gates r, z, n; the state (h,)."""

    gates = 3

    @staticmethod
    def keep(tape, new, n: int, hidden: int) -> None:
        tape.gates = new(n, 3 * hidden)  # r, z, n after their activations
        tape.hidden_new = new(n, hidden)  # W_hn h + b_hn, which r scales

    @staticmethod
    def forward(x, state, weight_ih, bias_ih, weight_hh, bias_hh, tape, at) -> tuple[torch.Tensor, ...]:
        (h,) = state  # (rows, H)
        input_r, input_z, input_n = F.linear(x, weight_ih, bias_ih).chunk(3, dim=1)  # (rows, H)
        hidden_r, hidden_z, hidden_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=1)
        r = hidden_r.add_(input_r).sigmoid_()
        z = hidden_z.add_(input_z).sigmoid_()
        tape.hidden_new[at] = hidden_n
        n = input_n.add(hidden_n.mul_(r)).tanh_()
        torch.cat([r, z, n], dim=1, out=tape.gates[at])
        return ((h - n).mul_(z).add_(n),)

    @staticmethod
    def gradient_buffers(new, n: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3H) gradients of the input's and h's gate products: they differ in n's third."""
        return new(n, 3 * hidden), new(n, 3 * hidden)

    @staticmethod
    def backward(dh, carried, tape, at, d_input, d_hidden) -> tuple[torch.Tensor | None, tuple]:
        """Writes both products' gradients at `at`; returns h's gradient that skips the gates."""
        r, z, n = tape.gates[at].chunk(3, dim=1)
        dr, dz, dn = d_input[at].chunk(3, dim=1)
        dhr, dhz, dhn = d_hidden[at].chunk(3, dim=1)
        torch.mul(dh * (1 - z), 1 - n * n, out=dn)
        torch.mul(dh * (tape.h_in[at] - n), z * (1 - z), out=dz)
        torch.mul(dn * tape.hidden_new[at], r * (1 - r), out=dr)
        dhr.copy_(dr), dhz.copy_(dz)
        torch.mul(dn, r, out=dhn)
        return dh * z, ()


CELLS = {nn.LSTMCell: _LSTM, nn.GRUCell: _GRU}


class _Recurrence(torch.autograd.Function):
    """attend_and_tell's function: its inputs are the decoder's tensors that take a gradient."""

    @staticmethod
    def forward(ctx, decoder, cell, rows, embedded, features, prepared,
                att_weight, att_bias, score_weight, score_bias, gate_weight, gate_bias,
                weight_ih, bias_ih, weight_hh, bias_hh, *state):
        # Detached: the decoder's modules run on them here, and no autograd view may leak out of the function.
        embedded, features, prepared = embedded.detach(), features.detach(), prepared.detach()
        state = tuple(part.detach() for part in state)
        ctx.initial_shapes, ctx.embedded_shape = [part.shape for part in state], embedded.shape
        n, embed, (hidden_dim, channels) = sum(rows), embedded.shape[2], (state[0].shape[1], features.shape[2])
        new = embedded.new_empty
        h_out, alpha_out = new(n, hidden_dim), new(n, features.shape[1])  # the outputs
        # What backward reads besides its saved tensors. Never the outputs: a context that holds its own
        # outputs is a reference cycle that Python's collector cannot see, and every batch would leak.
        tape = SimpleNamespace(
            x=new(n, embed + channels),  # the cell's input [embedding, gated context]
            h_in=new(n, hidden_dim),
            gate=new(n, channels), context=new(n, channels))  # sigmoid(f_beta(h)), sum_p alpha_p f_p
        cell.keep(tape, new, n, hidden_dim)
        for t, (start, count) in enumerate(_spans(rows)):
            state = tuple(part[:count] for part in state)  # (rows, H) each
            at = slice(start, start + count)
            tape.h_in[at] = h = state[0]
            context, alpha = decoder.attention(features[:count], h, prepared[:count])  # (rows, C), (rows, P)
            torch.sigmoid(F.linear(h, gate_weight, gate_bias), out=tape.gate[at])  # (rows, C)
            tape.context[at], alpha_out[at] = context, alpha
            # A fresh tensor, as a step makes it: MKL's sums can depend on where an operand starts in memory.
            tape.x[at] = x = torch.cat([embedded[:count, t], tape.gate[at] * context], dim=1)  # (rows, E + C)
            state = cell.forward(x, state, weight_ih, bias_ih, weight_hh, bias_hh, tape, at)
            h_out[at] = state[0]
        ctx.cell, ctx.rows, ctx.embed, ctx.attention, ctx.tape = cell, rows, embed, decoder.attention, tape
        ctx.save_for_backward(features, prepared, att_weight, att_bias, score_weight, gate_weight, weight_ih,
                              weight_hh, alpha_out)
        return h_out, alpha_out

    @staticmethod
    def backward(ctx, grad_h_out, grad_alpha_out):  # (N, H), (N, P)
        (features, prepared, att_weight, att_bias, score_weight, gate_weight, weight_ih, weight_hh,
         alpha_out) = ctx.saved_tensors
        cell, tape, rows, embed = ctx.cell, ctx.tape, ctx.rows, ctx.embed
        score_weight = score_weight.view(-1)  # (A,)
        n, hidden_dim = tape.h_in.shape
        d_input, d_hidden = cell.gradient_buffers(prepared.new_empty, n, hidden_dim)  # (N, G*H) each
        grad_gate = torch.empty_like(tape.gate)  # (N, C): f_beta's pre-activation
        grad_att_h = prepared.new_empty(n, prepared.shape[2])  # (N, A)
        grad_embedded = prepared.new_zeros(ctx.embedded_shape)  # (B, T, E)
        grad_prepared = torch.zeros_like(prepared)  # (B, P, A)
        grad_features = torch.zeros_like(features) if ctx.needs_input_grad[4] else None  # (B, P, C)
        grad_score_weight, grad_score_bias = torch.zeros_like(score_weight), prepared.new_zeros(1)
        grad_h = prepared.new_zeros(0, hidden_dim)  # carried from the step after, for its rows
        carried = tuple(prepared.new_zeros(0, hidden_dim) for _ in range(len(ctx.initial_shapes) - 1))
        for t, (start, count) in reversed(list(enumerate(_spans(rows)))):
            at = slice(start, start + count)
            dh = grad_h_out[at] + _rows(grad_h, count)  # (rows, H)
            direct, carried = cell.backward(dh, tuple(_rows(part, count) for part in carried), tape, at,
                                            d_input, d_hidden)
            dx = d_input[at] @ weight_ih  # (rows, E + C)
            grad_h = d_hidden[at] @ weight_hh  # (rows, H)
            if direct is not None:
                grad_h += direct
            grad_embedded[:count, t] = dx[:, :embed]
            d_gated = dx[:, embed:]  # (rows, C)
            gate, context = tape.gate[at], tape.context[at]
            torch.mul(d_gated * context, gate * (1 - gate), out=grad_gate[at])
            grad_h.addmm_(grad_gate[at], gate_weight)
            d_context = d_gated * gate  # (rows, C)
            alpha = alpha_out[at]  # (rows, P)
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
        batch = ctx.initial_shapes[0][0]
        return (None, None, None, grad_embedded, grad_features, grad_prepared,
                grad_att_h.t() @ tape.h_in, grad_att_h.sum(dim=0), grad_score_weight.view(1, -1), grad_score_bias,
                grad_gate.t() @ tape.h_in, grad_gate.sum(dim=0),
                d_input.t() @ tape.x, d_input.sum(dim=0), d_hidden.t() @ tape.h_in, d_hidden.sum(dim=0),
                *(_rows(part, batch) for part in (grad_h, *carried)))


def _rows(grad: torch.Tensor, count: int) -> torch.Tensor:
    """A gradient of the first rows of a (count, H) tensor, as one for all of it: zeros below."""
    if grad.shape[0] == count:
        return grad
    return torch.cat([grad, grad.new_zeros(count - grad.shape[0], grad.shape[1])])


def _spans(rows: list[int]) -> list[tuple[int, int]]:
    """(first packed row, rows) of each step."""
    starts = [0]
    for count in rows[:-1]:
        starts.append(starts[-1] + count)
    return list(zip(starts, rows))
