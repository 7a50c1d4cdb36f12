"""The LightningModule: owns the objective, its schedules, metrics and optimization.

loss = mean over sequences of  sum_t mask_t (nll + w_kl kl + w_aux aux + w_bwd bwd)

Metrics are accumulated as exact sums over an epoch (torchmetrics, so they also
reduce across DDP processes) and reported in the data's own units: per sequence
(utterance, image) or per word, plus nats per step and bits per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import SumMetric

from zf_lightning.lit.schedules import Constant, WeightSchedule
from zf_lightning.types import DataSpec, HasAuxCost, SequenceBatch, StepTerms

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_TERMS = ("nll", "kl", "aux", "bwd")
_SUMS = (*_TERMS, "loss", "sequences", "steps")
_SPLITS = ("train", "val", "test")
# Validation and test score the bound itself (KL weight 1, no aux/bwd), independent of the
# update count, so val/test loss = negative ELBO and evaluation needs no training state.
EVAL_WEIGHTS = {"kl": 1.0, "aux": 0.0, "bwd": 0.0}
FULL_KL = Constant(1.0)
NO_AUX = Constant(0.0)


def schedule_can_be_positive(schedule: WeightSchedule) -> bool:
    """Whether a weight schedule is ever non-zero (checked at the start and far in the future)."""
    return schedule(0) != 0.0 or schedule(10**9) != 0.0


class SequenceLitModule(L.LightningModule):
    """Trains any model that follows the ``forward(batch) -> StepTerms`` contract.

    Args:
        model: the ``nn.Module`` (Z-Forcing or a baseline).
        spec: the data's conventions, for metric units.
        optimizer: factory taking parameters (a Hydra ``_partial_``).
        kl_weight, aux_weight: schedules of the update count.
        bwd_weight: weight of the backward-prediction cost; counted only while the aux
            weight is positive (as in the authors' code).
        scheduler: optional factory taking the optimizer (e.g. halve on plateau).
        scheduler_monitor: the metric a plateau scheduler watches.
        max_consecutive_nonfinite: stop after this many skipped updates in a row.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: DataSpec,
        optimizer: OptimizerFactory,
        kl_weight: WeightSchedule = FULL_KL,
        aux_weight: WeightSchedule = NO_AUX,
        bwd_weight: float = 0.0,
        scheduler: SchedulerFactory | None = None,
        scheduler_monitor: str = "val/neg_elbo",
        max_consecutive_nonfinite: int = 20,
    ) -> None:
        super().__init__()
        if schedule_can_be_positive(aux_weight) and not isinstance(model, HasAuxCost):
            raise ValueError(
                f"the auxiliary cost only exists for Z-Forcing, but {type(model).__name__} was given a "
                f"non-zero aux weight ({aux_weight}); use ablation=plain or ablation=kla with this model"
            )
        self.model = model
        self.spec = spec
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.kl_weight = kl_weight
        self.aux_weight = aux_weight
        self.bwd_weight = bwd_weight
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        # keyed "<split>_totals": a ModuleDict key may not shadow Module.train
        self.totals = nn.ModuleDict(
            {f"{split}_totals": nn.ModuleDict({k: SumMetric() for k in _SUMS}) for split in _SPLITS}
        )

    # ------------------------------------------------------------------ objective
    def weights(self, step: int | None = None) -> dict[str, float]:
        """The loss weights in force at an update count (default: the trainer's)."""
        step = self.global_step if step is None else step
        w_aux = self.aux_weight(step)
        return {"kl": self.kl_weight(step), "aux": w_aux, "bwd": self.bwd_weight if w_aux > 0 else 0.0}

    def objective(self, batch: SequenceBatch, weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss (mean over sequences) and the per-sequence sums of every term."""
        terms: StepTerms = self.model(batch)
        sums = terms.masked_sums(batch.mask)
        per_seq = sums["nll"] + weights["kl"] * sums["kl"] + weights["aux"] * sums["aux"]
        if weights["bwd"]:
            per_seq = per_seq + weights["bwd"] * sums["bwd"]
        sums["loss"] = per_seq
        return per_seq.mean(), sums

    def forward(self, batch: SequenceBatch) -> StepTerms:
        return self.model(batch)

    # ------------------------------------------------------------------ steps
    def _totals(self, split: str) -> nn.ModuleDict:
        return self.totals[f"{split}_totals"]

    def _accumulate(self, split: str, batch: SequenceBatch, sums: dict[str, Tensor]) -> None:
        metrics = self._totals(split)
        for k in (*_TERMS, "loss"):
            metrics[k].update(sums[k].detach().sum())
        metrics["sequences"].update(float(batch.batch_size))
        metrics["steps"].update(batch.mask.sum())

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor | None:
        weights = self.weights()
        loss, sums = self.objective(batch, weights)
        if not torch.isfinite(loss):
            return self._skip_nonfinite(sums)
        self.nonfinite_streak = 0
        self._accumulate("train", batch, sums)
        n = batch.batch_size
        self.log("train/loss_step", loss.detach(), prog_bar=True, batch_size=n)
        for k in _TERMS:
            self.log(f"train/{k}_step", self._per_unit(sums[k].detach().sum(), n, batch.mask.sum()), batch_size=n)
        self.log("train/w_kl", weights["kl"], batch_size=n)
        self.log("train/w_aux", weights["aux"], batch_size=n)
        self.log("train/w_bwd", weights["bwd"], batch_size=n)
        return loss

    def _skip_nonfinite(self, sums: dict[str, Tensor]) -> None:
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_total))
        if self.nonfinite_streak >= self.max_consecutive_nonfinite:
            finite = {k: bool(torch.isfinite(v).all()) for k, v in sums.items()}
            raise FloatingPointError(
                f"{self.nonfinite_streak} consecutive updates had a non-finite loss (update {self.global_step}; "
                f"terms finite: {finite}). Lower optim.lr, check the data for NaN/inf, or raise "
                "lit.max_consecutive_nonfinite."
            )
        return None

    def validation_step(self, batch: SequenceBatch, batch_idx: int) -> None:
        _, sums = self.objective(batch, EVAL_WEIGHTS)
        self._accumulate("val", batch, sums)

    def test_step(self, batch: SequenceBatch, batch_idx: int) -> None:
        _, sums = self.objective(batch, EVAL_WEIGHTS)
        self._accumulate("test", batch, sums)

    # ------------------------------------------------------------------ epoch metrics
    def _per_unit(self, total: Tensor, sequences: float, steps: Tensor) -> Tensor:
        return total / (steps if self.spec.per_token else sequences)

    def epoch_metrics(self, split: str) -> dict[str, float]:
        """Exact epoch metrics from the accumulated sums, in the data's units."""
        s = {k: m.compute() for k, m in self._totals(split).items()}
        n_seq, n_steps = s["sequences"], s["steps"]
        out = {k: self._per_unit(s[k], n_seq, n_steps) for k in _TERMS}
        out["loss"] = s["loss"] / n_seq
        bound = self._per_unit(s["nll"] + s["kl"], n_seq, n_steps)
        out["neg_elbo"] = bound
        out["elbo"] = -bound
        out["nats_per_step"] = (s["nll"] + s["kl"]) / n_steps
        out["bpd"] = out["nats_per_step"] / (self.spec.dims_per_step * math.log(2.0))
        if self.spec.per_token:
            out["ppl"] = torch.exp(bound)
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _log_epoch(self, split: str) -> None:
        if int(self._totals(split)["sequences"].compute()) == 0:
            return
        for k, v in self.epoch_metrics(split).items():
            self.log(k, v, prog_bar=k in ("val/neg_elbo", "train/loss"))
        for m in self._totals(split).values():
            m.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite"] = {"total": self.nonfinite_total, "streak": self.nonfinite_streak}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("nonfinite", {})
        self.nonfinite_total = int(state.get("total", 0))
        self.nonfinite_streak = int(state.get("streak", 0))
