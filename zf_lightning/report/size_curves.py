"""Accuracy against test size (``test/acc_len<N>``), the picture of length generalization: one
panel per data set, one line per row, the mean over seeds with its 95 % Student-t interval, and
the accuracy of a guess that ignores the input (``test/guess_acc_len<N>``, where the jobs logged
it) as the level a row must clear; plus the same numbers as a markdown table. Regression jobs
get the same for their mean absolute error (``test/mae_len<N>``, ``test/guess_mae_len<N>``), since
a sum regressed at a large size is rarely exact and its error says how far off it is. Used for the
set tasks (trained on small sets, tested on larger ones) and any sweep whose jobs report accuracy
at several test sizes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from zf_lightning.report.jobs import Job
from zf_lightning.report.rows import Row
from zf_lightning.report.stats import paired_difference, t_interval
from zf_lightning.report.tables import budget_verdict

GUESS = "input-blind guess"  # the line and table row of ``test/guess_<metric>_len<N>``


@dataclass(frozen=True)
class SizeMetric:
    """A metric logged per test size as ``test/<name>_len<N>`` (and its input-blind guess as
    ``test/guess_<name>_len<N>``), with how to read and draw it."""

    name: str
    title: str  # the report section's subject and the figure's y label
    image: str
    higher_is_better: bool
    unit_interval: bool  # an accuracy: bands and axes drawn within [0, 1]
    guess_is: str  # what the input-blind guess is, for the report's text

    @property
    def key(self) -> re.Pattern[str]:
        return re.compile(rf"^test/{self.name}_len(\d+)$")

    @property
    def guess_key(self) -> re.Pattern[str]:
        return re.compile(rf"^test/guess_{self.name}_len(\d+)$")


ACCURACY = SizeMetric("acc", "test accuracy", "size_curves.png", True, True, "the most frequent label at that size")
ERROR = SizeMetric("mae", "test mean absolute error", "size_errors.png", False, False,
                   "the median label at that size, the constant with the least error")
SIZE_METRICS = (ACCURACY, ERROR)

# panel (data set) -> line (row name) -> size -> values (one per seed)
SizeSeries = dict[str, dict[str, dict[int, list[float]]]]
# panel (data set) -> size -> the value of a guess that ignores the input
Guesses = dict[str, dict[int, float]]


def sizes_of(metrics: dict[str, float], key: re.Pattern[str] = ACCURACY.key) -> dict[int, float]:
    """``{N: value}`` from a job's ``test/acc_len<N>`` metrics (or another per-size ``key``)."""
    return {int(m.group(1)): v for k, v in metrics.items() if (m := key.match(k)) and math.isfinite(v)}


def add_job(series: SizeSeries, panel: str, line: str, metrics: dict[str, float],
            guesses: Guesses | None = None, metric: SizeMetric = ACCURACY) -> None:
    for size, value in sizes_of(metrics, metric.key).items():
        series.setdefault(panel, {}).setdefault(line, {}).setdefault(size, []).append(value)
    if guesses is not None:
        guesses.setdefault(panel, {}).update(sizes_of(metrics, metric.guess_key))


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of the mean over seeds (the mean twice for a single seed)."""
    mean, _, low, high = t_interval(values)
    return (mean, mean, mean) if math.isnan(low) else (mean, low, high)


def has_curves(series: SizeSeries) -> bool:
    """Worth drawing: some line has accuracies at two or more sizes."""
    return any(len(points) > 1 for lines in series.values() for points in lines.values())


def size_tables(series: SizeSeries, guesses: Guesses | None = None) -> list[str]:
    """Markdown: per panel, rows = lines, columns = test sizes, cells = mean [95 % t-interval] (n);
    a last row with the input-blind guess where the jobs logged it."""
    lines: list[str] = []
    for panel, rows in series.items():
        sizes = sorted({s for points in rows.values() for s in points})
        lines += [f"**{panel}**", "", "| row | " + " | ".join(f"size {s}" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for name, points in rows.items():
            cells = []
            for s in sizes:
                if s not in points:
                    cells.append("–")
                    continue
                mean, low, high = interval(points[s])
                spread = "" if len(points[s]) < 2 else f" [{low:.3f}, {high:.3f}]"
                cells.append(f"{mean:.3f}{spread} (n={len(points[s])})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        guess = (guesses or {}).get(panel, {})
        if guess:
            lines.append(f"| *{GUESS}* | " + " | ".join(f"{guess[s]:.3f}" if s in guess else "–" for s in sizes) + " |")
        lines.append("")
    return lines


def write_size_curves(path: Path, series: SizeSeries, guesses: Guesses | None = None,
                      metric: SizeMetric = ACCURACY) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, points in series[panel].items():
            sizes = sorted(points)
            stats = [interval(points[s]) for s in sizes]
            line = ax.plot(sizes, [m for m, _, _ in stats], marker="o", label=name)[0]
            low, high = [lo for _, lo, _ in stats], [hi for _, _, hi in stats]
            if metric.unit_interval:
                low, high = [max(v, 0.0) for v in low], [min(v, 1.0) for v in high]
            ax.fill_between(sizes, low, high, color=line.get_color(), alpha=0.2)
        guess = (guesses or {}).get(panel, {})
        if guess:
            sizes = sorted(guess)
            ax.plot(sizes, [guess[s] for s in sizes], color="black", linestyle="--", linewidth=1, label=GUESS)
        ax.set_xscale("log")
        ax.set_xlabel("test size")
        ax.set_ylabel(metric.title)
        if metric.unit_interval:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired_size_tables(rows: list[Row], baseline: str, metric: SizeMetric = ACCURACY) -> list[str]:
    """Markdown: per panel, each row's value minus the baseline row's at each test size, paired
    by seed: mean [95 % t-interval] and the verdict (better or worse only when the interval
    excludes zero)."""
    # panel -> row name -> size -> seed -> value; and the jobs behind each (panel, row name)
    by_seed: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    jobs: dict[tuple[str, str], list[Job]] = {}
    for row in rows:
        for job in row.done:
            data = job.overrides.get("data", "data")
            panel = by_seed.setdefault(data, {}).setdefault(row.name, {})
            jobs.setdefault((data, row.name), []).append(job)
            for size, value in sizes_of(job.metrics, metric.key).items():
                panel.setdefault(size, {})[job.seed] = value
    lines: list[str] = []
    for panel, lines_of in by_seed.items():
        base = lines_of.get(baseline)
        if base is None:
            continue
        sizes = sorted(base)
        header = "| difference (row − baseline) | " + " | ".join(f"size {s}" for s in sizes) + " |"
        lines += [f"**{panel}**", "", header, "|---|" + "---|" * len(sizes)]
        for name, points in lines_of.items():
            if name == baseline:
                continue
            cells = []
            for size in sizes:
                diff = paired_difference(base[size], points.get(size, {}), higher_is_better=metric.higher_is_better)
                interval = "" if math.isnan(diff.low) else f" [{diff.low:+.3f}, {diff.high:+.3f}]"
                verdict = budget_verdict(diff.verdict, (*jobs[panel, name], *jobs[panel, baseline]))
                cells.append(f"{diff.mean:+.3f}{interval}: {verdict}" if diff.n else "–")
            lines.append(f"| ({name}) − ({baseline}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def add_size_curves(rows: list[Row], out_dir: Path, report: Path, baseline: str | None = None) -> bool:
    """Accuracy (and a regression's error) against test size, an image and tables in the report for
    each, when the jobs report it at several test sizes: one panel per data set, one line per row;
    with a ``baseline`` row, each row's paired difference to it at each size."""
    sections = [size_section(rows, out_dir, metric, baseline) for metric in SIZE_METRICS]
    if not any(sections):
        return False
    with report.open("a") as fh:
        fh.write("\n" + "\n".join(line for section in sections for line in section))
    return True


def size_section(rows: list[Row], out_dir: Path, metric: SizeMetric, baseline: str | None = None) -> list[str]:
    """The report section of one per-size metric (``metric.image`` written beside it); empty where
    no row has it at two sizes."""
    series: SizeSeries = {}
    guesses: Guesses = {}
    for row in rows:
        for job in row.done:
            add_job(series, job.overrides.get("data", "data"), row.name, job.metrics, guesses, metric)
    if not has_curves(series):
        return []
    write_size_curves(out_dir / metric.image, series, guesses, metric)
    per_size = f"`test/{metric.name}_len<size>`"
    guess = (f" The *{GUESS}* row and the dashed line are what a guess that ignores the input scores "
             f"({metric.guess_is}, `test/guess_{metric.name}_len<size>`)." if any(guesses.values())
             else f" The jobs logged no input-blind guess (`test/guess_{metric.name}_len<size>`), so none is drawn.")
    band = "; the band is drawn within [0, 1]" if metric.unit_interval else ""
    title = metric.title[0].upper() + metric.title[1:]
    lines = [f"## {title} against test size", "",
             f"Mean over seeds of {per_size} with its 95 % Student-t interval (n - 1 degrees of "
             f"freedom{band})." + guess, "", *size_tables(series, guesses),
             f"![{metric.title} against test size]({metric.image})", ""]
    paired = paired_size_tables(rows, baseline, metric) if baseline else []
    if paired:
        lines += [f"### {title} at each test size, against {baseline}", "",
                  f"Per seed, the row's {per_size} minus that of {baseline} on the same data; mean and "
                  "95 % Student-t interval of the paired differences (n - 1 degrees of freedom; "
                  f"{'higher' if metric.higher_is_better else 'lower'} is better).", "", *paired]
    return lines
