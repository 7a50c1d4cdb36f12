"""ELBO / IWAE estimators on a toy latent model whose exact marginal likelihood is known.

Toy model, independent over steps: z_t ~ N(0, I), x_t | z_t ~ N(W z_t + c, s^2 I), so
x_t ~ N(c, W W^T + s^2 I) and the exact posterior is Gaussian. The proposal q(z_t | x_t)
is the exact posterior, the prior, or a deliberately wrong Gaussian (shifted mean, wider).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from zf_lightning.evaluation.estimators import (
    elbo_from_terms,
    iwae_bound,
    log_weights,
    repeat_batch,
    standard_error,
)
from zf_lightning.types import LatentVariableModel, SequenceBatch, StepTerms

DTYPE = torch.float64


class ToyLatentModel(nn.Module, LatentVariableModel):
    """Linear-Gaussian latent model following the ``forward(batch, noise=None) -> StepTerms`` contract."""

    def __init__(self, proposal: str, obs_dim: int = 2, z_dim: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.z_dim = z_dim
        self.weight = nn.Parameter(0.8 * torch.randn(obs_dim, z_dim, generator=gen, dtype=DTYPE))
        self.bias = nn.Parameter(torch.randn(obs_dim, generator=gen, dtype=DTYPE))
        self.obs_std = 0.8
        self.proposal = proposal
        self.dropout = nn.Dropout(0.5)  # must be inactive while estimating
        self.requires_grad_(False)  # fixed toy parameters: no autograd graphs in the tests

    def exact_log_likelihood(self, batch: SequenceBatch) -> Tensor:
        cov = self.weight @ self.weight.T + self.obs_std**2 * torch.eye(self.weight.shape[0], dtype=DTYPE)
        per_step = MultivariateNormal(self.bias, covariance_matrix=cov).log_prob(batch.targets)
        return (per_step * batch.mask).sum(dim=1)

    def _proposal(self, x: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.z_dim, dtype=DTYPE)
        post_cov = torch.linalg.inv(eye + self.weight.T @ self.weight / self.obs_std**2)
        post_mean = (x - self.bias) @ self.weight @ post_cov.T / self.obs_std**2
        post_chol = torch.linalg.cholesky(post_cov)
        if self.proposal == "exact":
            return post_mean, post_chol
        if self.proposal == "prior":
            return torch.zeros_like(post_mean), eye
        if self.proposal == "wrong":
            return 0.5 * post_mean + 0.3, 1.6 * post_chol
        raise ValueError(self.proposal)

    def forward(self, batch: SequenceBatch, noise: Tensor | None = None) -> StepTerms:
        x = self.dropout(batch.targets)
        mean, chol = self._proposal(x)
        if noise is None:
            noise = torch.randn(*x.shape[:2], self.z_dim, dtype=DTYPE)
        z = mean + noise @ chol.T
        q = MultivariateNormal(mean, scale_tril=chol.expand(*mean.shape, self.z_dim))
        p = MultivariateNormal(
            torch.zeros_like(mean), scale_tril=torch.eye(self.z_dim, dtype=DTYPE).expand_as(q.scale_tril)
        )
        nll = -Normal(z @ self.weight.T + self.bias, self.obs_std).log_prob(x).sum(-1)
        return StepTerms.with_zeros(nll, kl=kl_divergence(q, p), log_p_z=p.log_prob(z), log_q_z=q.log_prob(z))


class ToyDeterministicModel(nn.Module):
    """No latents (not a ``LatentVariableModel``): every importance weight is the plain likelihood."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([0.3, -0.2], dtype=DTYPE))

    def forward(self, batch: SequenceBatch) -> StepTerms:
        return StepTerms.with_zeros(-Normal(self.loc, 1.0).log_prob(batch.targets).sum(-1))


def _batch() -> SequenceBatch:
    gen = torch.Generator().manual_seed(7)
    targets = torch.randn(3, 4, 2, generator=gen, dtype=DTYPE) + 0.5
    mask = torch.ones(3, 4, dtype=DTYPE)
    mask[1, 2:] = 0.0  # a shorter sequence: padded steps must not count
    targets[1, 2:] = 100.0  # garbage under the padding would dominate if counted
    inputs = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
    return SequenceBatch(inputs=inputs, targets=targets, mask=mask, labels=torch.tensor([0, 1, 2]))


def test_iwae_bound_and_standard_error_values() -> None:
    log_w = torch.tensor([[0.0, math.log(3.0)], [-2.0, -2.0]])
    torch.testing.assert_close(iwae_bound(log_w), torch.tensor([math.log(2.0), -2.0]))
    torch.testing.assert_close(iwae_bound(torch.tensor([[-5.0]])), torch.tensor([-5.0]))
    # Large weights: no overflow.
    torch.testing.assert_close(iwae_bound(torch.tensor([[1000.0, 1000.0]])), torch.tensor([1000.0]))
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5.0 / 3.0) / 2.0)
    assert math.isnan(standard_error([1.0]))
    with pytest.raises(ValueError):
        iwae_bound(torch.zeros(3))


def test_repeat_batch_keeps_copies_of_a_sequence_adjacent() -> None:
    batch = _batch()
    rep = repeat_batch(batch, 3)
    assert rep.inputs.shape == (9, 4, 2) and rep.mask.shape == (9, 4)
    assert rep.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(rep.targets[3:6], batch.targets[1:2].expand(3, -1, -1))


def test_exact_posterior_gives_exact_weights() -> None:
    """With q = p(z | x) every weight equals p(x): checks the weight formula and the masking."""
    model, batch = ToyLatentModel("exact"), _batch()
    exact = model.exact_log_likelihood(batch)
    log_w = log_weights(model, batch, num_samples=5, seed=1)
    assert log_w.shape == (3, 5) and not log_w.requires_grad
    torch.testing.assert_close(log_w, exact[:, None].expand(-1, 5), rtol=0, atol=1e-9)
    torch.testing.assert_close(iwae_bound(log_w), exact, rtol=0, atol=1e-9)
    # The ELBO is tight too, in expectation over z (a single z gives log p(x | z) - KL).
    torch.manual_seed(0)
    many = repeat_batch(batch, 400)
    elbos = elbo_from_terms(model.eval()(many), many.mask).reshape(3, 400)
    for b in range(3):
        assert abs(float(elbos[b].mean() - exact[b])) < 4 * standard_error(elbos[b])


def test_chunked_equals_unchunked() -> None:
    model, batch = ToyLatentModel("wrong"), _batch()
    whole = log_weights(model, batch, num_samples=10, seed=3)
    for chunk in (1, 3, 4, 10, 64):
        torch.testing.assert_close(
            log_weights(model, batch, 10, chunk_size=chunk, seed=3), whole, rtol=0, atol=1e-10
        )
    # Samples differ from each other (fresh noise per k and per sequence).
    assert whole.std(dim=1).min() > 1e-3


def test_reproducible_with_seed_and_independent_of_global_rng() -> None:
    model, batch = ToyLatentModel("wrong"), _batch()
    torch.manual_seed(0)
    first = log_weights(model, batch, 6, chunk_size=4, seed=(11, 2))
    torch.manual_seed(123)
    torch.randn(10)
    again = log_weights(model, batch, 6, chunk_size=4, seed=(11, 2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, log_weights(model, batch, 6, chunk_size=4, seed=(11, 3)))
    # A longer run extends a shorter one: sample k does not depend on K.
    torch.testing.assert_close(log_weights(model, batch, 9, seed=(11, 2))[:, :6], first, rtol=0, atol=1e-10)


def test_model_mode_restored_and_dropout_off() -> None:
    model, batch = ToyLatentModel("exact"), _batch()
    model.train()
    log_w = log_weights(model, batch, 3)
    assert model.training
    # With dropout active the exact posterior would not give exact weights.
    torch.testing.assert_close(log_w[:, 0], model.exact_log_likelihood(batch), rtol=0, atol=1e-9)


def _group_totals(log_w: Tensor, k: int) -> Tensor:
    """IWAE_k of the whole batch (summed over sequences) for each disjoint group of k samples."""
    b, total = log_w.shape
    groups = log_w[:, : total // k * k].reshape(b, total // k, k)
    return (torch.logsumexp(groups, dim=2) - math.log(k)).sum(dim=0)


def test_bounds_are_ordered_elbo_iwae_exact() -> None:
    """E[ELBO] <= E[IWAE_1] <= E[IWAE_10] <= E[IWAE_100] <= log p(x), beyond Monte Carlo error."""
    model, batch = ToyLatentModel("wrong").eval(), _batch()
    exact = float(model.exact_log_likelihood(batch).sum().detach())
    log_w = log_weights(model, batch, num_samples=6000, chunk_size=2000, seed=5)
    torch.manual_seed(5)
    many = repeat_batch(batch, 300)
    elbo_draws = elbo_from_terms(model(many), many.mask).reshape(3, 300).sum(dim=0)
    elbo, elbo_se = float(elbo_draws.mean()), standard_error(elbo_draws)
    stats = {k: _group_totals(log_w, k) for k in (1, 10, 100)}
    mean = {k: float(v.mean()) for k, v in stats.items()}
    se = {k: standard_error(v) for k, v in stats.items()}
    # Analytic-KL ELBO and the single-sample IWAE estimate the same bound.
    assert abs(elbo - mean[1]) < 4 * math.hypot(elbo_se, se[1])
    assert exact - mean[1] > 1.0  # the wrong proposal leaves a real gap to close
    for lo, hi in ((1, 10), (10, 100)):
        assert mean[hi] - mean[lo] > 4 * math.hypot(se[lo], se[hi])
    assert mean[100] < exact + 3 * se[100]
    # Per sequence, IWAE_6000 is below the truth up to its Monte Carlo error (delta method:
    # the standard error of log mean(w) is that of w / mean(w)).
    full = iwae_bound(log_w)
    for b in range(3):
        full_se = standard_error(torch.exp(log_w[b] - full[b]))
        assert full[b] < model.exact_log_likelihood(batch)[b] + 4 * full_se
        assert full_se < 0.1
    assert float(full.sum()) > mean[100] - 4 * se[100]


@pytest.mark.parametrize("proposal", ["prior", "wrong"])
def test_iwae_likelihood_estimate_is_unbiased(proposal: str) -> None:
    """exp(IWAE_K) estimates p(x) without bias; tested as mean of exp(IWAE_K - log p(x)) = 1."""
    model, batch = ToyLatentModel(proposal), _batch()
    exact = model.exact_log_likelihood(batch)
    k = 5
    log_w = log_weights(model, batch, num_samples=2500 * k, chunk_size=5000, seed=9)
    ratios = torch.exp(iwae_bound(log_w.reshape(3 * 2500, k)).reshape(3, 2500) - exact[:, None])
    for b in range(3):
        assert abs(float(ratios[b].mean()) - 1.0) < 4 * standard_error(ratios[b])
        assert standard_error(ratios[b]) < 0.1  # the check is sharp enough to catch a bias
    # In log space the same estimates are biased low (Jensen), as a bound should be.
    assert float(torch.log(ratios).mean()) < 0


def test_deterministic_model_weights_are_its_likelihood() -> None:
    model, batch = ToyDeterministicModel(), _batch()
    log_w = log_weights(model, batch, num_samples=4, chunk_size=3)
    expected = -(model(batch).nll * batch.mask).sum(dim=1)
    torch.testing.assert_close(log_w, expected[:, None].expand(-1, 4))
    torch.testing.assert_close(iwae_bound(log_w), expected)


def test_invalid_arguments() -> None:
    model, batch = ToyLatentModel("prior"), _batch()
    with pytest.raises(ValueError, match="num_samples"):
        log_weights(model, batch, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        log_weights(model, batch, 2, chunk_size=0)
