"""What every model with per-step Gaussian latents shares (VRNN, SRNN, Z-Forcing): the noise
of one posterior path, the path itself, and the KL / log-density terms it contributes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from zf_lightning.models.common import mask_terms
from zf_lightning.models.distributions import gaussian_kl, gaussian_nll
from zf_lightning.types import StepTerms


def latent_noise(noise: Tensor | None, like: Tensor, z_dim: int) -> Tensor:
    """N(0, I) noise [B, T, z_dim] for one posterior path: fresh, or the caller's after a shape check."""
    B, T = like.shape[:2]
    if noise is None:
        return torch.randn(B, T, z_dim, device=like.device)
    if noise.shape != (B, T, z_dim):
        raise ValueError(f"noise must have shape {(B, T, z_dim)}, got {tuple(noise.shape)}")
    return noise


class LatentPath(NamedTuple):
    """One path z_{1:T} ~ q with the distributions that scored it, all [B, T, ...].

    ``states`` is the deterministic state the emission reads with z_t (VRNN: h_{t-1}; SRNN: d_t).
    """

    states: Tensor
    z: Tensor
    mean_p: Tensor
    logvar_p: Tensor
    mean_q: Tensor
    logvar_q: Tensor


def latent_terms(path: LatentPath, nll: Tensor, mask: Tensor, **extra: Tensor) -> StepTerms:
    """StepTerms of a latent model: its nll with the path's KL and log-densities (and any
    ``extra`` terms such as Z-Forcing's ``aux`` and ``bwd``), zero on padding."""
    terms = StepTerms.with_zeros(
        nll=nll,
        kl=gaussian_kl(path.mean_q, path.logvar_q, path.mean_p, path.logvar_p),
        log_p_z=-gaussian_nll(path.z, path.mean_p, path.logvar_p),
        log_q_z=-gaussian_nll(path.z, path.mean_q, path.logvar_q),
        **extra,
    )
    return mask_terms(terms, mask)
