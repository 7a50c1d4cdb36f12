"""Building blocks shared by all models: the authors' clipped leaky ReLU, the
Gaussian-parameter MLP used for priors, posteriors and the auxiliary head, the
LSTM cell (plain or conditional layer norm) whose weights the fast loop slices, and the
decorators that keep hand-written autograd functions in fp32 under mixed precision."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.products import linear

# device types whose autocast (trainer.precision=bf16-mixed / 16-mixed) the custom functions handle
AUTOCAST_DEVICES = ("cpu", "cuda")


def fp32_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.amp.custom_fwd(cast_inputs=torch.float32)`` for every device in ``AUTOCAST_DEVICES``.

    A hand-written autograd function sees its inputs as autocast left them (bf16 activations
    next to fp32 weights, which its products refuse to mix). Under autocast this casts the
    floating-point inputs to fp32 and runs ``forward`` with autocast off: the recurrent state,
    carried over hundreds of steps, keeps full precision, and the outputs are fp32 (the ops
    after it cast them down where autocast wants to). Outside autocast it changes nothing."""
    for device in AUTOCAST_DEVICES:
        forward = torch.amp.custom_fwd(forward, device_type=device, cast_inputs=torch.float32)
    return forward


def fp32_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.amp.custom_bwd`` for every device in ``AUTOCAST_DEVICES``: the backward pass runs with
    the autocast state its forward ran with (off after ``fp32_forward``), whoever calls it."""
    for device in AUTOCAST_DEVICES:
        backward = torch.amp.custom_bwd(backward, device_type=device)
    return backward


def clipped_leaky_relu(x: Tensor, slope: float, bound: float) -> Tensor:
    """Leaky ReLU clipped to [-bound, bound]; a plain function so the fast loop can compile it."""
    return torch.clamp(F.leaky_relu(x, slope), -bound, bound)


def _plain_autograd(x: Tensor) -> bool:
    """Where the one-node functions below step aside for the plain ops: no gradient to form, or
    autocast (whose casting rules the plain ops follow)."""
    return not (torch.is_grad_enabled() and x.requires_grad) or torch.is_autocast_enabled(x.device.type)


def clamp_fused(x: Tensor, bound: float) -> Tensor:
    """``torch.clamp(x, -bound, bound)`` as one autograd node whose backward is one comparison and
    one ``where`` (autograd's: two comparisons, their conjunction and a ``where``); same values and
    gradients bit for bit."""
    if _plain_autograd(x):
        return torch.clamp(x, -bound, bound)
    return _Clamp.apply(x, bound)


def clipped_leaky_relu_fused(x: Tensor, slope: float, bound: float) -> Tensor:
    """``clipped_leaky_relu`` as one autograd node (backward: a comparison, a ``where`` and the leaky
    ReLU's own backward kernel, where autograd's chain runs five); same values and gradients bit for bit."""
    if _plain_autograd(x):
        return clipped_leaky_relu(x, slope, bound)
    return _ClippedLeakyReLU.apply(x, slope, bound)


def sigmoid_tanh(x: Tensor) -> Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1 (within 2e-7 of ``torch.tanh`` in float32), one autograd node
    whose backward is ATen's tanh backward kernel: this torch build's CPU tanh is several times
    slower than its sigmoid (about 2 ns an element against 0.3). Plain ``torch.tanh`` under autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.tanh(x)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.sigmoid(x * 2).mul_(2).sub_(1)
    return _SigmoidTanh.apply(x)


class _SigmoidTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, out)  # grad (1 - out^2), the derivative of either form


class _Clamp(torch.autograd.Function):
    """clamp(x, -bound, bound); x passed the clamp unchanged exactly where the output equals it
    (NaN compares unequal, as it fails autograd's window test), so the gradient is
    where(out == x, grad, 0), which is autograd's."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        out = torch.clamp(x, -bound, bound)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, out = ctx.saved_tensors
        return torch.where(out == x, grad, 0.0), None


class _ClippedLeakyReLU(torch.autograd.Function):
    """clamp(leaky_relu(x)): the clamp's gradient as in ``_Clamp``, then the leaky ReLU's backward kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float, bound: float) -> Tensor:  # type: ignore[override]
        leaky = F.leaky_relu(x, slope)
        out = torch.clamp(leaky, -bound, bound)
        ctx.save_for_backward(x, leaky, out)
        ctx.slope = slope
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, leaky, out = ctx.saved_tensors
        inside = torch.where(out == leaky, grad, 0.0)
        return torch.ops.aten.leaky_relu_backward(inside, x, ctx.slope, False), None, None


class ClippedLeakyReLU(nn.Module):
    """Leaky ReLU with slope 1/3, clipped to [-3, 3] (Z-Forcing's nonlinearity)."""

    def __init__(self, slope: float = 1.0 / 3.0, bound: float = 3.0) -> None:
        super().__init__()
        self.slope = slope
        self.bound = bound

    def forward(self, x: Tensor) -> Tensor:
        return clipped_leaky_relu(x, self.slope, self.bound)


class GaussianMLP(nn.Module):
    """Linear -> clipped leaky ReLU -> Linear to (mean, log-variance), both clamped to ±clamp.

    ``first`` and ``second`` are exposed so the fast recurrence can apply the first layer
    to parts of its input at different times (e.g. the backward states before the loop).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, clamp: float | None = 8.0) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, hidden)
        self.act = ClippedLeakyReLU()
        self.second = nn.Linear(hidden, 2 * out_features)
        self.clamp = clamp

    def unclamped_output(self, pre: Tensor) -> Tensor:
        """The second layer's output [mean; logvar] before the clamp, from the first layer's output
        (before the nonlinearity)."""
        return linear(
            clipped_leaky_relu_fused(pre, self.act.slope, self.act.bound), self.second.weight, self.second.bias
        )

    def from_hidden_preactivation(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Finish the MLP from the first layer's output (before the nonlinearity)."""
        out = self.unclamped_output(pre)
        if self.clamp is not None:
            out = clamp_fused(out, self.clamp)
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.from_hidden_preactivation(self.first(x))


def lstm_pointwise(gates: Tensor, c: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """LSTM state update from the summed pre-activations, gate order (i, f, g, o) as in torch,
    along ``dim`` (0 for feature-major states [4H, B])."""
    i, f, g, o = gates.chunk(4, dim=dim)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


class ZLSTMCell(nn.Module):
    """The forward cell of Z-Forcing, holding weights only; the models do the arithmetic.

    Plain mode: gates = W_ih [emb(x); g(z)] + W_hh h + b, i.e. ``weight_ih`` has
    ``input_size + cond_size`` columns (embedding first, then the z map).
    Conditional layer norm: gates = LN_ih(W_ih emb(x)) + LN(W_hh h) * (1 + gain(z)) + bias(z);
    no biases, z does not enter as input.

    Initialization follows the authors: input weights U(±1/sqrt(H)), recurrent weights
    orthogonal, biases zero.
    """

    def __init__(self, input_size: int, cond_size: int, hidden_size: int, cond_layer_norm: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.cond_size = cond_size
        self.hidden_size = hidden_size
        self.cond_layer_norm = cond_layer_norm
        in_cols = input_size if cond_layer_norm else input_size + cond_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, in_cols))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        if cond_layer_norm:
            self.ln_ih = nn.LayerNorm(4 * hidden_size)
            self.register_parameter("bias", None)
        else:
            self.ln_ih = None
            self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.orthogonal_(self.weight_hh)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def weight_ix(self) -> Tensor:
        """Columns of ``weight_ih`` that read the input embedding."""
        return self.weight_ih[:, : self.input_size]

    @property
    def weight_iz(self) -> Tensor:
        """Columns of ``weight_ih`` that read the z map (plain mode only)."""
        return self.weight_ih[:, self.input_size :]

    def input_gates(self, emb: Tensor) -> Tensor:
        """The part of the gate pre-activations that depends only on the input embedding."""
        gx = F.linear(emb, self.weight_ix)
        if self.ln_ih is not None:
            return self.ln_ih(gx)
        return gx + self.bias

    def hidden_gates(self, gh: Tensor, cond: Tensor) -> Tensor:
        """Combine W_hh h with z's contribution: ``cond`` is g(z) (plain) or the clipped 8H CLN output."""
        if self.cond_layer_norm:
            gain, bias = cond.chunk(2, dim=-1)
            return F.layer_norm(gh, (gh.shape[-1],)) * (1.0 + gain) + bias
        return gh + F.linear(cond, self.weight_iz)


def relu_mlp(in_features: int, hidden: int, out_features: int, layers: int) -> nn.Sequential:
    """``layers`` Linear layers with ReLU between and after them (the last layer's ReLU makes the
    output a feature vector, as DeepSets' phi and rho hidden layers); ``layers >= 1``."""
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    sizes = [in_features] + [hidden] * (layers - 1) + [out_features]
    modules: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        modules += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*modules)
