"""Loss-weight schedules as functions of the number of optimizer updates done so far.

They are stateless (the step counter lives in the trainer and in checkpoints), so a
resumed run continues its KL and aux weights exactly where they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class WeightSchedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class Constant:
    """The same weight at every update."""

    value: float

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LinearRamp:
    """Moves from ``start`` towards ``end`` by ``increment`` per update, then stays at ``end``.

    Works in both directions (``increment`` is a magnitude). The paper's KL annealing is
    ``LinearRamp(start=0.2, increment=5e-5, end=1.0)``: weight 1 after 16,000 updates.
    At update ``step`` (0-based) the weight used is ``start ± step * increment``.
    """

    start: float
    increment: float
    end: float

    def __post_init__(self) -> None:
        if self.increment < 0:
            raise ValueError(f"LinearRamp.increment is a magnitude and must be >= 0, got {self.increment}")

    def __call__(self, step: int) -> float:
        if self.end >= self.start:
            return float(min(self.start + step * self.increment, self.end))
        return float(max(self.start - step * self.increment, self.end))


@dataclass(frozen=True)
class Delayed:
    """Zero for the first ``after`` updates, then ``value``, reached linearly over ``ramp`` updates.

    A penalty that would stop a model from fitting its task when on from the start (e.g. SIRE
    at a large weight) can be switched on once the task is fitted.
    """

    value: float
    after: int
    ramp: int = 0

    def __post_init__(self) -> None:
        if self.after < 0 or self.ramp < 0:
            raise ValueError(f"Delayed.after and Delayed.ramp are update counts >= 0, got {self.after} and {self.ramp}")

    def __call__(self, step: int) -> float:
        if step < self.after:
            return 0.0
        if self.ramp == 0:
            return float(self.value)
        return float(self.value * min(1.0, (step - self.after + 1) / self.ramp))
