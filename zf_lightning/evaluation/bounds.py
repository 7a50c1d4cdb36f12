"""Scoring a trained model on a split.

Three kinds of numbers, all in ``metrics.json`` with flat ``<split>/...`` keys:

- the Lightning test loop's metrics (``test/elbo``, ``test/neg_elbo``, ``test/nll``, ...),
  seeded exactly as training seeds them, so eval.py reproduces a run's test metrics;
- importance-sampled bounds ``test/iwae_K`` = mean over sequences of
  log (1/K) sum_k p(x, z_k) / q(z_k | x) with K posterior paths per sequence (IWAE,
  Burda et al. 2016), computed in chunks of ``eval.chunk_size`` paths so memory stays bounded;
- references from the data module (e.g. ``test/exact_nll`` for the LGSSM).

Sign conventions: ``elbo`` and ``iwae_K`` are lower bounds on the log-likelihood (negative
nats, higher is better); ``neg_elbo``, ``nats_per_step``, ``bpd`` and ``exact_nll`` are
positive negative-log-likelihoods (lower is better). ``iwae_K_nats_per_step`` and
``iwae_K_bpd`` follow the NLL convention too, so they compare with ``nats_per_step``/``bpd``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from omegaconf import ListConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.evaluation.estimators import iwae_bound, path_bounds, ratio_standard_error, standard_error
from zf_lightning.evaluation.metrics import perplexity
from zf_lightning.types import DataSpec, LatentVariableModel, SequenceBatch


def iwae_sample_counts(value: int | Sequence[int] | None) -> list[int]:
    """``eval.iwae_samples`` (an int, a list, or null / [] for no importance sampling) as sorted Ks."""
    if value is None:
        return []
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    counts = sorted({int(v) for v in values})
    if counts and counts[0] < 1:
        raise ValueError(f"eval.iwae_samples must be positive sample counts, got {values}")
    return counts


@dataclass
class SequenceBounds:
    """Per-sequence log-likelihood bounds of a split, in loader order, float64 [N].

    ``elbo``: the analytic-KL ELBO of one seeded posterior path (path 0); ``iwae[K]``: the
    IWAE bound from paths 0..K-1 (nested, so larger K reuses the smaller K's paths);
    ``steps``: real steps (tokens for text).
    """

    elbo: Tensor
    iwae: dict[int, Tensor]
    steps: Tensor


@torch.no_grad()
def sequence_bounds(
    model: nn.Module,
    batches: Iterable[SequenceBatch],
    sample_counts: Sequence[int],
    chunk_size: int | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> SequenceBounds:
    """ELBO and IWAE-K bounds of every sequence; batch i uses noise seeded by (seed, i).

    Deterministic models (not a ``LatentVariableModel``) have one exact weight, their likelihood, so they are
    run once and every K reports it.
    """
    if not sample_counts:
        raise ValueError("sample_counts must name at least one K")
    most = max(sample_counts) if isinstance(model, LatentVariableModel) else 1
    elbos: list[Tensor] = []
    iwae: dict[int, list[Tensor]] = {k: [] for k in sample_counts}
    steps: list[Tensor] = []
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        log_w, elbo = path_bounds(model, batch, most, chunk_size, seed=(seed, index))
        log_w = log_w.double()
        elbos.append(elbo[:, 0].double().cpu())
        for k in sample_counts:
            iwae[k].append(iwae_bound(log_w[:, :k]).cpu())
        steps.append(batch.scored.sum(dim=1).double().cpu())  # labelled steps only for classification
    return SequenceBounds(
        elbo=torch.cat(elbos), iwae={k: torch.cat(v) for k, v in iwae.items()}, steps=torch.cat(steps)
    )


def _rates(values: Tensor, steps: Tensor, spec: DataSpec) -> dict[str, float]:
    """A per-sequence log-likelihood bound in the data's unit, per step (NLL) and in bits per dim."""
    per_step = float(-values.sum() / steps.sum())
    per_step_se = ratio_standard_error(values, steps)
    if spec.per_token:  # per word: total over total tokens, i.e. minus the per-step rate
        headline, headline_se = -per_step, per_step_se
    else:  # per sequence / utterance / image: mean over sequences
        headline, headline_se = float(values.mean()), standard_error(values)
    to_bits = spec.dims_per_step * math.log(2.0)
    return {
        "": headline,
        "_se": headline_se,
        "_nats_per_step": per_step,
        "_nats_per_step_se": per_step_se,
        "_bpd": per_step / to_bits,
        "_bpd_se": per_step_se / to_bits,
    }


def bound_metrics(
    bounds: SequenceBounds, spec: DataSpec, split: str, exact_log_likelihood: Tensor | None = None
) -> dict[str, float]:
    """Flat metrics: ``<split>/elbo_se``, ``<split>/iwae_K`` with ``_se``, ``_nats_per_step``,
    ``_bpd`` (and their ``_se``), ``<split>/ppl_iwae_K`` for text, and with an exact
    log-likelihood the paired gap ``<split>/iwae_K_gap`` = mean(log p(x) - IWAE_K) >= 0."""
    metrics = {f"{split}/elbo_se": _rates(bounds.elbo, bounds.steps, spec)["_se"]}
    if exact_log_likelihood is not None and exact_log_likelihood.numel() != bounds.elbo.numel():
        raise ValueError(
            f"exact log-likelihoods ({exact_log_likelihood.numel()}) do not match the split's "
            f"{bounds.elbo.numel()} sequences"
        )
    for k, values in bounds.iwae.items():
        name = f"{split}/iwae_{k}"
        metrics.update({name + suffix: v for suffix, v in _rates(values, bounds.steps, spec).items()})
        if spec.per_token:
            metrics[f"{split}/ppl_iwae_{k}"] = perplexity(-values.sum(), bounds.steps.sum())
        if exact_log_likelihood is not None:
            gap = exact_log_likelihood.double().cpu() - values
            metrics[name + "_gap"] = float(gap.mean())
            metrics[name + "_gap_se"] = standard_error(gap)
    return metrics


def split_loader(dm: SequenceDataModule, split: str) -> DataLoader:
    """The unshuffled loader of ``val`` or ``test``, setting the split up if needed."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    dm.dataset(split)
    return dm.test_dataloader() if split == "test" else dm.val_dataloader()


def importance_metrics(
    model: nn.Module,
    dm: SequenceDataModule,
    split: str,
    sample_counts: Sequence[int],
    chunk_size: int | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """IWAE metrics of a split; the gap to the truth where the data module knows it."""
    model.to(device)
    bounds = sequence_bounds(model, split_loader(dm, split), sample_counts, chunk_size, seed, device)
    return bound_metrics(bounds, dm.spec, split, dm.exact_log_likelihood(split))
