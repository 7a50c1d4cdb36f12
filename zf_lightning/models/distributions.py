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
