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

from zf_lightning.models.distributions import gaussian_log_prob
from zf_lightning.types import InputKind


class OutputHead(nn.Module):
    """Base class: ``forward(h) -> params``; ``nll``, ``sample`` and ``mean`` read params."""

    accepts: ClassVar[tuple[InputKind, ...]] = ()

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.dim = dim

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

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__(in_features, dim)
        self.proj = nn.Linear(in_features, 2 * dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        mean, logvar = params.chunk(2, dim=-1)
        return -gaussian_log_prob(target, mean, logvar)

    def sample(self, params: Tensor) -> Tensor:
        mean, logvar = params.chunk(2, dim=-1)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def mean(self, params: Tensor) -> Tensor:
        return params.chunk(2, dim=-1)[0]


class BernoulliHead(OutputHead):
    """Independent Bernoulli pixels from logits."""

    accepts = ("binary",)

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__(in_features, dim)
        self.proj = nn.Linear(in_features, dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(params, target, reduction="none").sum(-1)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class CategoricalHead(OutputHead):
    """Softmax over a vocabulary; targets are int64 token ids ``[B, T]``."""

    accepts = ("tokens",)

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__(in_features, dim)
        self.proj = nn.Linear(in_features, dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        flat = F.cross_entropy(params.reshape(-1, params.shape[-1]), target.reshape(-1), reduction="none")
        return flat.view(target.shape)

    def sample(self, params: Tensor) -> Tensor:
        probs = torch.softmax(params, dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(params.shape[:-1])

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(dim=-1)
