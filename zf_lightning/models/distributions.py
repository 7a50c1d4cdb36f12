"""Closed-form log-densities and KL terms shared by every model (no torch.distributions
objects in the hot path: these are plain tensor expressions that fuse well)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, exp(logvar)) summed over the last dimension."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def gaussian_kl(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) summed over the last dimension."""
    ratio = torch.exp(logvar_q - logvar_p)
    return 0.5 * (logvar_p - logvar_q + ratio + (mean_q - mean_p).pow(2) * torch.exp(-logvar_p) - 1.0).sum(-1)


def reparameterize(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """z = mean + std * noise, with noise ~ N(0, I) supplied by the caller (for reproducibility)."""
    return mean + torch.exp(0.5 * logvar) * noise


def gaussian_nll(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """-log N(x; mean, exp(logvar)) summed over the last dimension: ``-gaussian_log_prob``'s values
    and gradients, bit for bit, from a backward pass of five passes over the inputs where
    autograd's chain runs about a dozen operations (``_GaussianNLL``). The plain expression runs
    where the fused one does not apply (broadcast shapes, mixed dtypes, autocast)."""
    if not _fusable(x, mean, logvar):
        return -gaussian_log_prob(x, mean, logvar)
    return _GaussianNLL.apply(x, mean, logvar, None)


def gaussian_nll_params(x: Tensor, params: Tensor) -> Tensor:
    """``gaussian_nll`` with mean and log-variance the two halves of ``params`` [..., 2D] (a head's
    output): the gradient of ``params`` is written as one tensor, without the concatenation that
    the backward pass of ``chunk`` would add."""
    mean, logvar = params.chunk(2, dim=-1)
    if not _fusable(x, mean, logvar):
        return -gaussian_log_prob(x, mean, logvar)
    return _GaussianNLL.apply(x, mean, logvar, params)


def tanh_gaussian_nll(x: Tensor, params: Tensor, clamp: float | None) -> Tensor:
    """-log N(x; tanh(mean), exp(logvar)) summed over the last dimension, with [mean; logvar] the
    halves of ``clamp(params, -clamp, clamp)`` (no clamp: None): Z-Forcing's auxiliary cost on its
    head's output. Where the C++ extension is loaded, one node whose two passes replace the clamp,
    the tanh (2 sigmoid(2 mean) - 1, as ``sigmoid_tanh``) and the Gaussian NLL with their dozen
    operations (``_TanhGaussianNLL``), equal to them within rounding; else those operations."""
    native = _native(x, params[..., : x.shape[-1]], params[..., x.shape[-1] :])
    if native is None or params.shape[:-1] != x.shape[:-1] or params.shape[-1] != 2 * x.shape[-1]:
        return _tanh_gaussian_nll_plain(x, params, clamp)
    if params.dtype != x.dtype or torch.is_autocast_enabled("cpu"):
        return _tanh_gaussian_nll_plain(x, params, clamp)
    return _TanhGaussianNLL.apply(x.detach(), params, clamp, native)


def _tanh_gaussian_nll_plain(x: Tensor, params: Tensor, clamp: float | None) -> Tensor:
    from zf_lightning.models.layers import clamp_fused, sigmoid_tanh

    if clamp is not None:
        params = clamp_fused(params, clamp)
    mean, logvar = params.chunk(2, dim=-1)
    return gaussian_nll(x.detach(), sigmoid_tanh(mean), logvar)


class _TanhGaussianNLL(torch.autograd.Function):
    """``tanh_gaussian_nll`` by the C++ extension's kernels (the target x gets no gradient):
    d mean = -g e^-logvar (x - tanh(mean)) (1 - tanh(mean)^2), d logvar = g/2 (1 - (x - tanh(mean))^2
    e^-logvar), zero where the clamp held the parameter."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, clamp: float | None, native) -> Tensor:  # type: ignore[no-untyped-def,override]
        th, inv = x.new_empty(x.shape), x.new_empty(x.shape)
        out = x.new_empty(x.shape[:-1])
        native.tanh_gaussian_forward(params, x, clamp, th, inv, out, _LOG_2PI)
        ctx.save_for_backward(params, x, th, inv)
        ctx.clamp, ctx.native = clamp, native
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        params, x, th, inv = ctx.saved_tensors
        d_params = x.new_empty(*x.shape[:-1], 2 * x.shape[-1])
        ctx.native.tanh_gaussian_backward(grad.contiguous(), params, x, ctx.clamp, th, inv, d_params)
        return None, d_params, None, None


def _fusable(x: Tensor, mean: Tensor, logvar: Tensor) -> bool:
    return (
        x.shape == mean.shape == logvar.shape
        and x.dtype == mean.dtype == logvar.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )


class _GaussianNLL(torch.autograd.Function):
    """``-gaussian_log_prob(x, mean, logvar)`` computed by the same operations (so the same values),
    keeping x - mean, its square and exp(-logvar) for a backward pass that forms what autograd's
    chain forms, rounding alike (g/2 scales exactly):
    d mean = (-g exp(-logvar)) (x - mean), d logvar = g/2 - (g/2 (x - mean)^2) exp(-logvar).
    With ``params`` (mean and logvar its halves) the gradient is that of ``params``.

    Where the C++ extension is loaded (``_native``) its kernels form the per-element terms and the
    gradients in one pass each, rounding as these expressions do; exp and the sum stay ATen's."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, logvar: Tensor, params: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.joint = params is not None
        ctx.native = _native(x, mean, logvar)
        if ctx.native is not None:
            inv = torch.exp(-logvar)
            total = x.new_empty(x.shape)
            ctx.native.gaussian_terms(x, mean, logvar, inv, total, _LOG_2PI)
            ctx.save_for_backward(x, mean, inv)
            return -(-0.5 * total.sum(-1))
        diff = x - mean
        square = diff.pow(2)
        inv = torch.exp(-logvar)
        total = (_LOG_2PI + logvar).add_(square * inv)
        ctx.save_for_backward(diff, square, inv)
        return -(-0.5 * total.sum(-1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.native is not None:
            return _GaussianNLL._native_backward(ctx, grad)
        diff, square, inv = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        half = g * 0.5
        if ctx.joint:
            d_params = diff.new_empty(*diff.shape[:-1], 2 * diff.shape[-1])
            d_mean, d_logvar = d_params.chunk(2, dim=-1)
            torch.mul(-g, inv, out=d_mean).mul_(diff)
            torch.sub(half, torch.mul(half, square, out=d_logvar).mul_(inv), out=d_logvar)
            return -d_mean if ctx.needs_input_grad[0] else None, None, None, d_params
        d_x = d_mean = d_logvar = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            d_mean = (-g * inv).mul_(diff)
            d_x = -d_mean if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[2]:
            d_logvar = torch.sub(half, (half * square).mul_(inv))
        return d_x, d_mean if ctx.needs_input_grad[1] else None, d_logvar, None

    @staticmethod
    def _native_backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[no-untyped-def]
        x, mean, inv = ctx.saved_tensors
        if ctx.joint:
            d_params = x.new_empty(*x.shape[:-1], 2 * x.shape[-1])
            d_mean, d_logvar = d_params.chunk(2, dim=-1)
        else:
            d_params, d_mean, d_logvar = None, x.new_empty(x.shape), x.new_empty(x.shape)
        ctx.native.gaussian_backward(grad, x, mean, inv, d_mean, d_logvar)
        d_x = -d_mean if ctx.needs_input_grad[0] else None
        if ctx.joint:
            return d_x, None, None, d_params
        return d_x, d_mean if ctx.needs_input_grad[1] else None, d_logvar if ctx.needs_input_grad[2] else None, None


def _native(x: Tensor, mean: Tensor, logvar: Tensor):  # type: ignore[no-untyped-def]
    """The loaded C++ extension where its Gaussian kernels apply to these tensors ([B, T, D] CPU
    float or double, unit stride along D), else None."""
    if x.device.type != "cpu" or x.dim() != 3 or x.dtype not in (torch.float32, torch.float64):
        return None
    if any(t.stride(-1) != 1 for t in (x, mean, logvar)):
        return None
    from zf_lightning.models.zforcing.native import loaded_native

    return loaded_native()
