"""The Gaussian-mixture output head: exact mixture density, K=1 = Gaussian, stable far tails, sampling."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D

from zf_lightning.models import GaussianHead, GMMHead
from zf_lightning.models.common import check_head
from zf_lightning.models.distributions import gaussian_log_prob
from zf_lightning.types import DataSpec


def mixture(head: GMMHead, params: torch.Tensor) -> D.MixtureSameFamily:
    """The same mixture built from torch.distributions, as an independent reference."""
    K, dim = head.components, head.dim
    logits, means, logvars = params.split([K, K * dim, K * dim], dim=-1)
    shape = (*params.shape[:-1], K, dim)
    comp = D.Independent(D.Normal(means.reshape(shape), (0.5 * logvars.reshape(shape)).exp()), 1)
    return D.MixtureSameFamily(D.Categorical(logits=logits), comp)


def test_nll_is_the_mixture_negative_log_likelihood() -> None:
    torch.manual_seed(0)
    head = GMMHead(8, 4, components=3)
    params = head(torch.randn(2, 5, 8))
    target = torch.randn(2, 5, 4)
    nll = head.nll(params, target)
    assert nll.shape == (2, 5)
    torch.testing.assert_close(nll, -mixture(head, params).log_prob(target))


def test_one_component_equals_the_gaussian_head_with_copied_weights() -> None:
    torch.manual_seed(1)
    gauss = GaussianHead(6, 3)
    gmm = GMMHead(6, 3, components=1)
    with torch.no_grad():
        gmm.proj.weight[1:] = gauss.proj.weight
        gmm.proj.bias[1:] = gauss.proj.bias
        gmm.proj.weight[0].normal_()  # the single logit must not matter
        gmm.proj.bias[0] = 5.0
    h, target = torch.randn(4, 7, 6), torch.randn(4, 7, 3)
    torch.testing.assert_close(gmm.nll(gmm(h), target), gauss.nll(gauss(h), target))
    torch.testing.assert_close(gmm.mean(gmm(h)), gauss.mean(gauss(h)))


def test_far_target_with_narrow_components_stays_finite() -> None:
    """Each component's density underflows to 0 in float32; the log-sum-exp must not."""
    head = GMMHead(1, 2, components=3)
    K, dim = 3, 2
    logits = torch.zeros(K)
    means = torch.tensor([0.0, 1.0, 2.0]).repeat_interleave(dim)
    logvars = torch.full((K * dim,), -10.0)
    params = torch.cat([logits, means, logvars]).unsqueeze(0)
    target = torch.full((1, dim), 30.0)
    component_log_density = gaussian_log_prob(target.unsqueeze(-2), means.view(K, dim), logvars.view(K, dim))
    naive = -torch.log((torch.softmax(logits, -1) * component_log_density.exp()).sum(-1))
    assert torch.isinf(naive).all()  # the naive mixture density underflows here
    nll = head.nll(params, target)
    assert torch.isfinite(nll).all() and float(nll) > 1e5
    torch.testing.assert_close(nll, -mixture(head, params).log_prob(target))


def test_samples_follow_the_weights_and_the_mean_is_their_average() -> None:
    head = GMMHead(1, 1, components=2)
    logits = torch.tensor([0.0, 1.0986123])  # weights 1/4, 3/4
    means = torch.tensor([-10.0, 10.0])
    logvars = torch.full((2,), -6.0)
    params = torch.cat([logits, means, logvars]).expand(4000, -1)
    torch.manual_seed(2)
    x = head.sample(params)
    assert x.shape == (4000, 1)
    high = (x > 0).float().mean().item()
    assert high == pytest.approx(0.75, abs=0.03)
    assert (x[x > 0] - 10.0).abs().max() < 0.5 and (x[x < 0] + 10.0).abs().max() < 0.5
    torch.testing.assert_close(head.mean(params[:1]), torch.tensor([[0.25 * -10.0 + 0.75 * 10.0]]))


def test_gmm_scores_real_frames_only() -> None:
    check_head(GMMHead(4, 3), DataSpec("real", 3, "sequence", 3))
    with pytest.raises(ValueError, match="output=bernoulli"):
        check_head(GMMHead(4, 3), DataSpec("binary", 3, "image", 3))
    with pytest.raises(ValueError, match="at least one component"):
        GMMHead(4, 3, components=0)
