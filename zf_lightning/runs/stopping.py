"""Why a run stopped, at which update its best checkpoint was taken, and how its validation ended
(diverged, or its bound fell while its objective improved).

A study compares runs that were capped in different ways: some converged (early stopping on
the validation bound ran out of patience), some hit the update cap, some the wall-clock
budget. Each job records which, so a table never mixes a converged row with a capped one
without saying so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from zf_lightning.lit.module import VAL_OBJECTIVE
from zf_lightning.runs.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CONVERGED = "converged"  # early stopping: no improvement for `patience` validations, or a plateau
NOT_FINITE = "not_finite"  # early stopping: the monitored bound became NaN or infinite
MAX_STEPS = "max_steps"
MAX_EPOCHS = "max_epochs"
TIME_LIMIT = "time_limit"
STOPPED = "stopped"  # none of the above (e.g. another callback asked the trainer to stop)

_EARLY_STOPPING = {
    EarlyStoppingReason.PATIENCE_EXHAUSTED: CONVERGED,
    EarlyStoppingReason.STOPPING_THRESHOLD: CONVERGED,
    EarlyStoppingReason.NON_FINITE_METRIC: NOT_FINITE,
    EarlyStoppingReason.DIVERGENCE_THRESHOLD: NOT_FINITE,
}


class EarlyStoppingAfter(EarlyStopping):
    """Lightning's ``EarlyStopping`` that neither counts nor remembers validations before update
    ``start_step``. Lightning's own ``trainer.min_steps`` only delays a stop that early stopping
    has already decided (and never takes back): with patience spent during a loss-weight ramp, a
    run would stop right at ``min_steps`` even if its bound had started improving again. Here the
    patience and the best value start at ``start_step`` (e.g. when the schedules end)."""

    def __init__(self, *args: Any, start_step: int | None = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step = int(start_step or 0)

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return super()._should_skip_check(trainer) or trainer.global_step < self.start_step


class PlateauStopping(Callback):
    """Stops a run once its validation bound (lower is better) has stopped improving, relative to
    how much it has improved: the bound smoothed over the last ``smooth`` validations gained less
    than ``min_fraction`` of its total gain over the last ``window`` updates. A fixed minimum
    gain (``EarlyStopping``'s ``min_delta``) cannot tell a plateau from a slow climb on bounds of
    thousands of nats; this rule records ``converged`` only for a curve that has flattened.

    Validations before ``start_step`` (e.g. while loss weights ramp) are not counted; the total
    gain is measured from the first smoothed value after it. A non-finite bound stops the run as
    ``not_finite``. The history rides in checkpoints, so a resumed run decides as if never stopped."""

    def __init__(self, monitor: str = "val/neg_elbo", window: int = 4000, min_fraction: float = 0.02,
                 smooth: int = 4, start_step: int = 0) -> None:
        if window < 1 or smooth < 1 or not 0.0 < min_fraction < 1.0:
            raise ValueError(f"PlateauStopping needs window >= 1, smooth >= 1 and 0 < min_fraction < 1, got "
                             f"window={window}, smooth={smooth}, min_fraction={min_fraction}")
        self.monitor = monitor
        self.window = int(window)
        self.min_fraction = float(min_fraction)
        self.smooth = int(smooth)
        self.start_step = int(start_step or 0)
        self.history: list[tuple[int, float]] = []
        self.reason: str | None = None

    def smoothed(self) -> list[tuple[int, float]]:
        """``(update, mean of the last smooth values)`` for every validation with enough before it."""
        values = [v for _, v in self.history]
        return [(step, sum(values[i + 1 - self.smooth:i + 1]) / self.smooth)
                for i, (step, _) in enumerate(self.history) if i + 1 >= self.smooth]

    def decide(self) -> str | None:
        """``converged`` or ``not_finite`` when the run should stop now, else None."""
        if self.history and not math.isfinite(self.history[-1][1]):
            return NOT_FINITE
        curve = self.smoothed()
        if not curve:
            return None
        now_step, now = curve[-1]
        earlier = [value for step, value in curve if step <= now_step - self.window]
        if not earlier:
            return None
        gained, total = earlier[-1] - now, curve[0][1] - now
        return CONVERGED if gained < self.min_fraction * max(total, 0.0) or gained <= 0 else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or trainer.global_step < self.start_step:
            return
        self.history.append((int(trainer.global_step), float(value)))
        self.reason = self.decide()
        if self.reason is not None:
            trainer.should_stop = True
            log.info("stopping at update %d: %s (%s)", trainer.global_step, self.reason, self.describe())

    def describe(self) -> str:
        curve = self.smoothed()
        if len(curve) < 2:
            return f"{self.monitor} {self.history[-1][1]:.6g}" if self.history else "no validation"
        return (f"smoothed {self.monitor} {curve[-1][1]:.6g}, total gain {curve[0][1] - curve[-1][1]:.6g} since update "
                f"{curve[0][0]}; rule: a gain under {self.min_fraction:g} of it over {self.window} updates")

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(p) for p in self.history], "reason": self.reason}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(s), float(v)) for s, v in state_dict.get("history") or []]
        self.reason = state_dict.get("reason")


def stop_reason(trainer: L.Trainer) -> str:
    """Why ``trainer.fit`` returned: the update cap when it was reached (early stopping held back by
    ``min_steps`` up to the cap did not end the run), else early stopping, the time budget, the epochs."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return MAX_STEPS
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopping_reason in _EARLY_STOPPING:
            return _EARLY_STOPPING[callback.stopping_reason]
        if isinstance(callback, PlateauStopping) and callback.reason is not None:
            return callback.reason
    for callback in trainer.callbacks:
        remaining = callback.time_remaining("train") if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return TIME_LIMIT
    if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch:
        return MAX_EPOCHS
    return STOPPED


def checkpoint_step(path: str | Path | None, also_trusted: Collection[str] = ()) -> int | None:
    """The update at which a checkpoint was written (None without one); ``also_trusted``: the
    targets of the config that wrote it (a run reads back its own checkpoint)."""
    return int(load_checkpoint(Path(path), also_trusted).get("global_step", 0)) if path else None


def got_worse(first: float, last: float) -> bool:
    """A value (lower is better) got worse when its last value is not finite or is above its first."""
    return not math.isfinite(last) or (math.isfinite(first) and last > first)


DIVERGED = "diverged"
BOUND_FELL = "bound fell while the objective improved"
OBJECTIVE_NOT_RECORDED = "objective not recorded"


@dataclass(frozen=True)
class RunEnding:
    """How a run's validation ended against its first validation: whether its bound fell (the
    ELBO ended lower, or not finite) and whether it diverged (the objective it trains ended worse,
    or the objective or the bound went non-finite). The two differ when a weighted term other than
    the bound (e.g. the aux cost) dominates the objective: the optimizer then improves what it is
    asked to while the bound falls, which is no divergence. ``None``: not recorded."""

    bound_fell: bool | None
    diverged: bool | None

    @classmethod
    def of(cls, bound: tuple[float, float] | None, objective: tuple[float, float] | None) -> RunEnding:
        """From the (first, last) validation values of the negative bound and of the objective,
        both lower is better; either may be missing."""
        bound_fell = None if bound is None else got_worse(*bound)
        broke = bound is not None and not math.isfinite(bound[1])
        return cls(bound_fell, True if broke else None if objective is None else got_worse(*objective))

    @property
    def verdict(self) -> str | None:
        """``diverged``, ``bound fell while the objective improved``, ``objective not recorded``
        (where it would decide), or None for a run that ended no worse than it began."""
        if self.diverged:
            return DIVERGED
        if self.diverged is None and self.bound_fell is not False:
            return OBJECTIVE_NOT_RECORDED
        return BOUND_FELL if self.bound_fell else None


class DivergenceWatch(Callback):
    """Remembers the monitored validation bound and the validation objective (both lower is better)
    at the first and the latest validation, across resumes (its state rides in the checkpoints), so
    a run whose objective ended worse than where it started (e.g. a learning rate far too high) is
    said to have diverged, in the log and in status.json, instead of ending as a plain 'completed';
    and a run whose bound fell while its objective improved is named so, not called diverged."""

    def __init__(self, monitor: str, objective: str = VAL_OBJECTIVE) -> None:
        self.monitor = monitor
        self.objective = objective
        self.first: float | None = None
        self.last: float | None = None
        self.objective_first: float | None = None
        self.objective_last: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        objective = trainer.callback_metrics.get(self.objective)
        objective = None if objective is None else float(objective)
        if self.first is None:
            self.first, self.objective_first = float(value), objective
        self.last, self.objective_last = float(value), objective

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "objective_first": self.objective_first,
                "objective_last": self.objective_last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first, self.last = state_dict.get("first"), state_dict.get("last")
        self.objective_first, self.objective_last = state_dict.get("objective_first"), state_dict.get("objective_last")

    def ending(self) -> RunEnding | None:
        """None before the first validation; the objective is missing for a module that does not log it."""
        if self.first is None or self.last is None:
            return None
        objective = None if self.objective_first is None or self.objective_last is None else (
            self.objective_first, self.objective_last)
        return RunEnding.of((self.first, self.last), objective)

    def report(self) -> dict[str, Any]:
        """Fields for status.json (none before a validation); warns when the run diverged or its
        bound fell while its objective improved."""
        ending = self.ending()
        if ending is None:
            return {}
        values = (f"{self.objective} was {self.objective_first:.6g} at the first validation and "
                  f"{self.objective_last:.6g} at the last, {self.monitor} {self.first:.6g} and {self.last:.6g}"
                  if self.objective_first is not None and self.objective_last is not None else
                  f"{self.monitor} was {self.first:.6g} at the first validation and {self.last:.6g} at the last")
        if ending.verdict == DIVERGED:
            log.warning("training diverged: %s (lower is better); lower the learning rate (optim.lr)", values)
        elif ending.verdict == BOUND_FELL:
            log.warning("the bound fell while the objective improved: %s (lower is better); a weighted term other "
                        "than the bound (e.g. the aux cost) dominates the objective: lower its weight", values)
        elif ending.bound_fell:
            log.warning("the bound fell: %s (lower is better); %s was not logged, so whether training diverged "
                        "cannot be told", values, self.objective)
        return {"diverged": ending.diverged, "bound_fell": ending.bound_fell,
                "first_and_last_validation": {
                    self.monitor: [self.first, self.last],
                    self.objective: [self.objective_first, self.objective_last]}}
