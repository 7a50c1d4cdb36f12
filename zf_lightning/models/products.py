"""Matrix products through the C++ extension's ``matmul_into`` where it is loaded.

On CPUs with AVX-512 (this project's machines are AMD EPYC), ATen forms float32 products with MKL,
which takes its AVX2 kernels there, while oneDNN, also inside torch, runs them with AVX-512 at about
twice the rate (at the FSDD studies' sizes 110-125 against 50-55 G multiply-adds/s on one thread).
``matmul_into`` sends each large float32 CPU product to oneDNN and every other one to ATen, by a rule
that depends on the shapes alone, so a product rounds the same wherever it is formed. Where the
extension is not loaded (no model runs its native loops in this process), these are ATen's products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _native():  # type: ignore[no-untyped-def]
    from zf_lightning.models.zforcing.native import loaded_native

    return loaded_native()


def matmul_into(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out = a @ b`` (``accumulate``: ``out += a @ b``) for 2-D tensors; returns ``out``."""
    native = _native()
    if native is not None and out.device.type == "cpu":
        native.matmul_into(a, b, out, 1.0 if accumulate else 0.0)
        return out
    return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D tensors, by ``matmul_into``."""
    return matmul_into(a, b, a.new_empty(a.shape[0], b.shape[1]))


def _applies(x: Tensor, weight: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and _native() is not None
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` with its products (forward and backward) by ``matmul_into``:
    one autograd node on float CPU tensors where the extension is loaded, else ``F.linear`` itself
    (autocast, other dtypes or devices, no extension)."""
    if not _applies(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias, False)


def linear_feature_major(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias).t()`` for rows ``x`` [N, in], formed as W x^T + b: the output
    [out, N] contiguous, the layout the recurrence's buffers take, without a transposing copy."""
    if not _applies(x, weight):
        return torch.mm(weight, x.t()) if bias is None else torch.addmm(bias[:, None], weight, x.t())
    return _Linear.apply(x, weight, bias, True)


class _Linear(torch.autograd.Function):
    """y = x W^T + b over the last dimension of x, or its transpose W x^T + b for rows x
    (``feature_major``); backward: dx = dy W, dW = dy^T x, db = the sum of dy over rows."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feature_major: bool) -> Tensor:  # type: ignore[override]
        rows = x.reshape(-1, x.shape[-1])
        if feature_major:
            out = matmul_into(weight, rows.t(), rows.new_empty(weight.shape[0], rows.shape[0]))
            if bias is not None:
                out.add_(bias[:, None])
        else:
            out = matmul_into(rows, weight.t(), rows.new_empty(rows.shape[0], weight.shape[0]))
            if bias is not None:
                out.add_(bias)
            out = out.view(*x.shape[:-1], weight.shape[0])
        ctx.save_for_backward(rows, weight)
        ctx.has_bias, ctx.feature_major, ctx.shape = bias is not None, feature_major, x.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        g = grad.t() if ctx.feature_major else grad.reshape(-1, grad.shape[-1])  # [N, out]
        d_x = d_w = d_b = None
        if ctx.needs_input_grad[0]:
            d_x = mm(g, weight).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            d_w = mm(g.t(), rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_b = g.sum(0)
        return d_x, d_w, d_b, None
