"""Output distributions p(x_t | h) shared by every model.

A head is built by the model from a factory (``head(in_features, dim)``, a Hydra
``_partial_``), owns its projection, and scores targets with ``nll`` summed over the
frame's dimensions, so every model reports nats in the same units.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.distributions import gaussian_log_prob, gaussian_nll_params
from zf_lightning.types import DataSpec, InputKind


class OutputHead(nn.Module):
    """Base class: ``forward(h) -> params`` is one linear projection of ``num_params(dim)``
    outputs; subclasses say how ``nll``, ``sample`` and ``mean`` read them."""

    accepts: ClassVar[tuple[InputKind, ...]] = ()

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.dim = dim
        self.proj = nn.Linear(in_features, self.num_params(dim))

    def num_params(self, dim: int) -> int:
        """Distribution parameters per step (one logit per dimension by default)."""
        return dim

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class HeadFactory(Protocol):
    def __call__(self, in_features: int, dim: int) -> OutputHead: ...


class GaussianHead(OutputHead):
    """Diagonal Gaussian over real frames: Linear to (mean, log-variance), no clamp (as the authors)."""

    accepts = ("real",)

    def num_params(self, dim: int) -> int:
        return 2 * dim  # mean, log-variance

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        return gaussian_nll_params(target, params)

    def sample(self, params: Tensor) -> Tensor:
        mean, logvar = params.chunk(2, dim=-1)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def mean(self, params: Tensor) -> Tensor:
        return params.chunk(2, dim=-1)[0]


class BernoulliHead(OutputHead):
    """Independent Bernoulli pixels from logits."""

    accepts = ("binary",)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(params, target, reduction="none").sum(-1)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class CategoricalHead(OutputHead):
    """Softmax over a vocabulary; targets are int64 token ids ``[B, T]``."""

    accepts = ("tokens",)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        flat = F.cross_entropy(params.reshape(-1, params.shape[-1]), target.reshape(-1), reduction="none")
        return flat.view(target.shape)

    def sample(self, params: Tensor) -> Tensor:
        probs = torch.softmax(params, dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(params.shape[:-1])

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(dim=-1)


class GMMHead(OutputHead):
    """Mixture of ``components`` diagonal Gaussians over real frames (RNN-GMM, VRNN-GMM).

    Params are laid out ``[logits (K) | means (K*D) | log-variances (K*D)]``; weights are a
    softmax of the logits and the density is combined with ``logsumexp``, so it stays finite
    where single components underflow. With K=1 it is exactly ``GaussianHead`` (the logit
    drops out of the log-softmax).
    """

    accepts = ("real",)

    def __init__(self, in_features: int, dim: int, components: int = 20) -> None:
        if components < 1:
            raise ValueError(f"GMMHead needs at least one component, got {components}")
        self.components = components  # before the base class sizes the projection
        super().__init__(in_features, dim)

    def num_params(self, dim: int) -> int:
        return self.components * (1 + 2 * dim)

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-weights [..., K], means [..., K, D], log-variances [..., K, D])."""
        K, D = self.components, self.dim
        logits, means, logvars = params.split([K, K * D, K * D], dim=-1)
        shape = (*params.shape[:-1], K, D)
        return torch.log_softmax(logits, dim=-1), means.reshape(shape), logvars.reshape(shape)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        log_w, means, logvars = self.split(params)
        per_component = gaussian_log_prob(target.unsqueeze(-2), means, logvars)
        return -torch.logsumexp(log_w + per_component, dim=-1)

    def sample(self, params: Tensor) -> Tensor:
        log_w, means, logvars = self.split(params)
        pick = torch.distributions.Categorical(logits=log_w).sample()
        index = pick[..., None, None].expand(*pick.shape, 1, self.dim)
        mean = means.gather(-2, index).squeeze(-2)
        logvar = logvars.gather(-2, index).squeeze(-2)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def mean(self, params: Tensor) -> Tensor:
        log_w, means, _ = self.split(params)
        return (log_w.exp().unsqueeze(-1) * means).sum(-2)


# The plain head of each kind of data, in the order a head is looked up for a kind (each declares
# the kinds it models in ``accepts``).
PLAIN_HEADS: tuple[type[OutputHead], ...] = (CategoricalHead, BernoulliHead, GaussianHead)


def natural_head(kind: InputKind) -> HeadFactory:
    """The plain head that models data of this kind: what a model uses to predict its *inputs*
    when the configured head scores labels (Z-Forcing's backward cost on MNIST-digit sets, whose
    labels are classes or a real-valued sum)."""
    return next(head for head in PLAIN_HEADS if kind in head.accepts)


def label_nll(head: OutputHead, params: Tensor, targets: Tensor, spec: DataSpec) -> Tensor:
    """``head.nll`` where a regression label's unlabelled steps (``IGNORE_VALUE``, NaN) score 0,
    with NaN kept out of the gradients. Only for ``spec.regression``: a NaN anywhere else is bad
    data and must make the loss non-finite (the objective's guard names it)."""
    if not spec.regression:
        return head.nll(params, targets)
    missing = torch.isnan(targets)
    nll = head.nll(params, torch.where(missing, 0.0, targets))
    return torch.where(missing.any(-1), 0.0, nll)
