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

Each step's tensors are feature-major ([features, B]) and stored time first ([T, features, B],
so a step's slice is contiguous): each in-loop product is W @ x with the long side of W first
(faster than x @ W^T for a small batch on a CPU) and each weight gradient is one product over
all steps, e.g. dW_h = dY [4H+M, T*B] @ H_prev[H, T*B]^T. At small sizes a step's time is mostly
the fixed cost of each operation, so the loop does few: it writes into buffers allocated before
it, and the backward pass forms every pointwise derivative for all steps before its loop. These
pieces are the small functions below, collected in ``StepOps`` so that ``compile_step`` can hand
them to ``torch.compile``.
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
from zf_lightning.models.products import matmul_into, mm
from zf_lightning.models.zforcing.native import NativeLoops


# ---------------------------------------------------------------- pointwise step pieces
def clipped_leaky_relu_grad(pre: Tensor, slope: float, bound: float) -> Tensor:
    """Derivative of ``clipped_leaky_relu`` at ``pre`` (torch's conventions at the kinks)."""
    leaky = F.leaky_relu(pre, slope)
    return torch.where(pre > 0, pre.new_ones(()), pre.new_full((), slope)) * ((leaky >= -bound) & (leaky <= bound))


def sample_posterior(out: Tensor, noise: Tensor, clamp: float | None, dim: int = -1) -> tuple[Tensor, Tensor]:
    """The posterior's clamped output [mean; logvar] (stacked along ``dim``) and z = mean + exp(logvar / 2) * noise."""
    if clamp is not None:
        out = torch.clamp(out, -clamp, clamp)
    mean, logvar = out.chunk(2, dim=dim)
    return out, torch.addcmul(mean, torch.exp(0.5 * logvar), noise)


def act_into(pre: Tensor, slope: float, bound: float, out: Tensor) -> Tensor:
    """``clipped_leaky_relu(pre)`` written into ``out`` (a step's slot of the kept activations)."""
    return torch.clamp(F.leaky_relu(pre, slope), -bound, bound, out=out)


def sample_into(q_raw: Tensor, noise: Tensor, clamp: float | None, q: Tensor, z: Tensor) -> None:
    """Feature-major ``sample_posterior`` ([2Z, B] -> [Z, B]) into the step's slots of q and z
    (``q`` is ``q_raw`` itself when there is no clamp)."""
    if clamp is not None:
        torch.clamp(q_raw, -clamp, clamp, out=q)
    mean, logvar = q.chunk(2, 0)
    torch.addcmul(mean, torch.exp(0.5 * logvar), noise, out=z)


def tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1 into ``out`` (contiguous; may be ``x``): within 2e-7 of
    ``torch.tanh``, whose CPU kernel in this torch build is several times slower than sigmoid's
    (about 2 ns an element against 0.3). The C++ loops form it by the same operations."""
    torch.mul(x, 2, out=out)
    torch.sigmoid(out, out=out)
    return out.mul_(2).sub_(1)


def lstm_into(gates: Tensor, c: Tensor, acts: Tensor, c_new: Tensor, tanh_c: Tensor, h: Tensor) -> None:
    """Feature-major LSTM update from pre-activations [4H, B] (gates i, f, g, o) into the step's
    slots: the gate activations (sigmoid, sigmoid, tanh, sigmoid), c_t, tanh(c_t) and h_t
    (each tanh by ``tanh_into``)."""
    hidden = c.shape[0]
    torch.sigmoid(gates, out=acts)
    tanh_into(gates[2 * hidden : 3 * hidden], acts[2 * hidden : 3 * hidden])
    i, f, g, o = acts.chunk(4, 0)
    torch.mul(f, c, out=c_new)
    c_new.addcmul_(i, g)
    tanh_into(c_new, tanh_c)
    torch.mul(o, tanh_c, out=h)


def lstm_factors(acts: Tensor, c_prev: Tensor, tanh_c: Tensor) -> tuple[Tensor, Tensor]:
    """What the LSTM update's backward pass multiplies by, for all steps at once ([T, ., B]).

    Returns the factors that turn dc_t (gates i, f, g) and dh_t (gate o) into the gates'
    pre-activation gradients [T, 4H, B], and o_t (1 - tanh(c_t)^2), which carries dh_t into dc_t.
    """
    i, f, g, o = acts.chunk(4, 1)
    gates = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], 1)
    return gates, o * (1 - tanh_c * tanh_c)


def lstm_backward_into(
    dh: Tensor, dc: Tensor, gate_factors: Tensor, dc_factor: Tensor, f: Tensor, d_gates: Tensor
) -> None:
    """One step of the LSTM update's backward pass from its ``lstm_factors``: the gates' gradient
    into ``d_gates`` [4H, B]; ``dc`` (that of c_t on entry) becomes that of c_{t-1}."""
    hidden = dh.shape[0]
    dc.addcmul_(dh, dc_factor)
    torch.mul(gate_factors[: 3 * hidden].view(3, hidden, -1), dc, out=d_gates[: 3 * hidden].view(3, hidden, -1))
    torch.mul(gate_factors[3 * hidden :], dh, out=d_gates[3 * hidden :])
    dc.mul_(f)


def posterior_factors(
    q: Tensor, q_raw: Tensor, noise: Tensor, clamp: float | None, d_q: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The sampling step's backward pass for all steps at once ([T, ., B]).

    d q_raw_t = s_t * [dz_t; dz_t] + r_t: returns s (the clamp's mask times [1; noise exp(logvar / 2) / 2])
    and r (the masked gradient of q itself, zero without one), the buffer each step adds to.
    """
    mean, logvar = q.chunk(2, 1)
    scale = torch.cat([torch.ones_like(mean), noise * torch.exp(0.5 * logvar) * 0.5], 1)
    if clamp is not None:
        scale = scale * ((q_raw >= -clamp) & (q_raw <= clamp))
    return scale, posterior_rest(q_raw, clamp, d_q)


def posterior_rest(q_raw: Tensor, clamp: float | None, d_q: Tensor | None) -> Tensor:
    """The part of d q_raw from q's own gradient (zero without one) for all steps, zero where the
    clamp held q_raw: ``posterior_factors``' ``r``, a new buffer the backward loop adds to."""
    rest = torch.zeros_like(q_raw) if d_q is None else d_q.clone()
    if clamp is not None:
        rest = rest * ((q_raw >= -clamp) & (q_raw <= clamp))
    return rest


def cln_cell(gates_x: Tensor, gh: Tensor, cond: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update with z's clipped output ``cond`` setting the gain and bias of LN(W_hh h)."""
    gain, shift = torch.clamp(cond, -3.0, 3.0).chunk(2, dim=-1)
    gates = gates_x + torch.addcmul(shift, F.layer_norm(gh, (gh.shape[-1],)), 1.0 + gain)
    return lstm_pointwise(gates, c)


@dataclass(frozen=True)
class StepOps:
    """The pointwise pieces of the recurrences, eager or compiled (not a module: no state).

    ``act``, ``sample``, ``cln_cell``: the conditional-layer-norm loop (under autograd);
    the rest: ``PlainRecurrence``, whose per-step pieces write into preallocated buffers.
    """

    act: Callable[[Tensor, float, float], Tensor]
    sample: Callable[[Tensor, Tensor, float | None, int], tuple[Tensor, Tensor]]
    cln_cell: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    act_into: Callable[[Tensor, float, float, Tensor], Tensor]
    sample_into: Callable[[Tensor, Tensor, float | None, Tensor, Tensor], None]
    cell: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]
    cell_backward: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]
    act_grad: Callable[[Tensor, float, float], Tensor]
    cell_factors: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    sample_factors: Callable[[Tensor, Tensor, Tensor, float | None, Tensor | None], tuple[Tensor, Tensor]]


@functools.cache
def step_ops(compile_step: bool | str = False) -> StepOps:
    """Eager step functions, or ``torch.compile``d ones (shared by all models, so compiled once)."""
    fns = (
        clipped_leaky_relu,
        sample_posterior,
        cln_cell,
        act_into,
        sample_into,
        lstm_into,
        lstm_backward_into,
        clipped_leaky_relu_grad,
        lstm_factors,
        posterior_factors,
    )
    if compile_step:
        backend = compile_step if isinstance(compile_step, str) else "inductor"
        fns = tuple(torch.compile(fn, backend=backend) for fn in fns)
    return StepOps(*fns)


# ---------------------------------------------------------------- the recurrence
class PlainRecurrence(torch.autograd.Function):
    """The loop in the module docstring over T steps; see ``plain_recurrence`` for the arguments.

    Every per-step quantity lives in a buffer [T, features, B] allocated before the loop, so
    each step reads and writes contiguous slices in place (no per-step allocation or copy):
    y = pre + W_h h_{t-1} (+ W_z z_t on the gate rows) accumulates in one buffer, whose posterior
    rows the backward pass reads. Kept for the backward pass besides the outputs: y, the
    posterior's activations and unclamped outputs, the gate activations, c_t and tanh(c_t).
    The backward pass forms every pointwise derivative for all steps at once before its loop,
    which is then three products and a few multiply-adds per step.
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
        native: NativeLoops | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        width, T, B = pre.shape
        H, Z = w_h.shape[1], w_z.shape[1]
        M = width - 4 * H
        new = pre.new_empty
        y = pre.transpose(0, 1).clone(memory_format=torch.contiguous_format)  # [T, 4H + M, B], a copy to update
        hs, z = new(T + 1, H, B), new(T, Z, B)
        q_raw = b_post[None, :, None].expand(T, 2 * Z, B).contiguous()
        q = q_raw if clamp is None else new(T, 2 * Z, B)
        # without a backward pass to come (evaluation), the backward-only buffers hold one step
        # (c_t: two, used in turn)
        kept = T if keep else 1
        post_act, acts, tanh_cs = new(kept, M, B), new(kept, 4 * H, B), new(kept, H, B)
        cs = new(T + 1 if keep else 2, H, B)
        hs[0].zero_()
        cs[0].zero_()
        if native is not None:
            native.forward_loop(
                y, hs, q_raw, q, z, noise, post_act, acts, cs, tanh_cs, w_h, w_post, w_z, slope, bound, clamp, keep
            )
        else:
            _forward_steps(
                y, hs, q_raw, q, z, noise, post_act, acts, cs, tanh_cs, w_h, w_post, w_z, ops, slope, bound, clamp, keep
            )
        ctx.save_for_backward(noise, w_h, w_post, w_z, hs, z, q, y, post_act, acts, cs, tanh_cs, q_raw)
        ctx.consts = (ops, slope, bound, clamp, native)
        ctx.set_materialize_grads(False)  # an output nothing used gets None, not a zero tensor
        return hs, z, q

    @staticmethod
    @fp32_backward
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_hs: Tensor | None, d_z: Tensor | None, d_q: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        noise, w_h, w_post, w_z, hs, z, q, y, post_act, acts, cs, tanh_cs, q_raw = ctx.saved_tensors
        ops, slope, bound, clamp, native = ctx.consts
        T, H, B = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        Z, M = z.shape[1], post_act.shape[1]
        # the transposed weights, copied once: W^T @ g reads them row-major (twice as fast as W.t() @ g)
        w_h_t, w_post_t, w_z_t = w_h.t().contiguous(), w_post.t().contiguous(), w_z.t().contiguous()
        # gradients of h_t and z_t, in the outputs' layout [T, ., B]: the incoming ones, to which
        # each step adds in place what flows back through the recurrence
        d_h_all = hs.new_zeros(hs.shape) if d_hs is None else torch.empty_like(hs).copy_(d_hs)
        d_z_all = z.new_zeros(z.shape) if d_z is None else torch.empty_like(z).copy_(d_z)
        d_y = hs.new_empty(T, 4 * H + M, B)  # gradient of y_t, i.e. of pre_t
        d_q = None if d_q is None else d_q.contiguous()
        if native is not None:  # forms the pointwise derivatives step by step, in its loop
            d_q_raw = posterior_rest(q_raw, clamp, d_q)
            native.backward_loop(
                d_y,
                d_h_all,
                d_z_all,
                d_q_raw,
                y,
                acts,
                cs,
                tanh_cs,
                q,
                q_raw,
                noise,
                w_h_t,
                w_post_t,
                w_z_t,
                slope,
                bound,
                clamp,
            )
        else:
            gate_factors, dc_factor = ops.cell_factors(acts, cs[:T], tanh_cs)
            act_grad = ops.act_grad(y[:, 4 * H :], slope, bound)
            sample_scale, d_q_raw = ops.sample_factors(q, q_raw, noise, clamp, d_q)
            _backward_steps(
                d_y,
                d_h_all,
                d_z_all,
                d_q_raw,
                sample_scale,
                gate_factors,
                dc_factor,
                acts,
                act_grad,
                w_h_t,
                w_post_t,
                w_z_t,
                ops,
            )
        d_pre = d_y.transpose(0, 1).contiguous()  # [4H + M, T, B], the layout of pre
        d_w_h = mm(d_pre.view(-1, T * B), hs[:T].transpose(0, 1).reshape(H, T * B).t())
        d_w_post = mm(d_q_raw.transpose(0, 1).reshape(2 * Z, T * B), post_act.transpose(0, 1).reshape(M, T * B).t())
        d_w_z = mm(d_pre[: 4 * H].view(4 * H, T * B), z.transpose(0, 1).reshape(Z, T * B).t())
        return d_pre, None, d_w_h, d_w_post, d_q_raw.sum((0, 2)), d_w_z, None, None, None, None, None, None


def _forward_steps(
    y: Tensor,
    hs: Tensor,
    q_raw: Tensor,
    q: Tensor,
    z: Tensor,
    noise: Tensor,
    post_act: Tensor,
    acts: Tensor,
    cs: Tensor,
    tanh_cs: Tensor,
    w_h: Tensor,
    w_post: Tensor,
    w_z: Tensor,
    ops: StepOps,
    slope: float,
    bound: float,
    clamp: float | None,
    keep: bool,
) -> None:
    """The forward pass's loop over steps, in Python: fills the buffers ``PlainRecurrence.forward``
    allocated (``keep``: the backward-only ones hold every step, else one)."""
    T, H = y.shape[0], hs.shape[1]
    # every step's slice of every buffer, taken once (slicing inside the loop costs as much as an op)
    steps = zip(
        y.unbind(0),
        y[:, : 4 * H].unbind(0),
        y[:, 4 * H :].unbind(0),
        hs[:T].unbind(0),
        hs[1:].unbind(0),
        q_raw.unbind(0),
        q.unbind(0),
        z.unbind(0),
        noise.unbind(0),
        strict=True,
    )
    for t, (y_t, gates, post_pre, h, h_new, q_raw_t, q_t, z_t, noise_t) in enumerate(steps):
        k = t if keep else 0
        c_in, c_out = (t, t + 1) if keep else (t % 2, (t + 1) % 2)
        matmul_into(w_h, h, y_t, accumulate=True)
        matmul_into(w_post, ops.act_into(post_pre, slope, bound, post_act[k]), q_raw_t, accumulate=True)
        ops.sample_into(q_raw_t, noise_t, clamp, q_t, z_t)
        matmul_into(w_z, z_t, gates, accumulate=True)
        ops.cell(gates, cs[c_in], acts[k], cs[c_out], tanh_cs[k], h_new)


def _backward_steps(
    d_y: Tensor,
    d_h_all: Tensor,
    d_z_all: Tensor,
    d_q_raw: Tensor,
    sample_scale: Tensor,
    gate_factors: Tensor,
    dc_factor: Tensor,
    acts: Tensor,
    act_grad: Tensor,
    w_h_t: Tensor,
    w_post_t: Tensor,
    w_z_t: Tensor,
    ops: StepOps,
) -> None:
    """The backward pass's loop over steps (T-1..0), in Python: fills ``d_y`` and adds into
    ``d_h_all``, ``d_z_all`` and ``d_q_raw`` what flows back through the recurrence."""
    T, H, B = d_h_all.shape[0] - 1, d_h_all.shape[1], d_h_all.shape[2]
    Z = d_z_all.shape[1]
    dc = d_y.new_zeros(H, B)
    steps = zip(
        d_y.unbind(0),
        d_y[:, : 4 * H].unbind(0),
        d_y[:, 4 * H :].unbind(0),
        d_h_all[:T].unbind(0),
        d_h_all[1:].unbind(0),
        d_z_all.unbind(0),
        d_q_raw.view(T, 2, Z, B).unbind(0),
        sample_scale.view(T, 2, Z, B).unbind(0),
        gate_factors.unbind(0),
        dc_factor.unbind(0),
        acts[:, H : 2 * H].unbind(0),
        act_grad.unbind(0),
        strict=True,
    )
    for t, (dy, d_gates, d_post, dh_prev, dh, dz, d_out, scale, gate_f, dc_f, f, act_f) in reversed(
        list(enumerate(steps))
    ):
        ops.cell_backward(dh, dc, gate_f, dc_f, f, d_gates)
        matmul_into(w_z_t, d_gates, dz, accumulate=True)
        d_out.addcmul_(scale, dz)
        matmul_into(w_post_t, d_out.view(2 * Z, B), d_post).mul_(act_f)
        if t > 0:  # h_0 is the constant zero state: its gradient is not needed
            matmul_into(w_h_t, dy, dh_prev, accumulate=True)


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
    native: NativeLoops | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the plain recurrence; returns h_0..h_T [T+1, H, B], z [T, Z, B] and q [T, 2Z, B].

    ``pre``: [4H + M, T, B], the gate pre-activations from the input (all biases included) over
    the posterior's first-layer pre-activations from b_t (bias included); ``noise``: [T, Z, B];
    ``w_h``: [4H + M, H] = [W_hh; W_qh]; ``w_post``, ``b_post``: the posterior's second layer;
    ``w_z``: [4H, Z], the z map folded into the gate weights; ``slope``, ``bound``: the
    posterior's nonlinearity; ``clamp``: its output clamp (None: none); ``native``: the C++ step
    loops (``zf_lightning.models.zforcing.native``), which compute the same on CPU tensors, or
    None for the Python loops.
    """
    keep = torch.is_grad_enabled() and any(x.requires_grad for x in (pre, w_h, w_post, b_post, w_z))
    # the reparameterisation noise is sampled, never learned: no gradient flows to it
    return PlainRecurrence.apply(pre, noise.detach(), w_h, w_post, b_post, w_z, ops, slope, bound, clamp, keep, native)
