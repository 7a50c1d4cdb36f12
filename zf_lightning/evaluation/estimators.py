"""Likelihood bounds from the ``StepTerms`` contract: ELBO and importance-sampled (IWAE) bounds.

One forward pass of a latent model draws one path z_1:T ~ q and returns per-step terms;
its log importance weight per sequence is

    log w = log p(x, z) - log q(z | x) = -sum_t nll_t + sum_t (log_p_z_t - log_q_z_t)

(summed over real steps). ``iwae_bound`` turns K weights into log (1/K) sum_k w_k, a lower
bound on log p(x) that tightens with K and whose exponent is an unbiased estimate of p(x).

Reproducibility: sample k of a batch always uses the noise from a generator seeded by
(seed, k), so results do not depend on how the K samples are split into chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch
from torch import Tensor, nn

from zf_lightning.types import LatentVariableModel, SequenceBatch, StepTerms


def log_weights_from_terms(terms: StepTerms, mask: Tensor) -> Tensor:
    """log p(x, z) - log q(z | x) per sequence for the sampled path: [B]."""
    return ((-terms.nll + terms.log_p_z - terms.log_q_z) * mask).sum(dim=1)


def elbo_from_terms(terms: StepTerms, mask: Tensor) -> Tensor:
    """ELBO per sequence with KL weight 1 and no auxiliary costs: -sum_t mask * (nll + kl), [B].

    Uses the model's (analytic) KL, so it has less variance than the mean of ``log_w``;
    both estimate the same bound.
    """
    return (-(terms.nll + terms.kl) * mask).sum(dim=1)


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/K) sum_k exp(log_w[:, k]) for ``log_w`` [B, K] -> [B] (K=1: the sampled ELBO)."""
    if log_w.dim() != 2 or log_w.shape[1] < 1:
        raise ValueError(f"log_w must be [B, K] with K >= 1, got {tuple(log_w.shape)}")
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


def standard_error(values: Tensor | Sequence[float]) -> float:
    """Standard error of the mean, std (ddof=1) / sqrt(n); NaN when n < 2 (undefined)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        return float("nan")
    return float(v.std(unbiased=True) / math.sqrt(v.numel()))


def ratio_standard_error(values: Tensor | Sequence[float], counts: Tensor | Sequence[float]) -> float:
    """Standard error of the ratio sum(values) / sum(counts) over n independent units.

    The delta-method (ratio-estimator) error sqrt(sum_i (v_i - R c_i)^2 / (n (n - 1))) / mean(c),
    used for per-token and per-step rates of sequences of different lengths; with every
    count 1 it is the plain ``standard_error`` of the mean. NaN when n < 2.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    c = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if v.shape != c.shape:
        raise ValueError(f"values and counts must have the same length, got {v.numel()} and {c.numel()}")
    n = v.numel()
    if n < 2:
        return float("nan")
    ratio = v.sum() / c.sum()
    residual = v - ratio * c
    return float(torch.sqrt(residual.pow(2).sum() / (n * (n - 1))) / c.mean())


def repeat_batch(batch: SequenceBatch, repeats: int) -> SequenceBatch:
    """Each sequence ``repeats`` times in a row (row b * repeats + j is copy j of sequence b)."""
    moved = {
        f.name: (v.repeat_interleave(repeats, dim=0) if isinstance(v, Tensor) else v)
        for f in fields(batch)
        for v in [getattr(batch, f.name)]
    }
    return SequenceBatch(**moved)


def _sample_seed(seed: int | Sequence[int], k: int) -> int:
    """A 64-bit seed for sample k, well mixed from (seed..., k) by numpy's SeedSequence."""
    entropy = [seed] if isinstance(seed, int) else list(seed)
    return int(np.random.SeedSequence([*entropy, k]).generate_state(1, dtype=np.uint64)[0])


def sample_noise(
    shape: tuple[int, ...],
    seed: int | Sequence[int],
    k: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Standard-normal noise for sample k, identical whenever (seed, k, shape, device) are."""
    generator = torch.Generator(device=device)
    generator.manual_seed(_sample_seed(seed, k))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _noise_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.get_default_dtype()


@torch.no_grad()
def log_weights(
    model: nn.Module,
    batch: SequenceBatch,
    num_samples: int,
    chunk_size: int | None = None,
    seed: int | Sequence[int] = 0,
) -> Tensor:
    """Log importance weights [B, K] of ``num_samples`` posterior paths per sequence.

    The batch is repeated (``repeat_interleave``) for at most ``chunk_size`` samples per
    sequence at a time, bounding memory at chunk_size * B sequences per forward pass.
    Latent-variable models (``LatentVariableModel``) get ``forward(batch, noise=[B', T, z_dim])``, with sample k's
    noise drawn from a generator seeded by (seed, k): chunked and unchunked calls agree, and
    equal seeds give equal weights. Pass a distinct ``seed`` per batch (e.g. ``(seed,
    batch_idx)``) so different batches do not share noise. Other models
    (deterministic ones) are called as ``forward(batch)``. The model runs in eval mode
    (no dropout); its previous mode is restored.
    """
    return path_bounds(model, batch, num_samples, chunk_size, seed)[0]


@torch.no_grad()
def path_bounds(
    model: nn.Module,
    batch: SequenceBatch,
    num_samples: int,
    chunk_size: int | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[Tensor, Tensor]:
    """Log importance weights and analytic-KL ELBOs of the same posterior paths, each [B, K].

    Same sampling, chunking and seeding as ``log_weights``; the ELBOs come for free from the
    forward passes the weights need, so an evaluation gets both bounds on common noise.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = num_samples if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    z_dim = model.z_dim if isinstance(model, LatentVariableModel) else None
    b, steps = batch.mask.shape
    device = batch.mask.device
    dtype = _noise_dtype(model)
    was_training = model.training
    model.eval()
    try:
        weights, elbos = [], []
        for start in range(0, num_samples, chunk):
            count = min(chunk, num_samples - start)
            repeated = repeat_batch(batch, count)
            if z_dim is None:
                terms = model(repeated)
            else:
                noise = torch.stack(
                    [
                        sample_noise((b, steps, z_dim), seed, k, device, dtype)
                        for k in range(start, start + count)
                    ],
                    dim=1,
                )  # [B, count, T, Z] -> rows in repeat_interleave order
                terms = model(repeated, noise=noise.reshape(b * count, steps, z_dim))
            weights.append(log_weights_from_terms(terms, repeated.mask).reshape(b, count))
            elbos.append(elbo_from_terms(terms, repeated.mask).reshape(b, count))
    finally:
        model.train(was_training)
    return torch.cat(weights, dim=1), torch.cat(elbos, dim=1)
