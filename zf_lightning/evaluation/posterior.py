"""The posterior-mean pass of a model that has a posterior, and exporting its latents."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from zf_lightning.types import HasPosterior, PosteriorPass, SequenceBatch

log = logging.getLogger(__name__)


def has_posterior(model: nn.Module, analysis: str) -> bool:
    """True when the model declares ``HasPosterior`` (Z-Forcing); otherwise log why ``analysis`` is skipped."""
    if isinstance(model, HasPosterior):
        return True
    log.warning("%s skipped: %s has no infer() (no posterior pass of its own; only Z-Forcing declares HasPosterior)",
                analysis, type(model).__name__)
    return False


def posterior_mean_pass(model: HasPosterior, batch: SequenceBatch) -> PosteriorPass:
    """``model.infer`` with zero noise: z_t is the posterior mean and h_t follows from it."""
    B, T = batch.mask.shape
    return model.infer(batch, noise=batch.mask.new_zeros(B, T, int(model.z_dim)))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    Models that do not declare ``HasPosterior`` (only Z-Forcing does) are skipped with a
    warning and give None.
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
