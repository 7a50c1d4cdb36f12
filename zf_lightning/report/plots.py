"""``curves.png``: validation ELBO and KL against the update step, one line per row, the mean over
seeds with a ±1 standard deviation band."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from zf_lightning.report.jobs import CURVE_KEYS
from zf_lightning.report.rows import Row, display_names


def mean_band(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and sample standard deviation at every step any job logged (over the jobs that logged a
    finite value there: a diverged run's NaN would otherwise break the statistics and the plot)."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, value in points:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def write_curves(path: Path, rows: list[Row], keys: Iterable[str] = CURVE_KEYS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for row, name in zip(rows, display_names(rows), strict=True):
            series = [j.curves[key] for j in row.jobs if j.curves.get(key)]
            if not series:
                continue
            steps, means, stds = mean_band(series)
            line = ax.plot(steps, means, marker="o" if len(steps) < 20 else None, label=name)[0]
            ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

