"""Accuracy against test size (``test/acc_len<N>``), the picture of length generalization: one
panel per data set, one line per row, the mean over seeds with a ±1 standard deviation band;
plus the same numbers as a markdown table. Used for the set tasks (trained on small sets,
tested on larger ones) and any sweep whose jobs report accuracy at several test sizes."""

from __future__ import annotations

import math
import re
from pathlib import Path

from zf_lightning.report.rows import Row
from zf_lightning.report.stats import mean_std

_SIZE_KEY = re.compile(r"^test/acc_len(\d+)$")

# panel (data set) -> line (row name) -> size -> accuracies (one per seed)
SizeSeries = dict[str, dict[str, dict[int, list[float]]]]


def sizes_of(metrics: dict[str, float]) -> dict[int, float]:
    """``{N: accuracy}`` from a job's ``test/acc_len<N>`` metrics."""
    return {int(m.group(1)): v for k, v in metrics.items() if (m := _SIZE_KEY.match(k)) and math.isfinite(v)}


def add_job(series: SizeSeries, panel: str, line: str, metrics: dict[str, float]) -> None:
    for size, value in sizes_of(metrics).items():
        series.setdefault(panel, {}).setdefault(line, {}).setdefault(size, []).append(value)


def has_curves(series: SizeSeries) -> bool:
    """Worth drawing: some line has accuracies at two or more sizes."""
    return any(len(points) > 1 for lines in series.values() for points in lines.values())


def size_tables(series: SizeSeries) -> list[str]:
    """Markdown: per panel, rows = lines, columns = test sizes, cells = mean ± std (n)."""
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
                mean, std = mean_std(points[s])
                spread = "" if math.isnan(std) else f" ± {std:.3f}"
                cells.append(f"{mean:.3f}{spread} (n={len(points[s])})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write_size_curves(path: Path, series: SizeSeries) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, points in series[panel].items():
            sizes = sorted(points)
            stats = [mean_std(points[s]) for s in sizes]
            means = [m for m, _ in stats]
            stats = [(m, 0.0 if math.isnan(sd) else sd) for m, sd in stats]  # no band for a single seed
            line = ax.plot(sizes, means, marker="o", label=name)[0]
            ax.fill_between(sizes, [m - s for m, s in stats], [m + s for m, s in stats], color=line.get_color(),
                            alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("test size")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_size_curves(rows: list[Row], out_dir: Path, report: Path) -> bool:
    """Accuracy against test size (``size_curves.png`` and tables in the report) when the jobs
    report accuracy at several test sizes: one panel per data set, one line per row."""
    series: SizeSeries = {}
    for row in rows:
        for job in row.done:
            add_job(series, job.overrides.get("data", "data"), row.name, job.metrics)
    if not has_curves(series):
        return False
    write_size_curves(out_dir / "size_curves.png", series)
    lines = ["## Test accuracy against test size", "",
             "Mean ± standard deviation over seeds of `test/acc_len<size>`.", "", *size_tables(series),
             "![test accuracy against test size](size_curves.png)", ""]
    with report.open("a") as fh:
        fh.write("\n" + "\n".join(lines))
    return True
