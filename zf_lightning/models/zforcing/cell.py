"""``LoopLinear``: the linear map of a hand-written recurrence whose weight gradient is formed
once after the loop, as fused RNN kernels do (the conditional-layer-norm Z-Forcing loop)."""

from __future__ import annotations

import torch
from torch import Tensor

from zf_lightning.models.layers import fp32_backward, fp32_forward


class LoopLinear:
    """A linear map applied once per step of a Python loop, with its weight gradient formed after the loop.

    Autograd would give every step its own weight gradient (an outer product of two [B, .]
    matrices written into a weight-sized buffer and added to the running sum), T small
    memory-bound products per weight. Fused RNN kernels instead form sum_t g_t^T x_t once,
    as one large product over all steps; this does the same for hand-written recurrences:
    each step's backward computes only the gradient of its input and keeps the output
    gradient g_t, and a collector node, which autograd runs after every step's backward
    (they all consume its token), turns the kept g_t and x_t into the weight and bias
    gradients. Values are those of ``F.linear``; gradients differ only by summation order.

    The weight is copied once per pass into the layouts the forward and backward products
    read row-major (x @ W^T and g @ W).

    Create one per forward pass; call ``step(x, base)`` inside the loop. Under mixed precision
    the products run in fp32 (``fp32_forward``), like the weights they read.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        w = weight.detach()
        self.w_fwd = w.t().contiguous()  # [in, out]: x @ w_fwd
        self.w_bwd = w  # [out, in]: g @ w_bwd
        self.bias = None if bias is None else bias.detach()
        self.inputs: list[Tensor] = []
        self.grads: dict[int, Tensor] = {}
        tracked = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
        self.token = _LoopLinearCollect.apply(weight, bias, self) if tracked else None

    def product(self, x: Tensor, base: Tensor | None) -> Tensor:
        """base + the map applied to x, without autograd."""
        return x @ self.w_fwd if base is None else torch.addmm(base, x, self.w_fwd)

    def input_grad(self, grad: Tensor) -> Tensor:
        return grad @ self.w_bwd

    def step(self, x: Tensor, base: Tensor | None = None) -> Tensor:
        """``base`` plus the map applied to ``x`` (``base`` defaults to the bias), weight gradient deferred."""
        if base is None:
            base = self.bias
        elif self.bias is not None:
            raise ValueError("LoopLinear.step: pass base only to a map without its own bias")
        if self.token is None and not (torch.is_grad_enabled() and x.requires_grad):
            return self.product(x, base)
        return _LoopLinearStep.apply(x, base, self.token, self)

    def collect(self) -> tuple[Tensor | None, Tensor | None]:
        """Weight and bias gradients from the kept per-step output gradients (None when none arrived)."""
        steps = sorted(self.grads)
        self.grads, grads = {}, [self.grads[t] for t in steps]
        if not grads:
            return None, None
        g = torch.cat(grads, 0)
        x = torch.cat([self.inputs[t] for t in steps], 0)
        return g.t() @ x, (g.sum(0) if self.bias is not None else None)


class _LoopLinearStep(torch.autograd.Function):
    @staticmethod
    @fp32_forward
    def forward(ctx, x: Tensor, base: Tensor | None, token: Tensor | None, linear: LoopLinear) -> Tensor:  # type: ignore[override]
        ctx.linear = linear
        ctx.step = len(linear.inputs)
        ctx.base_shape = None if base is None else base.shape
        linear.inputs.append(x.detach())
        return linear.product(x, base)

    @staticmethod
    @fp32_backward
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        linear: LoopLinear = ctx.linear
        if linear.token is not None:
            linear.grads[ctx.step] = grad
        grad_x = linear.input_grad(grad) if ctx.needs_input_grad[0] else None
        grad_base = None
        if ctx.needs_input_grad[1]:
            grad_base = grad if ctx.base_shape == grad.shape else grad.sum_to_size(ctx.base_shape)
        grad_token = grad.new_zeros(()) if ctx.needs_input_grad[2] else None
        return grad_x, grad_base, grad_token, None


class _LoopLinearCollect(torch.autograd.Function):
    @staticmethod
    @fp32_forward
    def forward(ctx, weight: Tensor, bias: Tensor | None, linear: LoopLinear) -> Tensor:  # type: ignore[override]
        ctx.linear = linear
        return weight.new_zeros(())

    @staticmethod
    @fp32_backward
    @torch.autograd.function.once_differentiable
    def backward(ctx, _grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_w, grad_b = ctx.linear.collect()
        return grad_w, grad_b, None
