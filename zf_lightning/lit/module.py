"""The LightningModule: owns the objective, its schedules, metrics and optimization.

loss = mean over sequences of  sum_t mask_t (nll + w_kl kl + w_aux aux + w_bwd bwd)  +  w_reg penalty

where the optional regularizer (``regularizer`` config group, e.g. SIRE) gives one penalty per
batch, logged as ``train/<name>`` with its weight ``train/w_<name>``. Validation scores the bound
(KL weight 1, no aux) and ``val/objective``, the loss at the weights the schedules settle at.

Metrics are accumulated as exact sums over an epoch (torchmetrics, so they also
reduce across DDP processes) and reported in the data's own units: per sequence
(utterance, image) or per word, plus nats per step and bits per dimension. The sums every
batch adds (the terms, loss, sequences, steps) run in one plain tensor per split, added to in
the metrics' dtype exactly as their own updates would, and are copied into the metrics only when
these are read (epoch ends, checkpoints): a torchmetrics update per sum and batch costs about
1 % of a small model's training step.

Sequence classification (``DataSpec.classes``): the loss counts the labelled steps only (the
others have no target), and ``acc`` / ``pred_nll`` per labelled step come from the model's
``predict_proba``, which never reads the targets (Z-Forcing: prior samples), also per test
size (``acc_len<size>``) when the batches carry sizes. On set data (``DataSpec.sets``) the test
epoch also reports ``perm_flip_rate``: how often a random order of a set's elements changes the
predicted label (seeded, on the first ``flip_sequences`` sequences of every test batch).
Regression on the label (``DataSpec.regression``, e.g. a set's sum with a Gaussian head): the
same from ``predict_value``, with ``acc`` = the prediction rounds to the label, ``mae`` (also per
test size, ``mae_len<size>``), and on sets ``perm_spread``, the prediction's standard deviation
over the orders tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric, SumMetric

from zf_lightning.lit.invariance import permutation_flips, permutation_spread
from zf_lightning.lit.regularizers import Regularizer
from zf_lightning.lit.schedules import Constant, WeightSchedule
from zf_lightning.types import (
    DataSpec,
    HasAuxCost,
    HasBackwardCost,
    PredictsClasses,
    PredictsValues,
    SequenceBatch,
    StepTerms,
)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_TERMS = ("nll", "kl", "aux", "bwd")
_SUMS = (*_TERMS, "loss", "sequences", "steps")  # steps: the scored ones (labelled steps for classification)
_CLASS_SUMS = ("correct", "pred_nll")
_VALUE_SUMS = ("correct", "abs_err")  # regression: the rounded prediction equals the label; |error|
# test on set data: changed predictions over permutations tried; regression: the prediction's
# standard deviation over the orders, summed over the labelled steps
_FLIP_SUMS = ("flips", "flip_trials", "spread")
_FLIP_SEED = 20_200_612  # permutations are seeded per test batch, independent of the training seed
# per sequence, for accuracy (and a regression's absolute error) per test size
_SIZE_SERIES = ("sizes", "size_correct", "size_steps", "size_abs_err")
_SPLITS = ("train", "val", "test")
# Validation and test score the bound itself (KL weight 1, no aux/bwd), independent of the
# update count, so val/test loss = negative ELBO and evaluation needs no training state.
EVAL_WEIGHTS = {"kl": 1.0, "aux": 0.0, "bwd": 0.0}
FULL_KL = Constant(1.0)
FULL_REGULARIZER = Constant(1.0)
NO_AUX = Constant(0.0)
SETTLED_STEP = 10**9  # an update count past the end of every schedule's ramp
# The validation objective: the trained loss at the settled weights (see ``settled_weights``), in the
# bound's units; lower is better. Unlike train/loss it weighs every validation alike, so a run's curve
# of it can be read from the first validation to the last.
OBJECTIVE = "objective"
VAL_OBJECTIVE = f"val/{OBJECTIVE}"


def schedule_can_be_positive(schedule: WeightSchedule) -> bool:
    """Whether a weight schedule is ever non-zero (checked at the start and far in the future)."""
    return schedule(0) != 0.0 or schedule(SETTLED_STEP) != 0.0


def weighted_terms(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """The trained loss from its terms: nll + w_kl kl + w_aux aux (+ w_bwd bwd); one formula for
    the training step and the validation objective."""
    total = terms["nll"] + weights["kl"] * terms["kl"] + weights["aux"] * terms["aux"]
    return total + weights["bwd"] * terms["bwd"] if weights["bwd"] else total


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
        class_samples: classification only: prior samples whose class probabilities are
            averaged for validation/test accuracy (models with latents; training uses one).
        regularizer: an extra training penalty (e.g. SIRE), checked against the model here.
        regularizer_weight: its weight schedule (of the update count).
        flip_permutations, flip_sequences: set data only: random orders tried per sequence, and
            sequences per test batch, for ``test/perm_flip_rate`` (bounded: the test sets are large).
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
        class_samples: int = 16,
        regularizer: Regularizer | None = None,
        regularizer_weight: WeightSchedule = FULL_REGULARIZER,
        flip_permutations: int = 4,
        flip_sequences: int = 16,
    ) -> None:
        super().__init__()
        if spec.classes is not None and not isinstance(model, PredictsClasses):
            raise ValueError(
                f"{type(model).__name__} cannot predict classes without reading the targets (no predict_proba), "
                "so it cannot be scored on classification data; use model=rnn, transformer, lru or zforcing"
            )
        if spec.regression and not isinstance(model, PredictsValues):
            raise ValueError(
                f"{type(model).__name__} cannot predict a value without reading the targets (no predict_value), "
                "so it cannot be scored on regression data; use model=rnn, transformer, lru, deepsets or zforcing"
            )
        if class_samples < 1:
            raise ValueError(f"lit.class_samples must be >= 1, got {class_samples}")
        if schedule_can_be_positive(aux_weight) and not isinstance(model, HasAuxCost):
            raise ValueError(
                f"the auxiliary cost only exists for Z-Forcing, but {type(model).__name__} was given a "
                f"non-zero aux weight ({aux_weight}); use ablation=plain or ablation=kla with this model"
            )
        if bwd_weight < 0:
            raise ValueError(f"lit.bwd_weight must be >= 0, got {bwd_weight}")
        counts_bwd = bwd_weight > 0 and schedule_can_be_positive(aux_weight)
        if counts_bwd and not isinstance(model, HasBackwardCost):
            raise ValueError(
                f"the backward-prediction cost only exists for Z-Forcing, but {type(model).__name__} was given "
                f"a non-zero bwd weight ({bwd_weight}); set lit.bwd_weight=0 with this model"
            )
        if isinstance(model, HasBackwardCost):
            # no loss reads the term: the head would cost a product as wide as the inputs' parameters,
            # forward and backward, on every update for a logged number of an untrained head
            model.backward_cost = counts_bwd
        if regularizer is not None:
            regularizer.check(model)
        if flip_permutations < 1 or flip_sequences < 1:
            raise ValueError(f"lit.flip_permutations and lit.flip_sequences must be >= 1, got {flip_permutations}, "
                             f"{flip_sequences}")
        self.model = model
        self.spec = spec
        self.regularizer = regularizer
        self.regularizer_weight = regularizer_weight
        self.flip_permutations = flip_permutations
        self.flip_sequences = flip_sequences
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.kl_weight = kl_weight
        self.aux_weight = aux_weight
        self.bwd_weight = bwd_weight
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.class_samples = class_samples
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        # keyed "<split>_totals": a ModuleDict key may not shadow Module.train
        sums = _SUMS + (_CLASS_SUMS if spec.classes is not None else _VALUE_SUMS if spec.regression else ())
        # nan_strategy="disable": torchmetrics would otherwise drop NaN values, so a broken model's
        # NaN bound would be summed as 0 and reported as a perfect score; a NaN must stay a NaN
        self.totals = nn.ModuleDict(
            {f"{split}_totals": nn.ModuleDict({k: SumMetric(nan_strategy="disable") for k in sums})
             for split in _SPLITS}
        )
        # split -> [len(_SUMS)] running sums of the epoch so far, the whole state of those metrics
        self._running: dict[str, Tensor] = {}
        self.flip_totals = nn.ModuleDict(
            {k: SumMetric(nan_strategy="disable") for k in _FLIP_SUMS} if self.measures_flips else {}
        )
        # accuracy per task size (validation and test): per-sequence series, gathered at epoch end
        self.size_series = nn.ModuleDict(
            {f"{split}_sizes": nn.ModuleDict({k: CatMetric(nan_strategy="disable") for k in _SIZE_SERIES})
             for split in ("val", "test")}
            if spec.labelled else {}
        )

    @property
    def measures_flips(self) -> bool:
        """Whether the test epoch reports ``perm_flip_rate`` (labels of sets: classes or values)."""
        return self.spec.sets and self.spec.labelled

    # ------------------------------------------------------------------ objective
    def weights(self, step: int | None = None) -> dict[str, float]:
        """The loss weights in force at an update count (default: the trainer's)."""
        step = self.global_step if step is None else step
        w_aux = self.aux_weight(step)
        return {"kl": self.kl_weight(step), "aux": w_aux, "bwd": self.bwd_weight if w_aux > 0 else 0.0}

    def settled_weights(self) -> dict[str, float]:
        """The loss weights once every schedule has finished its ramp: the objective a run ends up
        training (or was heading for, if it stopped mid-ramp), which ``val/objective`` measures at
        every validation."""
        return self.weights(SETTLED_STEP)

    def objective(self, batch: SequenceBatch, weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss (mean over sequences) and the per-sequence sums of every term."""
        terms: StepTerms = self.model(batch)
        sums = terms.masked_sums(batch.mask)
        per_seq = weighted_terms(sums, weights)
        sums["loss"] = per_seq
        return per_seq.mean(), sums

    def forward(self, batch: SequenceBatch) -> StepTerms:
        return self.model(batch)

    # ------------------------------------------------------------------ steps
    def _totals(self, split: str) -> nn.ModuleDict:
        return self.totals[f"{split}_totals"]

    def _sync_running(self, split: str) -> None:
        """Set the split's metrics of ``_SUMS`` to the running sums (0 + s is s exactly), so that
        ``compute`` (and its DDP reduction) sees every batch so far."""
        running = self._running.get(split)
        if running is None:
            return
        metrics = self._totals(split)
        for k, value in zip(_SUMS, running, strict=True):
            metrics[k].reset()
            metrics[k].update(value)

    def _accumulate(self, split: str, batch: SequenceBatch, sums: dict[str, Tensor]) -> None:
        dtype = self._totals(split)["loss"].dtype
        values = [sums[k].detach().sum().to(dtype) for k in (*_TERMS, "loss")]
        scored = batch.scored.sum().to(dtype)
        values += [scored.new_tensor(float(batch.batch_size)), scored]
        running = self._running.get(split)
        if running is None:
            running = self._running[split] = scored.new_zeros(len(_SUMS))
        running += torch.stack(values)
        samples = 1 if split == "train" else self.class_samples
        if self.spec.classes is not None:
            self._accumulate_classes(split, batch, samples)
        elif self.spec.regression:
            self._accumulate_values(split, batch, samples)

    @torch.no_grad()
    def _accumulate_classes(self, split: str, batch: SequenceBatch, samples: int) -> None:
        """Accuracy and -log p(label) at the labelled steps, from probabilities that never read the targets."""
        assert isinstance(self.model, PredictsClasses)
        probs = self.model.predict_proba(batch, samples)
        scored = batch.scored
        target = torch.where(scored > 0, batch.targets, 0)
        p_label = probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        hits = (probs.argmax(-1) == target).float() * scored
        metrics = self._totals(split)
        metrics["correct"].update(hits.sum())
        metrics["pred_nll"].update(-(torch.log(p_label.clamp_min(1e-30)) * scored).sum())
        self._accumulate_sizes(split, batch, hits, scored)

    @torch.no_grad()
    def _accumulate_values(self, split: str, batch: SequenceBatch, samples: int) -> None:
        """Regression: a hit is a prediction that rounds to the label; and the absolute error. The
        predictions never read the targets."""
        assert isinstance(self.model, PredictsValues)
        predicted = self.model.predict_value(batch, samples)
        scored = batch.scored
        target = torch.where(scored > 0, batch.targets[..., 0], 0.0)
        hits = (predicted.round() == target).float() * scored
        metrics = self._totals(split)
        metrics["correct"].update(hits.sum())
        abs_err = torch.where(scored > 0, (predicted - target).abs(), 0.0)
        metrics["abs_err"].update(abs_err.sum())
        self._accumulate_sizes(split, batch, hits, scored, abs_err)

    def _accumulate_sizes(self, split: str, batch: SequenceBatch, hits: Tensor, scored: Tensor,
                          abs_err: Tensor | None = None) -> None:
        if batch.sizes is not None and split in ("val", "test"):
            series = self.size_series[f"{split}_sizes"]
            series["sizes"].update(batch.sizes.float())
            series["size_correct"].update(hits.sum(1))
            series["size_steps"].update(scored.sum(1))
            series["size_abs_err"].update((abs_err if abs_err is not None else torch.zeros_like(hits)).sum(1))

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor | None:
        weights = self.weights()
        loss, sums = self.objective(batch, weights)
        if self.regularizer is not None:
            loss = self._regularize(loss, batch)
        if not torch.isfinite(loss):
            return self._skip_nonfinite(sums)
        self.nonfinite_streak = 0
        self._accumulate("train", batch, sums)
        if self._writes_step_metrics():
            n = batch.batch_size
            steps = batch.scored.sum()
            self.log("train/loss_step", loss.detach(), prog_bar=True, batch_size=n)
            for k in _TERMS:
                self.log(f"train/{k}_step", self._per_unit(sums[k].detach().sum(), n, steps), batch_size=n)
            self.log("train/w_kl", weights["kl"], batch_size=n)
            self.log("train/w_aux", weights["aux"], batch_size=n)
            self.log("train/w_bwd", weights["bwd"], batch_size=n)
        return loss

    def _writes_step_metrics(self) -> bool:
        """Whether the loggers write this update's step metrics: every ``trainer.log_every_n_steps``
        updates, as Lightning decides (and the update after which training stops). ``self.log``
        costs about as much as a fifth of a small model's step, so the other updates skip it; the
        progress bar shows the value of the last written update."""
        if self._trainer is None:
            return True
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return trainer.should_stop or (every > 0 and (self.global_step + 1) % every == 0)

    def _regularize(self, loss: Tensor, batch: SequenceBatch) -> Tensor:
        """Add the weighted penalty (not computed while its weight is 0) and log both."""
        assert self.regularizer is not None
        name, weight = self.regularizer.name, self.regularizer_weight(self.global_step)
        self.log(f"train/w_{name}", weight, batch_size=batch.batch_size)
        if weight == 0.0:
            return loss
        penalty = self.regularizer(self.model, batch)
        self.log(f"train/{name}", penalty.detach(), prog_bar=True, batch_size=batch.batch_size)
        return loss + weight * penalty

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
        if self.measures_flips:
            self._accumulate_flips(batch, batch_idx)

    def _accumulate_flips(self, batch: SequenceBatch, batch_idx: int) -> None:
        """Permutation flips (and, for regression, the prediction's spread) on the batch's first
        ``flip_sequences`` sequences, seeded by the batch index."""
        n = min(self.flip_sequences, batch.batch_size)
        head = SequenceBatch(inputs=batch.inputs[:n], targets=batch.targets[:n], mask=batch.mask[:n])
        generator = torch.Generator().manual_seed(_FLIP_SEED + batch_idx)
        if self.spec.regression:
            assert isinstance(self.model, PredictsValues)
            flips, trials, spread = permutation_spread(self.model, head, self.flip_permutations, generator,
                                                       self.class_samples)
            self.flip_totals["spread"].update(spread)
        else:
            assert isinstance(self.model, PredictsClasses)
            flips, trials = permutation_flips(self.model, head, self.flip_permutations, generator, self.class_samples)
        self.flip_totals["flips"].update(flips)
        self.flip_totals["flip_trials"].update(trials)

    # ------------------------------------------------------------------ epoch metrics
    def _per_unit(self, total: Tensor, sequences: float, steps: Tensor) -> Tensor:
        return total / (steps if self.spec.per_token else sequences)

    def epoch_metrics(self, split: str) -> dict[str, float]:
        """Exact epoch metrics from the accumulated sums, in the data's units."""
        self._sync_running(split)
        s = {k: m.compute() for k, m in self._totals(split).items()}
        n_seq, n_steps = s["sequences"], s["steps"]
        out = {k: self._per_unit(s[k], n_seq, n_steps) for k in _TERMS}
        out["loss"] = s["loss"] / n_seq
        bound = self._per_unit(s["nll"] + s["kl"], n_seq, n_steps)
        out["neg_elbo"] = bound
        out["elbo"] = -bound
        if split == "val":
            out[OBJECTIVE] = self._per_unit(weighted_terms(s, self.settled_weights()), n_seq, n_steps)
        out["nats_per_step"] = (s["nll"] + s["kl"]) / n_steps
        out["bpd"] = out["nats_per_step"] / (self.spec.dims_per_step * math.log(2.0))
        if self.spec.per_token:
            out["ppl"] = torch.exp(bound)
        if self.spec.labelled:
            out["acc"] = s["correct"] / n_steps
            if self.spec.classes is not None:
                out["pred_nll"] = s["pred_nll"] / n_steps
            else:
                out["mae"] = s["abs_err"] / n_steps
            out.update(self._accuracy_per_size(split))
        if split == "test" and self.measures_flips and self.flip_totals["flip_trials"].update_called:
            trials = self.flip_totals["flip_trials"].compute()
            out["perm_flip_rate"] = self.flip_totals["flips"].compute() / trials
            if self.spec.regression:
                out["perm_spread"] = self.flip_totals["spread"].compute() / (trials / self.flip_permutations)
        return {f"{split}/{k}": float(v) for k, v in out.items()}

    def _accuracy_per_size(self, split: str) -> dict[str, Tensor]:
        """``acc_len<size>`` (and for regression ``mae_len<size>``) for every task size seen in this
        epoch's batches: a sum regressed at size 100 is rarely exact, so its error says how far off."""
        key = f"{split}_sizes"
        if key not in self.size_series or not self.size_series[key]["sizes"].update_called:
            return {}
        sizes, correct, steps, abs_err = (torch.atleast_1d(self.size_series[key][k].compute()) for k in _SIZE_SERIES)
        out = {}
        for size in sorted(set(sizes.long().tolist())):
            pick = sizes.long() == size
            out[f"acc_len{size}"] = correct[pick].sum() / steps[pick].sum()
            if self.spec.regression:
                out[f"mae_len{size}"] = abs_err[pick].sum() / steps[pick].sum()
        return out

    def _log_epoch(self, split: str) -> None:
        self._sync_running(split)
        if int(self._totals(split)["sequences"].compute()) == 0:
            return
        for k, v in self.epoch_metrics(split).items():
            self.log(k, v, prog_bar=k in ("val/neg_elbo", "train/loss"))
        self.reset_epoch_metrics(split)

    def reset_epoch_metrics(self, split: str) -> None:
        """Start a split's sums afresh (after they were logged)."""
        self._running.pop(split, None)
        for m in self._totals(split).values():
            m.reset()
        for m in (self.size_series[f"{split}_sizes"].values() if f"{split}_sizes" in self.size_series else ()):
            m.reset()
        if split == "test":
            for m in self.flip_totals.values():
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
            # strict=False: an epoch that ends before the first validation (validation every N
            # updates) leaves the scheduler as it is instead of failing the run
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch",
                             "strict": False},
        }

    def nonfinite_state(self) -> dict[str, int]:
        """The skipped-update counters a resumed run must continue from (runs/checkpoint.py stores them)."""
        return {"total": self.nonfinite_total, "streak": self.nonfinite_streak}

    def restore_nonfinite_state(self, state: dict[str, Any]) -> None:
        self.nonfinite_total = int(state.get("total", 0))
        self.nonfinite_streak = int(state.get("streak", 0))

    def train_sums_state(self) -> dict[str, Tensor]:
        """The running sums of the training epoch in progress: a run resumed mid-epoch reports the
        whole epoch, not only the batches after the resume (runs/checkpoint.py stores them)."""
        self._sync_running("train")
        return {k: m.compute().detach().cpu() for k, m in self._totals("train").items() if m.update_called}

    def restore_train_sums(self, state: dict[str, Tensor]) -> None:
        self._running.pop("train", None)
        for k, m in self._totals("train").items():
            m.reset()
            if k in state:
                m.update(state[k].to(self.device))
        if any(k in state for k in _SUMS):
            dtype = self._totals("train")["loss"].dtype
            running = self._running["train"] = torch.zeros(len(_SUMS), dtype=dtype, device=self.device)
            for i, k in enumerate(_SUMS):
                if k in state:
                    running[i] += state[k].to(self.device, dtype)
