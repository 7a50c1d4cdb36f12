"""Post-training analyses of a trained latent model (the ``analyses`` config group).

Each public callable has the signature ``(model, datamodule, split, **options) -> {metric: value}``
that ``zf_lightning.runs.pipeline.run_analyses`` expects:

* ``latent_probe``: posterior collapse and what the latents know. Active units of the
  posterior means over the real steps of ``split`` (``{split}/active_units``), and linear
  probes that predict the sequence label from the time-averaged posterior mean of z
  (``{split}/probe_acc_z``) and from the time-averaged forward state h_t
  (``{split}/probe_acc_h``), fit on the training split and scored on ``split``, next to the
  majority rate (``{split}/probe_majority``). If z is collapsed, ``probe_acc_z`` falls to
  the majority rate while ``probe_acc_h`` (the deterministic path) can stay high.
* ``resample_words`` (``zf_lightning.evaluation.text``): the words a sentence's posterior
  z_1..z_T decodes to, against z drawn from the prior.

An analysis that also produces a table returns an ``AnalysisResult``: its metrics, with the
tables in ``.tables`` for the caller to log (this layer logs nothing itself).

Latents are read along the *posterior-mean path* (``infer`` with zero noise, so z_t is the
posterior mean and h_t follows from it): the features are then deterministic functions of
the sentence, and repeated evaluations agree. Cost is bounded by seeded subsets of at most
``max_sequences`` sequences per split. Models that do not declare
``HasPosterior`` (the baselines) are skipped with a log line and no metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.evaluation.metrics import (
    active_units,
    majority_rate,
    masked_steps,
    masked_time_average,
    probe_accuracy,
)
from zf_lightning.evaluation.posterior import has_posterior, model_device, posterior_mean_pass
from zf_lightning.types import SequenceBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    """Rows of a table an analysis produced, under ``columns``."""

    columns: list[str]
    rows: list[list[object]]


class AnalysisResult(dict[str, float]):
    """An analysis's ``{metric: value}`` (the dict itself) and its tables by key (``tables``)."""

    def __init__(self, metrics: dict[str, float] | None = None, tables: dict[str, Table] | None = None) -> None:
        super().__init__(metrics or {})
        self.tables: dict[str, Table] = dict(tables or {})


# -- data access ---------------------------------------------------------------------------------


def subset_batches(
    datamodule: SequenceDataModule, split: str, max_sequences: int | None, seed: int = 0
) -> Iterator[SequenceBatch]:
    """Batches of a seeded random subset of at most ``max_sequences`` sequences of ``split``.

    A random subset (not the first ones) because a split may be ordered, e.g. by label.
    """
    dataset = datamodule.dataset(split)
    n = len(dataset)  # type: ignore[arg-type]
    if max_sequences is not None and n > max_sequences:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_sequences]
        dataset = Subset(dataset, sorted(order.tolist()))
    loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False,
                        collate_fn=datamodule.collate_fn)
    yield from loader


# -- latent features, active units and probes ----------------------------------------------------


@dataclass
class LatentFeatures:
    """Per-sequence summaries and per-step posterior means of one split (CPU tensors)."""

    z_avg: Tensor  # [N, Z] time-averaged posterior mean of z
    h_avg: Tensor  # [N, H] time-averaged h_t
    mean_steps: Tensor  # [M, Z] posterior means of every real step
    labels: Tensor | None  # [N], None when the data has no labels


@torch.no_grad()
def collect_latents(model: nn.Module, batches: Iterator[SequenceBatch] | Sequence[SequenceBatch]) -> LatentFeatures:
    """Run the posterior-mean path over ``batches`` and keep what the analyses read."""
    device = model_device(model)
    z_avg, h_avg, steps, labels = [], [], [], []
    labelled = True
    for batch in batches:
        batch = batch.to(device)
        run = posterior_mean_pass(model, batch)
        z_avg.append(masked_time_average(run.mean_q, batch.mask).cpu())
        h_avg.append(masked_time_average(run.h, batch.mask).cpu())
        steps.append(masked_steps(run.mean_q, batch.mask).cpu())
        if batch.labels is None:
            labelled = False
        else:
            labels.append(batch.labels.cpu())
    if not z_avg:
        raise ValueError("collect_latents got no batches")
    return LatentFeatures(
        z_avg=torch.cat(z_avg),
        h_avg=torch.cat(h_avg),
        mean_steps=torch.cat(steps),
        labels=torch.cat(labels) if labelled else None,
    )


def _labelled_count(labels: Tensor | None) -> int:
    return 0 if labels is None else int((labels >= 0).sum())


def probe_metrics(fit: LatentFeatures, evaluated: LatentFeatures, split: str, seed: int = 0) -> dict[str, float]:
    """``probe_acc_z``, ``probe_acc_h`` and ``probe_majority`` of ``split``; empty without labels."""
    if _labelled_count(fit.labels) == 0 or _labelled_count(evaluated.labels) == 0:
        log.warning("latent probe skipped on %s: no labelled sequences (labels < 0 mean unlabelled)", split)
        return {}
    assert fit.labels is not None and evaluated.labels is not None
    return {
        f"{split}/probe_acc_z": probe_accuracy(fit.z_avg, fit.labels, evaluated.z_avg, evaluated.labels, seed=seed),
        f"{split}/probe_acc_h": probe_accuracy(fit.h_avg, fit.labels, evaluated.h_avg, evaluated.labels, seed=seed),
        f"{split}/probe_majority": majority_rate(fit.labels, evaluated.labels),
    }


def latent_probe(
    model: nn.Module,
    datamodule: SequenceDataModule,
    split: str,
    fit_split: str = "train",
    max_sequences: int | None = 2000,
    max_fit_sequences: int | None = 2000,
    threshold: float = 0.01,
    seed: int = 0,
) -> dict[str, float]:
    """Active units on ``split`` and label probes fit on ``fit_split``, scored on ``split``.

    ``max_sequences``/``max_fit_sequences`` bound the cost (seeded subsets); ``threshold`` is
    the active-unit variance threshold. Fitting and scoring on the same split is allowed but
    logged, since the accuracy is then not held out.
    """
    if not has_posterior(model, "latent_probe"):
        return {}
    evaluated = collect_latents(model, subset_batches(datamodule, split, max_sequences, seed))
    metrics = {f"{split}/active_units": float(active_units(evaluated.mean_steps, threshold))}
    if fit_split == split:
        log.warning("latent probe fit and scored on the same split (%s): the accuracy is not held out", split)
        fit = evaluated
    else:
        fit = collect_latents(model, subset_batches(datamodule, fit_split, max_fit_sequences, seed))
    metrics.update(probe_metrics(fit, evaluated, split, seed))
    log.info("latent probe on %s: %s", split, {k: round(v, 4) for k, v in metrics.items()})
    return metrics
