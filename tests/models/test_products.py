"""The products of ``zf_lightning.models.products`` (the C++ extension's ``matmul_into``: oneDNN for
large float32 products, ATen for the rest) against ATen's, and ``linear``'s hand-written backward
against autograd (``gradcheck`` in float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.models.test_native_loop import needs_build
from zf_lightning.models import products
from zf_lightning.models.zforcing import native

pytestmark = [needs_build, pytest.mark.native]


@pytest.fixture(scope="module", autouse=True)
def ops() -> object:
    loops = native.native_loops()
    assert loops is not None, "the native extension did not build (see the log)"
    return loops


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_passes_gradcheck(feature_major: bool, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (7, 5) if feature_major else (3, 4, 5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    wide = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    fn = products.linear_feature_major if feature_major else products.linear

    def run(x: torch.Tensor, wide: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return fn(x, wide[:, 2:7], rest[0] if rest else None)  # a column slice, as the model's weights are

    out = run(x, wide, *([bias] if bias is not None else []))
    assert "Linear" in type(out.grad_fn).__name__  # the hand-written node ran
    assert torch.autograd.gradcheck(run, (x, wide, *([bias] if bias is not None else [])))


@pytest.mark.parametrize("feature_major", [False, True])
def test_linear_equals_f_linear_at_the_studies_sizes(feature_major: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(960, 128, generator=g, requires_grad=True)
    weight = torch.randn(464, 200, generator=g)[:, :128].requires_grad_()  # 57 M multiply-adds: oneDNN
    bias = torch.randn(464, generator=g, requires_grad=True)
    grad = torch.randn(464, 960, generator=g) if feature_major else torch.randn(960, 464, generator=g)
    out = products.linear_feature_major(x, weight, bias) if feature_major else products.linear(x, weight, bias)
    plain = F.linear(x, weight, bias)
    if feature_major:
        assert out.is_contiguous() and out.shape == (464, 960)
        plain = plain.t()
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-4)
    for a, b in zip(
        torch.autograd.grad(out, (x, weight, bias), grad),
        torch.autograd.grad(plain, (x, weight, bias), grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(
    "m, k, n",
    [
        (576, 128, 32),
        (128, 576, 32),
        (512, 32, 32),
        (32, 512, 32),
        (64, 64, 32),
        (7, 5, 3),
        (13, 64, 20),
        (64, 64, 45),
        (960, 128, 464),
    ],
)
def test_matmul_into_is_the_product_within_float32_rounding(
    accumulate: bool, transposed: bool, m: int, k: int, n: int
) -> None:
    """Every branch (the AVX-512 kernel for small row-major products, oneDNN, ATen), at the recurrence's
    per-step sizes and at odd ones (N not a multiple of 16, M not of 6)."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(k, m, generator=g).t() if transposed else torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    start = torch.randn(m, n, generator=g)
    out = products.matmul_into(a, b, start.clone(), accumulate=accumulate)
    exact = (start.double() if accumulate else 0) + a.double() @ b.double()
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m, k, n", [(512, 32, 32), (64, 64, 32)])
def test_small_products_of_a_transposed_matrix_are_atens(m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(3)
    a, b, start = torch.randn(k, m, generator=g).t(), torch.randn(k, n, generator=g), torch.randn(m, n, generator=g)
    assert torch.equal(products.matmul_into(a, b, start.clone(), accumulate=True), start.clone().addmm_(a, b))


def test_without_the_extension_linear_is_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "loaded_native", lambda: None)
    x, weight, bias = torch.randn(4, 3, 5, requires_grad=True), torch.randn(6, 5), torch.randn(6)
    out = products.linear(x, weight, bias)
    assert torch.equal(out, F.linear(x, weight, bias))
    assert "Linear" not in type(out.grad_fn).__name__
    plain = torch.addmm(bias[:, None], weight, x[0].t())  # W x^T + b, as ATen forms it
    assert torch.equal(products.linear_feature_major(x[0], weight, bias), plain)
