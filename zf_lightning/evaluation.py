"""Evaluation of a trained checkpoint: rebuild the run from the config stored in it and
score a split (eval.py is a thin wrapper around ``evaluate``).

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

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torch.utils.data import DataLoader

from zf_lightning.analysis import perplexity
from zf_lightning.data.base import SequenceDataModule
from zf_lightning.estimators import iwae_bound, path_bounds, ratio_standard_error, standard_error
from zf_lightning.jobs import write_json
from zf_lightning.pipeline import (
    CONFIG_KEY,
    build_datamodule,
    build_module,
    run_analyses,
    split_metrics,
    write_samples,
)
from zf_lightning.resume import load_checkpoint
from zf_lightning.text_analysis import has_posterior, posterior_mean_pass
from zf_lightning.types import DataSpec, SequenceBatch

log = logging.getLogger(__name__)


def load_checkpoint_config(ckpt_path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """The resolved config stored in a checkpoint, and the checkpoint itself."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file written by train.py)")
    checkpoint = load_checkpoint(path)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path} has no stored config ('{CONFIG_KEY}'); only checkpoints written by train.py load")
    return OmegaConf.create(checkpoint[CONFIG_KEY]), checkpoint


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

    Deterministic models (no ``z_dim``) have one exact weight, their likelihood, so they are
    run once and every K reports it.
    """
    if not sample_counts:
        raise ValueError("sample_counts must name at least one K")
    most = max(sample_counts) if getattr(model, "z_dim", None) is not None else 1
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
        steps.append(batch.mask.sum(dim=1).double().cpu())
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
    if (dm.test_set if split == "test" else dm.val_set) is None:
        dm.setup("test" if split == "test" else "validate")
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
    exact_fn = getattr(dm, "exact_log_likelihood", None)
    exact = exact_fn(split) if callable(exact_fn) else None
    return bound_metrics(bounds, dm.spec, split, exact)


def _pad_time(chunks: list[Tensor], steps: int) -> np.ndarray:
    """Concatenate [B, T_i, ...] chunks along the batch after zero-padding time to ``steps``."""
    padded = [torch.nn.functional.pad(c, (0, 0) * (c.dim() - 2) + (0, steps - c.shape[1])) for c in chunks]
    return torch.cat(padded).cpu().numpy()


@torch.no_grad()
def export_latents(model: nn.Module, loader: Iterable[SequenceBatch], path: Path,
                   device: torch.device | str = "cpu") -> Path | None:
    """Write posterior means of z and the forward states h of a split to an ``.npz``.

    Arrays: ``z_mean`` [N, T, Z], ``h`` [N, T, H], ``mask`` [N, T], ``lengths`` [N] and
    ``labels`` [N] (-1 where a batch has none), in loader order, zero past each length.
    The posterior pass runs with zero noise, so z_t is the posterior mean given the
    mean path so far and h_t the state along that path: deterministic, no seed needed.
    Models without ``infer`` (only Z-Forcing exposes its posterior pass) are skipped
    with a warning and give None.
    """
    if not has_posterior(model, "eval.export_latents"):
        return None
    model.to(device)
    was_training = model.training
    model.eval()
    z_means, states, masks, labels = [], [], [], []
    try:
        for batch in loader:
            batch = batch.to(device)
            run = posterior_mean_pass(model, batch)
            z_means.append(run.mean_q * batch.mask[..., None])
            states.append(run.h * batch.mask[..., None])
            masks.append(batch.mask)
            no_labels = torch.full((batch.mask.shape[0],), -1, dtype=torch.long)
            labels.append(batch.labels if batch.labels is not None else no_labels)
    finally:
        model.train(was_training)
    longest = max(m.shape[1] for m in masks)
    mask = _pad_time([m[..., None] for m in masks], longest)[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        z_mean=_pad_time(z_means, longest).astype(np.float32),
        h=_pad_time(states, longest).astype(np.float32),
        mask=mask.astype(np.float32),
        lengths=mask.sum(axis=1).round().astype(np.int64),
        labels=torch.cat([lbl.cpu() for lbl in labels]).numpy(),
    )
    return path


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild a trained model from its checkpoint's config and evaluate one split.

    ``cfg.eval`` (conf/eval.yaml): ``iwae_samples`` (K or a list of Ks; null/[] skips the
    importance-sampled bounds), ``chunk_size`` (paths per sequence per forward pass) and
    ``export_latents``. Everything is seeded by ``cfg.seed``.
    """
    out_dir = Path(cfg.paths.output_dir)
    split = str(cfg.split)
    seed = int(cfg.seed)
    run_cfg, checkpoint = load_checkpoint_config(cfg.ckpt_path)
    if cfg.get("data_overrides"):
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    dm = build_datamodule(run_cfg)
    lit = build_module(run_cfg, dm)
    lit.load_state_dict(checkpoint["state_dict"])
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    metrics = split_metrics(trainer, lit, dm, seed, split)
    options = cfg.get("eval") or {}
    device = trainer.strategy.root_device
    sample_counts = iwae_sample_counts(options.get("iwae_samples"))
    if sample_counts:
        chunk = options.get("chunk_size")
        metrics.update(importance_metrics(lit.model, dm, split, sample_counts, None if chunk is None else int(chunk),
                                          seed, device))
    with open_dict(run_cfg):
        run_cfg.seed = cfg.seed
        # analyses that write files (e.g. resampled text) write into this eval run's folder,
        # not into the training run's folder recorded in the checkpoint
        for analysis in (run_cfg.get("analyses") or {}).values():
            if analysis is not None and "output_dir" in analysis:
                analysis.output_dir = str(out_dir)
    metrics.update(run_analyses(run_cfg, lit, dm, split))
    if options.get("export_latents"):
        written = export_latents(lit.model, split_loader(dm, split), out_dir / f"latents_{split}.npz", device)
        if written is not None:
            metrics[f"{split}/latents_file"] = str(written)  # type: ignore[assignment]
    lit.cpu()
    metrics["checkpoint"] = str(cfg.ckpt_path)  # type: ignore[assignment]
    with open_dict(run_cfg):
        run_cfg.samples = cfg.samples
    write_samples(run_cfg, lit, dm, out_dir / "samples")
    write_json(out_dir / "metrics.json", metrics)
    headline = [f"{split}/elbo", *(f"{split}/iwae_{k}" for k in sample_counts), f"{split}/exact_nll"]
    log.info("%s", ", ".join(f"{k}={metrics[k]:.4f}" for k in headline if k in metrics))
    return metrics
