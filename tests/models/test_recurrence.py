"""The hand-written backward pass of the plain recurrence, piece by piece and whole.

The model-level tests (test_zforcing.py, test_speed_equivalence.py) compare the fast path with
the step-by-step reference; these check the derivatives directly: each pointwise backward
against autograd of its forward (including at the kinks of the clipped leaky ReLU and the
clamps), and the whole recurrence with ``gradcheck`` in double precision.
"""

from __future__ import annotations

import pytest
import torch

from zf_lightning.models.layers import clipped_leaky_relu, lstm_pointwise
from zf_lightning.models.zforcing.recurrence import (
    act_into,
    clipped_leaky_relu_grad,
    lstm_backward_into,
    lstm_factors,
    lstm_into,
    plain_recurrence,
    posterior_factors,
    sample_into,
    sample_posterior,
    step_ops,
)


def _vjp(fn, inputs, grads):
    """Autograd's vector-Jacobian product of ``fn`` at ``inputs``."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)


def test_clipped_leaky_relu_backward_matches_autograd_also_at_the_kinks() -> None:
    slope, bound = 1.0 / 3.0, 3.0
    # 0 (leaky kink), ±bound on the positive side and -bound/slope = -9 on the negative side (clip kinks)
    pre = torch.tensor([[-12.0, -9.0, -1.0, 0.0, 0.5, 3.0, 4.0, 2.9999]], dtype=torch.float64)
    grad = torch.arange(1.0, 9.0, dtype=torch.float64)[None]
    (want,) = _vjp(lambda x: clipped_leaky_relu(x, slope, bound), [pre], [grad])
    got = grad * clipped_leaky_relu_grad(pre, slope, bound)
    torch.testing.assert_close(got, want)
    into = act_into(pre, slope, bound, torch.empty_like(pre))
    torch.testing.assert_close(into, clipped_leaky_relu(pre, slope, bound))
    assert got[0, 0] == 0 and got[0, 6] == 0  # clipped
    assert got[0, 3] == pytest.approx(grad[0, 3].item() * slope)  # at 0: the negative side's slope, as torch


@pytest.mark.parametrize("clamp", [None, 1.5])
def test_sample_posterior_backward_matches_autograd(clamp: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    raw = 2 * torch.randn(6, 5, generator=g, dtype=torch.float64)  # [2Z, B], some beyond the clamp
    raw[0, 0] = 1.5  # exactly at the clamp: torch passes the gradient there
    noise = torch.randn(3, 5, generator=g, dtype=torch.float64)
    grad_q = torch.randn(6, 5, generator=g, dtype=torch.float64)
    grad_z = torch.randn(3, 5, generator=g, dtype=torch.float64)
    want, _ = _vjp(lambda r, n: sample_posterior(r, n, clamp, 0), [raw, noise], [grad_q, grad_z])
    q, z = sample_posterior(raw, noise, clamp, 0)
    q_into = raw.clone() if clamp is None else torch.empty_like(raw)
    z_into = torch.empty_like(z)
    sample_into(q_into if clamp is None else raw, noise, clamp, q_into, z_into)
    torch.testing.assert_close((q_into, z_into), (q, z))
    # the factors for all steps at once ([T, ., B], here one step), then one step's gradient
    scale, rest = posterior_factors(q[None], raw[None], noise[None], clamp, grad_q[None])
    got = rest[0].view(2, 3, 5).addcmul_(scale[0].view(2, 3, 5), grad_z).view(6, 5)
    torch.testing.assert_close(got, want)
    scale, rest = posterior_factors(q[None], raw[None], noise[None], clamp, None)  # no gradient of q itself
    torch.testing.assert_close(rest[0].view(2, 3, 5).addcmul_(scale[0].view(2, 3, 5), grad_z).view(6, 5),
                               _vjp(lambda r, n: sample_posterior(r, n, clamp, 0), [raw, noise], [None, grad_z])[0])
    if clamp is not None:
        assert (raw.abs() > clamp).any()  # the clamp is exercised


def test_lstm_update_backward_matches_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    gates = torch.randn(12, 4, generator=g, dtype=torch.float64)
    c = torch.randn(3, 4, generator=g, dtype=torch.float64)
    grad_h = torch.randn(3, 4, generator=g, dtype=torch.float64)
    grad_c = torch.randn(3, 4, generator=g, dtype=torch.float64)
    # against autograd through the batch-major update the other models use
    want_gates, want_c = _vjp(lambda x, c0: lstm_pointwise(x, c0, 0), [gates, c], [grad_h, grad_c])
    acts, c_new, tanh_c, h = torch.empty_like(gates), torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)
    lstm_into(gates, c, acts, c_new, tanh_c, h)
    torch.testing.assert_close((h, c_new), lstm_pointwise(gates, c, 0))
    torch.testing.assert_close(tanh_c, torch.tanh(c_new))
    # the factors for all steps at once ([T, ., B], here one step), then one step's backward
    gate_factors, dc_factor = lstm_factors(acts[None], c[None], tanh_c[None])
    got_gates, got_c = torch.empty_like(gates), grad_c.clone()
    lstm_backward_into(grad_h, got_c, gate_factors[0], dc_factor[0], acts[3:6], got_gates)
    torch.testing.assert_close(got_gates, want_gates)
    torch.testing.assert_close(got_c, want_c)


@pytest.mark.parametrize("clamp", [None, 0.8])
def test_whole_recurrence_passes_gradcheck(clamp: float | None) -> None:
    """Finite differences in float64 against the hand-written backward, every differentiable input."""
    g = torch.Generator().manual_seed(2)
    H, M, Z, T, B = 3, 4, 2, 4, 2

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    pre, w_h = rand(4 * H + M, T, B, scale=4.0), rand(4 * H + M, H, scale=0.7)
    w_post, b_post, w_z = rand(2 * Z, M), rand(2 * Z), rand(4 * H, Z, scale=0.7)
    noise = torch.randn(T, Z, B, generator=g, dtype=torch.float64)
    ops = step_ops(False)

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return plain_recurrence(*args[:1], noise, *args[1:], ops, 1.0 / 3.0, 3.0, clamp)

    assert torch.autograd.gradcheck(run, (pre, w_h, w_post, b_post, w_z))
    first_posterior_pre = pre[4 * H :, 0]  # h_0 = 0: the posterior's pre-activation at t = 0
    assert ((first_posterior_pre > 3) | (first_posterior_pre < -9)).any()  # the clip region is exercised
    if clamp is not None:  # the clamp is active somewhere, so its mask is tested
        _, _, q = run(pre, w_h, w_post, b_post, w_z)
        assert (q.abs() == clamp).any()


def test_outputs_without_a_gradient_count_as_zero() -> None:
    """Autograd passes None for an output nothing used; that must equal using it with weight 0."""
    g = torch.Generator().manual_seed(3)
    H, M, Z, T, B = 3, 4, 2, 3, 2
    shapes = ((4 * H + M, H), (2 * Z, M), (2 * Z,), (4 * H, Z))  # w_h, w_post, b_post, w_z
    weights = [torch.randn(*shape, generator=g).requires_grad_() for shape in shapes]
    pre = torch.randn(4 * H + M, T, B, generator=g, requires_grad=True)
    noise = torch.randn(T, Z, B, generator=g)

    def grads(zero_weight_for_z_and_q: bool) -> tuple[torch.Tensor, ...]:
        hs, z, q = plain_recurrence(pre, noise, *weights, step_ops(False), 1.0 / 3.0, 3.0, 8.0)
        loss = hs.sin().sum()
        if zero_weight_for_z_and_q:
            loss = loss + 0.0 * (z.sum() + q.sum())
        return torch.autograd.grad(loss, [pre, *weights])

    for got, want in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(got, want)
