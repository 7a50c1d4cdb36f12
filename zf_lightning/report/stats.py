"""Paired comparisons of rows over seeds: the statistics a study's conclusion rests on.

Two rows of a study that share seeds (same data order, same initialisation) are compared by
the per-seed differences d_s = other_s - baseline_s, which removes the variation that both
rows share. We report the mean difference, its standard error sd(d) / sqrt(n) and a 95 %
t-interval on n - 1 degrees of freedom (Student's t on the paired differences), and a verdict
that says only what the interval allows: better or worse when it excludes zero, otherwise
no difference detectable at this n.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

BETTER, WORSE, NO_DIFFERENCE, CANNOT_TELL = "better", "worse", "no difference at this n", "cannot tell"


@dataclass(frozen=True)
class PairedDifference:
    """other - baseline over the seeds both rows have."""

    seeds: tuple[str, ...]
    mean: float
    se: float  # standard error of the mean difference (nan for n < 2)
    low: float  # 95 % t-interval (nan for n < 2)
    high: float
    verdict: str

    @property
    def n(self) -> int:
        return len(self.seeds)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, standard error and the two-sided t-interval of the mean of ``values``."""
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(n)
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * se
    return mean, se, mean - half, mean + half


def paired_difference(baseline: dict[str, float], other: dict[str, float], higher_is_better: bool,
                      level: float = 0.95) -> PairedDifference:
    """Compare ``other`` with ``baseline`` (both keyed by seed) on the seeds they share."""
    seeds = tuple(s for s in baseline if s in other and math.isfinite(baseline[s]) and math.isfinite(other[s]))
    diffs = [other[s] - baseline[s] for s in seeds]
    mean, se, low, high = t_interval(diffs, level)
    if len(seeds) < 2:
        verdict = f"{CANNOT_TELL} (n={len(seeds)})"
    elif low > 0 or high < 0:
        verdict = BETTER if (low > 0) == higher_is_better else WORSE
    else:
        verdict = NO_DIFFERENCE
    return PairedDifference(seeds, mean, se, low, high, verdict)


def difference_text(diff: PairedDifference) -> str:
    """``mean [low, high], n=..`` with as many places as the interval's width needs, so a difference
    of a few thousandths of a nat per word is not printed as 0.0 nor one of hundreds with decimals."""
    scale = abs(diff.mean) if math.isnan(diff.low) else diff.high - diff.low
    places = max(1, 2 - math.floor(math.log10(scale))) if scale > 0 else 1
    text = f"{diff.mean:+.{places}f}"
    if not math.isnan(diff.low):
        text += f" [{diff.low:.{places}f}, {diff.high:.{places}f}]"
    return f"{text}, n={diff.n}"


def higher_is_better(metric: str) -> bool:
    """Bounds (``elbo``, ``iwae_K``) and accuracies grow with quality; NLLs, bits, perplexities and
    the per-step / per-dimension forms of the bounds (``iwae_K_bpd``: NLL convention) shrink."""
    name = metric.rsplit("/", 1)[-1]
    return re.fullmatch(r"elbo|iwae_\d+|(probe_)?acc(_len\d+)?", name) is not None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values, and a nan mean for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan
