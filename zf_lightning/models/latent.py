"""What every model with per-step Gaussian latents shares (VRNN, SRNN, Z-Forcing): the noise
of one posterior path, the path itself, and the KL / log-density terms it contributes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from zf_lightning.models.common import mask_terms
from zf_lightning.models.distributions import _LOG_2PI, gaussian_kl, gaussian_nll
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
    native = _native(path, mask)
    if native is None:
        terms = StepTerms.with_zeros(
            nll=nll,
            kl=gaussian_kl(path.mean_q, path.logvar_q, path.mean_p, path.logvar_p),
            log_p_z=-gaussian_nll(path.z, path.mean_p, path.logvar_p),
            log_q_z=-gaussian_nll(path.z, path.mean_q, path.logvar_q),
            **extra,
        )
        return mask_terms(terms, mask)
    kl, log_p_z, log_q_z = _LatentDensities.apply(
        path.z, path.mean_q, path.logvar_q, path.mean_p, path.logvar_p, mask.to(path.z.dtype), native
    )
    keep = mask > 0
    given = {name: torch.where(keep, term, 0.0) for name, term in {"nll": nll, **extra}.items()}
    return StepTerms.with_zeros(kl=kl, log_p_z=log_p_z, log_q_z=log_q_z, **given)


def _native(path: LatentPath, mask: Tensor):  # type: ignore[no-untyped-def]
    """The loaded C++ extension where its latent-terms kernels apply ([B, T, Z] CPU float or double,
    one dtype, unit stride along Z, no autocast), else None."""
    z = path.z
    tensors = (z, path.mean_q, path.logvar_q, path.mean_p, path.logvar_p)
    if z.device.type != "cpu" or z.dim() != 3 or z.dtype not in (torch.float32, torch.float64):
        return None
    if torch.is_autocast_enabled("cpu") or mask.shape != z.shape[:2]:
        return None
    if any(t.dtype != z.dtype or t.shape != z.shape or t.stride(-1) != 1 for t in tensors):
        return None
    from zf_lightning.models.zforcing.native import loaded_native

    return loaded_native()


class _LatentDensities(torch.autograd.Function):
    """KL(q || p), log p(z) and log q(z) per step, zero where ``mask`` is not positive, by the C++
    extension's one-pass kernels: ``gaussian_kl``'s and ``-gaussian_nll``'s values within rounding
    (e^(lvq - lvp) is formed as e^-lvp / e^-lvq), gradients written out:
    d mq = gk (mq - mp) e^-lvp + gq (z - mq) e^-lvq, d mp = gp (z - mp) e^-lvp - gk (mq - mp) e^-lvp,
    d lvp = gk/2 (1 - e^(lvq - lvp) - (mq - mp)^2 e^-lvp) - gp/2 (1 - (z - mp)^2 e^-lvp),
    d lvq = gk/2 (e^(lvq - lvp) - 1) - gq/2 (1 - (z - mq)^2 e^-lvq),
    d z = -gp (z - mp) e^-lvp - gq (z - mq) e^-lvq."""

    @staticmethod
    def forward(ctx, z, mean_q, logvar_q, mean_p, logvar_p, mask, native):  # type: ignore[no-untyped-def,override]
        inv_q, inv_p = z.new_empty(z.shape), z.new_empty(z.shape)
        kl, log_p, log_q = (z.new_empty(z.shape[:2]) for _ in range(3))
        native.latent_forward(z, mean_q, logvar_q, mean_p, logvar_p, mask, inv_q, inv_p, kl, log_p, log_q, _LOG_2PI)
        ctx.save_for_backward(z, mean_q, mean_p, mask, inv_q, inv_p)
        ctx.native = native
        ctx.set_materialize_grads(False)
        return kl, log_p, log_q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_kl, d_log_p, d_log_q):  # type: ignore[no-untyped-def,override]
        z, mean_q, mean_p, mask, inv_q, inv_p = ctx.saved_tensors
        d_mq, d_lvq, d_mp, d_lvp = (z.new_empty(z.shape) for _ in range(4))
        with_z = ctx.needs_input_grad[0] and (d_log_p is not None or d_log_q is not None)
        d_z = z.new_empty(z.shape) if with_z else None
        ctx.native.latent_backward(
            d_kl, d_log_p, d_log_q, z, mean_q, mean_p, mask, inv_q, inv_p, d_mq, d_lvq, d_mp, d_lvp, d_z
        )
        return d_z, d_mq, d_lvq, d_mp, d_lvp, None, None
