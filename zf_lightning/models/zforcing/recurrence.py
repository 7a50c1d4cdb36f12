"""Z-Forcing's forward recurrence as one autograd node with a hand-written backward pass.

Autograd over a Python loop records some twenty nodes per step, allocates each one's
intermediates and gradient buffers, and forms every weight gradient step by step. Fused RNN
kernels instead run the sequence as one operation with backpropagation through time written
out; ``PlainRecurrence`` does the same for Z-Forcing's step (plain mode, z map folded into
the gate weights):

    y_t        = pre_t + W_h h_{t-1}              pre_t = [W_ix emb_t + biases ; W_qb b_t + c_1]
    q_t        = clamp(W_2 act(y_t[4H:]) + c_2)   the posterior's [mean; log-variance]
    z_t        = mean_t + exp(logvar_t / 2) * eps_t
    h_t, c_t   = LSTM(y_t[:4H] + W_z z_t, c_{t-1})

Tensors are feature-major with time in the middle ([features, T, B]): each in-loop product is
W @ x with the long side of W first (faster than x @ W^T for a small batch on a CPU) and each
weight gradient is one product over all steps, e.g. dW_h = dY [4H+M, T*B] @ H_prev[H, T*B]^T.
The pointwise parts of a step and their derivatives are the small functions below, collected
in ``StepOps`` so that ``compile_step`` can hand them to ``torch.compile``.
``zf_lightning.models.zforcing.reference`` computes the same terms step by step with autograd; the
tests hold the two equal in values and every gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zf_lightning.models.layers import clipped_leaky_relu, fp32_backward, fp32_forward, lstm_pointwise


# ---------------------------------------------------------------- pointwise step pieces
def clipped_leaky_relu_backward(grad: Tensor, pre: Tensor, slope: float, bound: float) -> Tensor:
    """Gradient through ``clipped_leaky_relu`` at pre-activation ``pre`` (torch's conventions at the kinks)."""
    leaky = F.leaky_relu(pre, slope)
    return torch.where(pre > 0, grad, grad * slope) * ((leaky >= -bound) & (leaky <= bound))


def sample_posterior(out: Tensor, noise: Tensor, clamp: float | None, dim: int = -1) -> tuple[Tensor, Tensor]:
    """The posterior's clamped output [mean; logvar] (stacked along ``dim``) and z = mean + exp(logvar / 2) * noise."""
    if clamp is not None:
        out = torch.clamp(out, -clamp, clamp)
    mean, logvar = out.chunk(2, dim=dim)
    return out, torch.addcmul(mean, torch.exp(0.5 * logvar), noise)


def sample_posterior_backward(
    grad_z: Tensor, grad_q: Tensor | None, q: Tensor, q_raw: Tensor, noise: Tensor, clamp: float | None
) -> Tensor:
    """Gradient of the posterior's unclamped output from those of z and of q (feature-major [2Z, B])."""
    logvar = q[q.shape[0] // 2 :]
    grad = torch.cat([grad_z, grad_z * noise * torch.exp(0.5 * logvar) * 0.5])
    if grad_q is not None:
        grad = grad + grad_q
    if clamp is not None:
        grad = grad * ((q_raw >= -clamp) & (q_raw <= clamp))
    return grad


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Feature-major LSTM update from pre-activations [4H, B] (gates i, f, g, o).

    Returns the gate activations (sigmoid, sigmoid, tanh, sigmoid), c_t, tanh(c_t) and h_t:
    what the backward pass reads.
    """
    hidden = c.shape[0]
    acts = torch.sigmoid(gates)
    acts[2 * hidden : 3 * hidden] = torch.tanh(gates[2 * hidden : 3 * hidden])
    i, f, g, o = acts.chunk(4, 0)
    c_new = torch.addcmul(f * c, i, g)
    tanh_c = torch.tanh(c_new)
    return acts, c_new, tanh_c, o * tanh_c


def lstm_update_backward(
    grad_h: Tensor, grad_c: Tensor, acts: Tensor, c_prev: Tensor, tanh_c: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of the pre-activations [4H, B] and of c_{t-1} from those of h_t and c_t."""
    i, f, g, o = acts.chunk(4, 0)
    grad_c = torch.addcmul(grad_c, grad_h * o, 1 - tanh_c * tanh_c)
    grad_i, grad_f, grad_g = grad_c * g * i * (1 - i), grad_c * c_prev * f * (1 - f), grad_c * i * (1 - g * g)
    grad_gates = torch.cat([grad_i, grad_f, grad_g, grad_h * tanh_c * o * (1 - o)])
    return grad_gates, grad_c * f


def cln_cell(gates_x: Tensor, gh: Tensor, cond: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update with z's clipped output ``cond`` setting the gain and bias of LN(W_hh h)."""
    gain, shift = torch.clamp(cond, -3.0, 3.0).chunk(2, dim=-1)
    gates = gates_x + torch.addcmul(shift, F.layer_norm(gh, (gh.shape[-1],)), 1.0 + gain)
    return lstm_pointwise(gates, c)


@dataclass(frozen=True)
class StepOps:
    """The pointwise pieces of one recurrence step, eager or compiled (not a module: no state)."""

    act: Callable[[Tensor, float, float], Tensor]
    act_backward: Callable[[Tensor, Tensor, float, float], Tensor]
    sample: Callable[[Tensor, Tensor, float | None, int], tuple[Tensor, Tensor]]
    sample_backward: Callable[..., Tensor]
    cell: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]
    cell_backward: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    cln_cell: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@functools.cache
def step_ops(compile_step: bool | str = False) -> StepOps:
    """Eager step functions, or ``torch.compile``d ones (shared by all models, so compiled once)."""
    fns = (
        clipped_leaky_relu,
        clipped_leaky_relu_backward,
        sample_posterior,
        sample_posterior_backward,
        lstm_update,
        lstm_update_backward,
        cln_cell,
    )
    if compile_step:
        backend = compile_step if isinstance(compile_step, str) else "inductor"
        fns = tuple(torch.compile(fn, backend=backend) for fn in fns)
    return StepOps(*fns)


# ---------------------------------------------------------------- the recurrence
class PlainRecurrence(torch.autograd.Function):
    """The loop in the module docstring over T steps; see ``plain_recurrence`` for the arguments.

    Kept for the backward pass, besides the outputs: the posterior's first-layer pre-activations
    and activations, its unclamped outputs, the gate activations, c_t and tanh(c_t). What a
    weight gradient reads is stored [features, T, B]; the rest [T, features, B], so each step
    reads a contiguous slice (pointwise kernels on strided slices measured twice as slow).
    Under mixed precision it runs in fp32 (``fp32_forward``): the state h_t, c_t never rounds to bf16.
    """

    @staticmethod
    @fp32_forward
    def forward(  # type: ignore[override]
        ctx: Any,
        pre: Tensor,
        noise: Tensor,
        w_h: Tensor,
        w_post: Tensor,
        b_post: Tensor,
        w_z: Tensor,
        ops: StepOps,
        slope: float,
        bound: float,
        clamp: float | None,
        keep: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        width, T, B = pre.shape
        H, Z = w_h.shape[1], w_z.shape[1]
        M = width - 4 * H
        new = pre.new_empty
        hs, z, q = new(H, T + 1, B), new(Z, T, B), new(2 * Z, T, B)
        # without a backward pass to come (evaluation), the backward-only buffers hold one step
        kept = T if keep else 1
        post_act = new(M, kept, B)
        acts, cs, tanh_cs = new(kept, 4 * H, B), new(kept + 1, H, B), new(kept, H, B)
        post_pre, q_raw = new(kept, M, B), new(kept, 2 * Z, B)
        h = pre.new_zeros(H, B)
        c = cs[0].zero_()
        hs[:, 0] = h
        bias_post = b_post[:, None]
        for t in range(T):
            k = t if keep else 0
            gates, post_pre[k] = torch.addmm(pre[:, t], w_h, h).split([4 * H, M])
            post_act[:, k] = a = ops.act(post_pre[k], slope, bound)
            q_raw[k] = out = torch.addmm(bias_post, w_post, a)
            q[:, t], z_t = ops.sample(out, noise[t], clamp, 0)
            z[:, t] = z_t
            acts[k], c, tanh_cs[k], h = ops.cell(torch.addmm(gates, w_z, z_t), c)
            if keep:
                cs[t + 1] = c
            hs[:, t + 1] = h
        ctx.save_for_backward(noise, w_h, w_post, w_z, hs, z, q, post_act, acts, cs, tanh_cs, post_pre, q_raw)
        ctx.consts = (ops, slope, bound, clamp)
        ctx.set_materialize_grads(False)  # an output nothing used gets None, not a zero tensor
        return hs, z, q

    @staticmethod
    @fp32_backward
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_hs: Tensor | None, d_z: Tensor | None, d_q: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        noise, w_h, w_post, w_z, hs, z, q, post_act, acts, cs, tanh_cs, post_pre, q_raw = ctx.saved_tensors
        ops, slope, bound, clamp = ctx.consts
        H, T, B = hs.shape[0], hs.shape[1] - 1, hs.shape[2]
        Z, M = z.shape[0], post_act.shape[0]
        # the transposed weights, copied once: W^T @ g reads them row-major (twice as fast as W.t() @ g)
        w_h_t, w_post_t, w_z_t = w_h.t().contiguous(), w_post.t().contiguous(), w_z.t().contiguous()
        # incoming gradients as [T, ., B], so each step reads a contiguous slice (they arrive in the
        # layout of whatever consumed the outputs, e.g. permuted to batch-major)
        d_hs, d_z, d_q = (None if d is None else d.transpose(0, 1).contiguous() for d in (d_hs, d_z, d_q))
        d_y = hs.new_empty(4 * H + M, T, B)  # gradient of y_t, i.e. of pre_t
        d_q_raw = hs.new_empty(2 * Z, T, B)
        dh, dc = hs.new_zeros(H, B), hs.new_zeros(H, B)
        for t in reversed(range(T)):
            if d_hs is not None:
                dh = dh + d_hs[t + 1]
            d_gates, dc = ops.cell_backward(dh, dc, acts[t], cs[t], tanh_cs[t])
            dz = torch.mm(w_z_t, d_gates)
            if d_z is not None:
                dz = dz + d_z[t]
            d_out = ops.sample_backward(dz, None if d_q is None else d_q[t], q[:, t], q_raw[t], noise[t], clamp)
            d_q_raw[:, t] = d_out
            d_post = ops.act_backward(torch.mm(w_post_t, d_out), post_pre[t], slope, bound)
            d_y[:, t] = dy = torch.cat([d_gates, d_post])
            if t > 0:  # h_0 is the constant zero state: its gradient is not needed
                dh = torch.mm(w_h_t, dy)
        d_w_h = d_y.view(-1, T * B) @ hs[:, :T].reshape(H, T * B).t()
        d_w_post = d_q_raw.view(2 * Z, T * B) @ post_act.view(M, T * B).t()
        d_w_z = d_y[: 4 * H].reshape(4 * H, T * B) @ z.view(Z, T * B).t()
        return d_y, None, d_w_h, d_w_post, d_q_raw.sum((1, 2)), d_w_z, None, None, None, None, None


def plain_recurrence(
    pre: Tensor,
    noise: Tensor,
    w_h: Tensor,
    w_post: Tensor,
    b_post: Tensor,
    w_z: Tensor,
    ops: StepOps,
    slope: float,
    bound: float,
    clamp: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the plain recurrence; returns h_0..h_T [H, T+1, B], z [Z, T, B] and q [2Z, T, B].

    ``pre``: [4H + M, T, B], the gate pre-activations from the input (all biases included) over
    the posterior's first-layer pre-activations from b_t (bias included); ``noise``: [T, Z, B];
    ``w_h``: [4H + M, H] = [W_hh; W_qh]; ``w_post``, ``b_post``: the posterior's second layer;
    ``w_z``: [4H, Z], the z map folded into the gate weights; ``slope``, ``bound``: the
    posterior's nonlinearity; ``clamp``: its output clamp (None: none).
    """
    keep = torch.is_grad_enabled() and any(x.requires_grad for x in (pre, w_h, w_post, b_post, w_z))
    # the reparameterisation noise is sampled, never learned: no gradient flows to it
    return PlainRecurrence.apply(pre, noise.detach(), w_h, w_post, b_post, w_z, ops, slope, bound, clamp, keep)
