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
@pytest.mark.parametrize("m, k, n", [(576, 128, 32), (128, 576, 32), (512, 32, 32), (64, 64, 32)])
def test_matmul_into_is_atens_product_or_within_float32_rounding_of_it(
    accumulate: bool, m: int, k: int, n: int
) -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(k, m, generator=g).t(), torch.randn(k, n, generator=g)  # a transposed view, as in the backward
    start = torch.randn(m, n, generator=g)
    out = products.matmul_into(a, b, start.clone(), accumulate=accumulate)
    aten = start.clone().addmm_(a, b) if accumulate else a @ b
    if m * k * n < 2**20:  # ATen's own product
        assert torch.equal(out, aten)
    else:
        torch.testing.assert_close(out, aten, rtol=1e-5, atol=1e-4)


def test_without_the_extension_linear_is_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "loaded_native", lambda: None)
    x, weight, bias = torch.randn(4, 3, 5, requires_grad=True), torch.randn(6, 5), torch.randn(6)
    out = products.linear(x, weight, bias)
    assert torch.equal(out, F.linear(x, weight, bias))
    assert "Linear" not in type(out.grad_fn).__name__
    assert torch.equal(products.linear_feature_major(x[0], weight, bias), F.linear(x[0], weight, bias).t())
