"""Accuracy heatmaps of a capacity sweep (``sweep=capacity``): one panel per model, width on
one axis and task length on the other, each cell the mean test accuracy over seeds; plus the
same numbers as markdown tables. Jobs are read by the report; this module only needs their
overrides and metrics, so any sweep over these keys gets the picture.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

PANEL_KEY = "model"
WIDTH_KEY = "width"
LENGTH_KEY = "data.length"
ACCURACY = "test/acc"
CHANCE = "test/chance_acc"  # the data's order-blind chance level (``ClassificationTask.chance_accuracy``)
SOLVED = 0.95  # mean accuracy at which a (model, width, length) cell counts as solving the task

# panel -> (width, length) -> accuracies of the jobs (one per seed)
Grid = dict[str, dict[tuple[int, int], list[float]]]


class SweepJob(Protocol):
    """What a heatmap reads from a job (the report's ``Job``)."""

    name: str
    overrides: dict[str, str]
    metrics: dict[str, float]

    @property
    def ok(self) -> bool: ...


def _as_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def capacity_grid(jobs: Iterable[SweepJob], metric: str = ACCURACY) -> Grid:
    """Group finished jobs that set both a width and a length by model; empty when none does."""
    grid: Grid = {}
    for job in jobs:
        width, length = _as_int(job.overrides.get(WIDTH_KEY)), _as_int(job.overrides.get(LENGTH_KEY))
        value = job.metrics.get(metric, math.nan)
        if not job.ok or width is None or length is None or not math.isfinite(value):
            continue
        panel = job.overrides.get(PANEL_KEY, "model")
        grid.setdefault(panel, {}).setdefault((width, length), []).append(value)
    return grid


def chance_by_length(jobs: Iterable[SweepJob], computed: Mapping[str, float] | None = None) -> dict[int, float]:
    """The chance accuracy of each length, from the jobs that logged it, else from the level
    ``computed`` for the job from its data config (by job name). It depends only on the data, so
    every job at a length should carry the same value; a length whose jobs disagree (a sweep that
    also varied the data, e.g. the task's label count) gets none rather than one picked at random."""
    computed = computed or {}
    seen: dict[int, set[float]] = {}
    for job in jobs:
        length = _as_int(job.overrides.get(LENGTH_KEY))
        value = job.metrics.get(CHANCE, computed.get(job.name, math.nan))
        if job.ok and length is not None and math.isfinite(value):
            seen.setdefault(length, set()).add(round(value, 9))
    return {length: values.pop() for length, values in seen.items() if len(values) == 1}


# the capacity studies' test examples per length (data.num_test): what a cell's noise is judged by
TEST_EXAMPLES = 500
AT_CHANCE = "†"


def at_chance(value: float, chance: float | None, examples: int = TEST_EXAMPLES) -> bool:
    """Whether an accuracy is within two binomial standard errors of the chance level, or below
    it: such a cell shows no more than what a rule blind to the order of the tokens gets."""
    if chance is None or not math.isfinite(value):
        return False
    return value <= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / examples)


def _axes(cells: Mapping[tuple[int, int], list[float]]) -> tuple[list[int], list[int]]:
    return sorted({w for w, _ in cells}), sorted({n for _, n in cells})


def heatmap_tables(grid: Grid, metric: str = ACCURACY, chance: Mapping[int, float] | None = None) -> list[str]:
    """Markdown: per model, rows = widths, columns = lengths, cells = mean metric (n seeds when > 1);
    a last row ``chance`` where the jobs logged the data's chance level (accuracy only), and every
    cell within noise of it or below it marked ``†``."""
    chance = chance or {}
    lines: list[str] = []
    for panel, cells in grid.items():
        widths, lengths = _axes(cells)
        lines += [f"### {PANEL_KEY}={panel}: {metric}", "",
                  "| width \\ length | " + " | ".join(str(n) for n in lengths) + " |",
                  "|---" * (len(lengths) + 1) + "|"]
        for width in widths:
            entries = []
            for length in lengths:
                values = cells.get((width, length), [])
                mean = statistics.fmean(values) if values else math.nan
                text = f"{mean:.3f}" if values else "–"
                mark = f" {AT_CHANCE}" if metric == ACCURACY and at_chance(mean, chance.get(length)) else ""
                entries.append(text + mark + (f" (n={len(values)})" if len(values) > 1 else ""))
            lines.append(f"| {width} | " + " | ".join(entries) + " |")
        if metric == ACCURACY and any(n in chance for n in lengths):
            lines.append("| chance | " + " | ".join(f"{chance[n]:.3f}" if n in chance else "–" for n in lengths) + " |")
        lines.append("")
    return lines


def width_needed(cells: Mapping[tuple[int, int], list[float]], length: int,
                 threshold: float = SOLVED) -> int | None:
    """The smallest width whose mean accuracy at ``length`` reaches ``threshold`` (None: no width
    run did). This is the quantity the separations are about: how the width a model needs grows
    with the length."""
    solved = [w for (w, n), values in cells.items() if n == length and statistics.fmean(values) >= threshold]
    return min(solved, default=None)


def width_needed_table(grid: Grid, threshold: float = SOLVED) -> list[str]:
    """Markdown: rows = models, columns = lengths, cells = the smallest width that solves the
    length (``> w_max`` when none of the widths run did)."""
    lengths = sorted({n for cells in grid.values() for _, n in cells})
    lines = [f"### Smallest width with mean accuracy >= {threshold:g}", "",
             "| model \\ length | " + " | ".join(str(n) for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for panel, cells in grid.items():
        widest = max(w for w, _ in cells)
        entries = []
        for length in lengths:
            if not any(n == length for _, n in cells):
                entries.append("–")
                continue
            needed = width_needed(cells, length, threshold)
            entries.append(str(needed) if needed is not None else f"> {widest}")
        lines.append(f"| {panel} | " + " | ".join(entries) + " |")
    return [*lines, ""]


def write_heatmaps(path: Path, grid: Grid, metric: str = ACCURACY, chance: Mapping[int, float] | None = None) -> None:
    """One panel per model: width (rows) x length (columns), colour = mean metric in [0, 1]; cells
    within noise of the chance level or below it are marked ``†``."""
    chance = chance or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(grid)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, layout="constrained")
    image = None
    for ax, panel in zip(axes[0], panels, strict=True):
        cells = grid[panel]
        widths, lengths = _axes(cells)
        values = [[statistics.fmean(cells[(w, n)]) if (w, n) in cells else math.nan for n in lengths]
                  for w in widths]
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower", aspect="auto")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if math.isfinite(value):
                    mark = AT_CHANCE if metric == ACCURACY and at_chance(value, chance.get(lengths[j])) else ""
                    ax.text(j, i, f"{value:.2f}{mark}", ha="center", va="center", fontsize=8,
                            color="black" if value > 0.6 else "white")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("length")
        ax.set_ylabel("width")
        ax.set_title(f"{PANEL_KEY}={panel}")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=metric, shrink=0.9)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capacity_headline(jobs: Iterable[SweepJob], headline: str, default: str) -> str:
    """Classification sweeps lead with accuracy unless another headline was asked for."""
    done = [j for j in jobs if j.ok]
    if headline == default and done and all(ACCURACY in j.metrics for j in done):
        return ACCURACY
    return headline


def add_capacity_heatmaps(jobs: Iterable[SweepJob], out_dir: Path, report: Path, metric: str = ACCURACY,
                          computed_chance: Mapping[str, float] | None = None) -> bool:
    """Write ``heatmap.png`` and append the heatmap section to ``report`` when the sweep varies
    width and length; returns whether it did. ``computed_chance``: job name -> chance level
    computed from its data config, for jobs that did not log ``test/chance_acc``."""
    jobs = list(jobs)
    grid = capacity_grid(jobs, metric)
    if not grid:
        return False
    chance = chance_by_length(jobs, computed_chance)
    write_heatmaps(out_dir / "heatmap.png", grid, metric, chance)
    section = ["## Capacity heatmaps", "", f"![{metric} by width and length, one panel per model](heatmap.png)", ""]
    if metric == ACCURACY and chance:
        section += [f"{AT_CHANCE}: within two binomial standard errors of the chance level ({TEST_EXAMPLES} test "
                    "examples per length) or below it.", ""]
        computed = [j for j in jobs if j.ok and CHANCE not in j.metrics and j.name in (computed_chance or {})]
        if computed:
            section += [f"{len(computed)} of {len(jobs)} jobs did not log {CHANCE}: their chance level was computed "
                        "from the study's data config (chance.csv, scripts/chance_levels.py).", ""]
    elif metric == ACCURACY:
        section += ["The jobs logged no chance level (test/chance_acc): cells cannot be read against it here.", ""]
    section += heatmap_tables(grid, metric, chance)
    if metric == ACCURACY:
        section += width_needed_table(grid)
    with report.open("a") as fh:
        fh.write("\n" + "\n".join(section))
    return True
