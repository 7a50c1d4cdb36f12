"""The C++ post-loop terms against the plain expressions, and their hand-written backward against
autograd (``gradcheck`` in float64): the latent terms (``latent._LatentDensities``: KL, log p(z),
log q(z) and their masks in one node) and the auxiliary cost (``distributions._TanhGaussianNLL``:
clamp, tanh and Gaussian NLL in one node)."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_native_loop import needs_build
from zf_lightning.models.common import mask_terms
from zf_lightning.models.distributions import (
    _tanh_gaussian_nll_plain,
    _TanhGaussianNLL,
    gaussian_kl,
    gaussian_nll,
    tanh_gaussian_nll,
)
from zf_lightning.models.latent import LatentPath, _LatentDensities, latent_terms
from zf_lightning.models.zforcing import native
from zf_lightning.types import StepTerms

pytestmark = [needs_build, pytest.mark.native]


@pytest.fixture(scope="module")
def ops() -> object:
    loops = native.native_loops()
    assert loops is not None, "the native extension did not build (see the log)"
    return loops


def _path(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """z, [mean_q; logvar_q], [mean_p; logvar_p] as [3, 5, 2Z] leaves (the layout the model's heads give)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    q = torch.randn(3, 5, 8, generator=g, dtype=dtype, requires_grad=True)
    p = torch.randn(3, 5, 8, generator=g, dtype=dtype, requires_grad=True)
    return z, q, p


MASK = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def test_latent_terms_pass_gradcheck(ops: object) -> None:
    z, q, p = _path(torch.float64)

    def run(z: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _LatentDensities.apply(z, *q.chunk(2, -1), *p.chunk(2, -1), MASK.double(), ops)

    assert torch.autograd.gradcheck(run, (z, q, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_latent_terms_equal_the_plain_expressions(ops: object, dtype: torch.dtype) -> None:
    z, q, p = _path(dtype, seed=1)
    with torch.no_grad():  # NaN on a padded step must not reach the terms or any gradient
        p[2, 3, 1] = float("nan")
    path = LatentPath(z, z, *p.chunk(2, -1), *q.chunk(2, -1))
    nll = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    fused = latent_terms(path, nll, MASK)
    plain = mask_terms(
        StepTerms.with_zeros(
            nll=nll,
            kl=gaussian_kl(path.mean_q, path.logvar_q, path.mean_p, path.logvar_p),
            log_p_z=-gaussian_nll(path.z, path.mean_p, path.logvar_p),
            log_q_z=-gaussian_nll(path.z, path.mean_q, path.logvar_q),
        ),
        MASK,
    )
    assert "LatentDensities" in type(fused.kl.grad_fn).__name__
    weights = {"nll": 1.0, "kl": 0.3, "aux": 0.0, "bwd": 0.0, "log_p_z": -0.5, "log_q_z": 0.7}
    losses = []
    for terms in (fused, plain):
        for name in weights:
            torch.testing.assert_close(getattr(terms, name), getattr(plain, name))
        losses.append(sum(w * getattr(terms, name).sum() for name, w in weights.items()))
    for a, b in zip(
        torch.autograd.grad(losses[0], (z, q, p, nll)), torch.autograd.grad(losses[1], (z, q, p, nll)), strict=True
    ):
        assert torch.isfinite(a).all()  # where autograd's chain meets the NaN (0 * exp(NaN)), the fused node gives 0
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite])
        assert (a[~finite] == 0).all()


def test_latent_terms_without_log_density_gradients_leave_z_alone(ops: object) -> None:
    z, q, p = _path(torch.float64, seed=2)
    kl, _, _ = _LatentDensities.apply(z, *q.chunk(2, -1), *p.chunk(2, -1), MASK.double(), ops)
    d_z, d_q = torch.autograd.grad(kl.sum(), (z, q), allow_unused=True)
    assert d_z is None  # the KL reads mean and variance only; z's gradient comes from log p(z), log q(z)
    assert d_q is not None


@pytest.mark.parametrize("clamp", [None, 1.5])
def test_tanh_gaussian_nll_passes_gradcheck(ops: object, clamp: float | None) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    params = (2 * torch.randn(3, 5, 9, generator=g, dtype=torch.float64))[..., 1:].requires_grad_()  # strided rows

    def run(params: torch.Tensor) -> torch.Tensor:
        return _TanhGaussianNLL.apply(x, params, clamp, ops)

    assert torch.autograd.gradcheck(run, (params,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_gaussian_nll_equals_the_plain_expressions(ops: object, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 16, generator=g, dtype=dtype)
    params = (4 * torch.randn(4, 6, 32, generator=g, dtype=dtype)).requires_grad_()  # some beyond the clamp
    grad = torch.randn(4, 6, generator=g, dtype=dtype)
    fused, plain = tanh_gaussian_nll(x, params, 3.0), _tanh_gaussian_nll_plain(x, params, 3.0)
    assert "TanhGaussianNLL" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, plain)
    (d_fused,) = torch.autograd.grad(fused, params, grad)
    (d_plain,) = torch.autograd.grad(plain, params, grad)
    torch.testing.assert_close(d_fused, d_plain)
    assert (d_fused[params.abs() > 3.0] == 0).all()
