"""Where a real-valued bound comes from: near-silent frames against the rest.

A Gaussian output head with an unclamped variance can put an arbitrarily high density on
frames that are almost constant, so on speech a bound in nats per utterance can be positive
and a difference between two models can come mostly from near-silence. ``quiet_frames``
splits each utterance's bound into the frames whose target has a mean square below
``threshold`` (in the model's units: the data module's normalised frames) and the others, so
a reader can see how many nats of a difference are made on frames nobody hears.

Metrics (per sequence means over ``split``, nats; the bound is ``-(nll + kl)`` per frame):

* ``{split}/quiet_fraction``: the share of real frames that are quiet;
* ``{split}/elbo_quiet`` and ``{split}/elbo_other``: the bound summed over each kind of
  frame, whose sum is the model's bound with the same latent draws;
* ``{split}/nll_quiet``, ``{split}/nll_other``: the reconstruction part of each.
"""

from __future__ import annotations

from torch import Tensor, nn

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.evaluation.probes import subset_batches
from zf_lightning.types import SequenceBatch, StepTerms


def quiet_mask(batch: SequenceBatch, threshold: float) -> Tensor:
    """``[B, T]`` 1.0 where a real step's target frame has a mean square below ``threshold``."""
    if batch.targets.dim() != 3 or not batch.targets.is_floating_point():
        raise ValueError("quiet_frames needs real-valued frames ([B, T, D] float targets), "
                         f"got targets of shape {tuple(batch.targets.shape)} and dtype {batch.targets.dtype}")
    return (batch.targets.pow(2).mean(dim=-1) < threshold).to(batch.mask.dtype) * batch.mask


def quiet_frames(
    model: nn.Module,
    datamodule: SequenceDataModule,
    split: str,
    threshold: float = 0.01,
    max_sequences: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The bound of ``split`` split into near-silent frames and the rest (see the module doc)."""
    sums = {"quiet_fraction": 0.0, "elbo_quiet": 0.0, "elbo_other": 0.0, "nll_quiet": 0.0, "nll_other": 0.0}
    sequences, steps = 0, 0.0
    for batch in subset_batches(datamodule, split, max_sequences, seed):
        terms: StepTerms = model(batch)
        quiet = quiet_mask(batch, threshold)
        other = batch.mask - quiet
        bound = -(terms.nll + terms.kl)
        sums["quiet_fraction"] += float(quiet.sum())
        sums["elbo_quiet"] += float((bound * quiet).sum())
        sums["elbo_other"] += float((bound * other).sum())
        sums["nll_quiet"] += float((terms.nll * quiet).sum())
        sums["nll_other"] += float((terms.nll * other).sum())
        sequences += batch.mask.shape[0]
        steps += float(batch.mask.sum())
    if sequences == 0:
        raise ValueError(f"quiet_frames: the {split!r} split has no sequences")
    metrics = {f"{split}/{k}": v / sequences for k, v in sums.items() if k != "quiet_fraction"}
    metrics[f"{split}/quiet_fraction"] = sums["quiet_fraction"] / steps
    return metrics
