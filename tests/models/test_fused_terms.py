"""The one-node versions of the post-loop terms equal the plain expressions bit for bit, in values
and in every gradient autograd would form (``torch.equal``, not a tolerance): the Gaussian NLL,
the clamps and clipped leaky ReLU of the Gaussian MLPs, and the row split of the states' product."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from zf_lightning.models.distributions import gaussian_log_prob, gaussian_nll, gaussian_nll_params
from zf_lightning.models.layers import clamp_fused, clipped_leaky_relu, clipped_leaky_relu_fused
from zf_lightning.models.zforcing.model import step_rows

DTYPES = [torch.float32, torch.float64]


def _grads(out: Tensor, inputs: tuple[Tensor, ...], grad: Tensor) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(out, inputs, grad, allow_unused=True)


def _assert_equal(a: tuple[Tensor | None, ...], b: tuple[Tensor | None, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_grad", [False, True])
def test_gaussian_nll_is_the_plain_expression_bit_for_bit(dtype: torch.dtype, x_grad: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 7, generator=g, dtype=dtype).requires_grad_(x_grad)
    mean = torch.randn(4, 5, 7, generator=g, dtype=dtype, requires_grad=True)
    logvar = (2 * torch.randn(4, 5, 7, generator=g, dtype=dtype)).requires_grad_()
    grad = torch.randn(4, 5, generator=g, dtype=dtype)
    inputs = (x, mean, logvar) if x_grad else (mean, logvar)
    plain = -gaussian_log_prob(x, mean, logvar)
    fused = gaussian_nll(x, mean, logvar)
    assert fused.grad_fn is not None and "GaussianNLL" in type(fused.grad_fn).__name__  # the fused node ran
    assert torch.equal(fused, plain)
    _assert_equal(_grads(fused, inputs, grad), _grads(plain, inputs, grad))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_params_writes_the_params_gradient(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 5, generator=g, dtype=dtype)
    base = torch.randn(3, 6, 13, generator=g, dtype=dtype, requires_grad=True)
    params = base[..., 1:11]  # a strided view, as a head's slice of a wider product is
    grad = torch.randn(3, 6, generator=g, dtype=dtype)
    mean, logvar = params.chunk(2, dim=-1)
    plain = -gaussian_log_prob(x, mean, logvar)
    fused = gaussian_nll_params(x, params)
    assert torch.equal(fused, plain)
    _assert_equal(_grads(fused, (base,), grad), _grads(plain, (base,), grad))


def test_gaussian_nll_falls_back_where_shapes_broadcast() -> None:
    x = torch.randn(2, 3, 1)
    mean = torch.randn(2, 3, 4, requires_grad=True)
    logvar = torch.randn(2, 3, 4, requires_grad=True)
    out = gaussian_nll(x, mean, logvar)
    assert torch.equal(out, -gaussian_log_prob(x, mean, logvar))
    assert "GaussianNLL" not in type(out.grad_fn).__name__


def _with_edges(dtype: torch.dtype) -> Tensor:
    """Values inside, outside and exactly on the clamp's bounds, a signed zero and a NaN."""
    x = 4 * torch.randn(200, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x[:6] = torch.tensor([3.0, -3.0, 9.0, -9.0, -0.0, float("nan")], dtype=dtype)
    x[6:8] = torch.tensor([-9.0, 9.0], dtype=dtype)  # leaky: -3 exactly, and past the upper bound
    return x.requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_fused_is_torch_clamp_bit_for_bit(dtype: torch.dtype) -> None:
    x = _with_edges(dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    plain, fused = torch.clamp(x, -3.0, 3.0), clamp_fused(x, 3.0)
    assert torch.equal(fused[6:], plain[6:]) and torch.isnan(fused[5])
    _assert_equal(_grads(fused, (x,), grad), _grads(plain, (x,), grad))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipped_leaky_relu_fused_is_the_plain_chain_bit_for_bit(dtype: torch.dtype) -> None:
    x = _with_edges(dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    plain, fused = clipped_leaky_relu(x, 1 / 3, 3.0), clipped_leaky_relu_fused(x, 1 / 3, 3.0)
    assert torch.equal(fused[6:], plain[6:])
    _assert_equal(_grads(fused, (x,), grad), _grads(plain, (x,), grad))


@pytest.mark.parametrize("unused", [None, 1, 2])
def test_step_rows_matches_slicing_in_values_and_gradient(unused: int | None) -> None:
    g = torch.Generator().manual_seed(5)
    from_h = torch.randn(3, 5, 9, generator=g, requires_grad=True)
    widths = [4, 3, 2]
    parts = from_h.split(widths, dim=-1)
    plain = [parts[0][:, 1:], parts[1][:, :-1], parts[2][:, :-1]]
    fused = step_rows(from_h, widths)
    grads = [torch.randn(p.shape, generator=g) for p in plain]

    def loss(outs: list[Tensor]) -> Tensor:  # part ``unused`` gets no gradient
        return sum((o * w).sum() for i, (o, w) in enumerate(zip(outs, grads, strict=True)) if i != unused)

    for a, b in zip(fused, plain, strict=True):
        assert torch.equal(a, b)
    _assert_equal(torch.autograd.grad(loss(fused), from_h), torch.autograd.grad(loss(plain), from_h))
