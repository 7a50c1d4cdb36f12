"""Why a run stopped, and at which update its best checkpoint was taken.

A study compares runs that were capped in different ways: some converged (early stopping on
the validation bound ran out of patience), some hit the update cap, some the wall-clock
budget. Each job records which, so a table never mixes a converged row with a capped one
without saying so.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from zf_lightning.runs.checkpoint import load_checkpoint

CONVERGED = "converged"  # early stopping: no improvement for `patience` validations
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


def stop_reason(trainer: L.Trainer) -> str:
    """Why ``trainer.fit`` returned: the update cap when it was reached (early stopping held back by
    ``min_steps`` up to the cap did not end the run), else early stopping, the time budget, the epochs."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return MAX_STEPS
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopping_reason in _EARLY_STOPPING:
            return _EARLY_STOPPING[callback.stopping_reason]
    for callback in trainer.callbacks:
        remaining = callback.time_remaining("train") if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return TIME_LIMIT
    if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch:
        return MAX_EPOCHS
    return STOPPED


def checkpoint_step(path: str | Path | None) -> int | None:
    """The update at which a checkpoint was written (None without one)."""
    return int(load_checkpoint(Path(path)).get("global_step", 0)) if path else None
