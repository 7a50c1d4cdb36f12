"""The smallest width that solves each length of a capacity task, once the cells its budget decided
have been continued: a committed capacity study with its boundary study (``study=<task>_boundary``,
the cells that were unsolved and still rising at the cap, run again to the plateau rule or 4x the
budget). A continued cell replaces the budgeted run of the same model, width, length and seed.

A threshold is read at convergence only where no narrower cell of its row was still rising when a
cap stopped it (validation accuracy up by more than ``--rising`` over its last 20 % of updates, as
``scripts/boundary_cells.py`` selects): such a cell might have solved the length with more updates,
so the threshold is written ``<= w``, and a row that solves nothing with such a cell in it
``> w_max?``. Written to ``<boundary>/thresholds.md`` beside the budget's own thresholds, with
``heatmap_continued.png``: the base study's heatmap with the continued cells in place (cells within
noise of the chance level or below it marked, as in every capacity heatmap).

    python scripts/capacity_thresholds.py results/capacity_dyck results/capacity_dyck_boundary
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.heatmap import (
    LENGTH_KEY,
    PANEL_KEY,
    SOLVED,
    WIDTH_KEY,
    capacity_grid,
    chance_by_length,
    write_heatmaps,
)
from zf_lightning.report.jobs import Job, read_chance, read_jobs
from zf_lightning.report.tables import CAPS, late_improvement

RISING = 0.02  # validation accuracy gain over the last 20 % of updates: scripts/boundary_cells.py's default

Key = tuple[str, int, int, str]  # model, width, length, seed


@dataclass(frozen=True)
class Cell:
    """A (model, width, length) cell: its jobs' mean test accuracy and whether any job was still rising at a cap."""

    accuracy: float
    rising: bool
    seeds: int


def job_key(job: Job) -> Key | None:
    try:
        width, length = int(job.overrides[WIDTH_KEY]), int(job.overrides[LENGTH_KEY])
    except (KeyError, ValueError):
        return None
    return job.overrides.get(PANEL_KEY, "model"), width, length, job.seed


def still_rising(job: Job, rising: float = RISING) -> bool:
    return job.info.get("stop_reason") in CAPS and late_improvement(job, "val/acc") > rising


def merged_jobs(base: list[Job], continued: list[Job]) -> dict[Key, Job]:
    """The base study's finished jobs, each replaced by its continued run where there is one."""
    jobs = {key: job for job in base if job.ok and (key := job_key(job)) is not None}
    for job in continued:
        key = job_key(job)
        if key is None or not job.ok:
            continue
        if key not in jobs:
            raise ValueError(f"{job.name} continues no cell of the base study ({key})")
        jobs[key] = job
    return jobs


def cells(jobs: dict[Key, Job], rising: float = RISING) -> dict[str, dict[tuple[int, int], Cell]]:
    grouped: dict[str, dict[tuple[int, int], list[Job]]] = {}
    for (model, width, length, _), job in jobs.items():
        grouped.setdefault(model, {}).setdefault((width, length), []).append(job)
    return {
        model: {
            wl: Cell(statistics.fmean(j.metrics.get("test/acc", math.nan) for j in group),
                     any(still_rising(j, rising) for j in group), len(group))
            for wl, group in by_cell.items()
        }
        for model, by_cell in grouped.items()
    }


def threshold(row: dict[tuple[int, int], Cell], length: int, solved: float = SOLVED) -> str:
    """The smallest solving width at ``length``: ``w`` at convergence, ``<= w`` where a narrower cell
    was still rising at its cap, ``> w_max`` / ``> w_max?`` where none solves."""
    widths = sorted(w for w, n in row if n == length)
    if not widths:
        return "–"
    needed = next((w for w in widths if row[(w, length)].accuracy >= solved), None)
    below = [w for w in widths if needed is None or w < needed]
    open_below = any(row[(w, length)].rising for w in below)
    if needed is None:
        return f"> {widths[-1]}" + ("?" if open_below else "")
    return f"<= {needed}" if open_below else str(needed)


def threshold_table(grid: dict[str, dict[tuple[int, int], Cell]], solved: float = SOLVED) -> list[str]:
    lengths = sorted({n for row in grid.values() for _, n in row})
    lines = ["| model \\ length | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for model, row in grid.items():
        lines.append(f"| {model} | " + " | ".join(threshold(row, n, solved) for n in lengths) + " |")
    return lines


def report(base_dir: Path, boundary_dir: Path, solved: float = SOLVED, rising: float = RISING) -> list[str]:
    base, continued = read_jobs(base_dir), read_jobs(boundary_dir)
    unfinished = [job.name for job in continued if not job.ok]
    if unfinished:
        raise SystemExit(f"{boundary_dir}: jobs not finished: {', '.join(unfinished)}; rerun its study first")
    budget = cells(merged_jobs(base, []), rising)
    merged = merged_jobs(base, continued)
    at_end = cells(merged, rising)
    still = sorted(
        f"{m} width {w} length {n}" + (f" seed {s}" if s != "default" else "")
        for (m, w, n, s), j in merged.items()
        if still_rising(j, rising) and at_end[m][(w, n)].accuracy < solved
    )
    return [
        f"# Width thresholds of {base_dir.name}, its budget against its continued cells", "",
        f"Smallest width whose mean test accuracy over seeds reaches {solved:g}. `<= w`: a narrower cell was",
        f"still rising (validation accuracy up by more than {rising:g} over its last 20 % of updates) when a cap",
        "stopped it, so the threshold may be lower; `> w?`: no width solves it and one was still rising.",
        f"Built by `python scripts/capacity_thresholds.py {base_dir} {boundary_dir}`.", "",
        f"## At the budget (`{base_dir}` alone)", "", *threshold_table(budget, solved), "",
        f"## With the continued cells (`{boundary_dir}` replaces {len(continued)} of them)", "",
        *threshold_table(at_end, solved), "",
        f"Unsolved cells still rising at their cap: {len(still)}" + (": " + "; ".join(still) if still else "") + ".",
        "",
    ]


def write_continued_heatmap(path: Path, base_dir: Path, boundary_dir: Path) -> None:
    """The base study's heatmap with each continued cell in place of its budgeted run."""
    jobs = list(merged_jobs(read_jobs(base_dir), read_jobs(boundary_dir)).values())
    computed = read_chance(base_dir) | read_chance(boundary_dir)
    write_heatmaps(path, capacity_grid(jobs), chance=chance_by_length(jobs, computed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the committed capacity study, e.g. results/capacity_dyck")
    parser.add_argument("boundary", type=Path, help="its boundary study, e.g. results/capacity_dyck_boundary")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <boundary>/thresholds.md)")
    parser.add_argument("--solved", type=float, default=SOLVED)
    parser.add_argument("--rising", type=float, default=RISING)
    args = parser.parse_args()
    text = "\n".join(report(args.base, args.boundary, args.solved, args.rising))
    out = args.out or args.boundary / "thresholds.md"
    out.write_text(text)
    write_continued_heatmap(out.with_name("heatmap_continued.png"), args.base, args.boundary)
    print(text)


if __name__ == "__main__":
    main()
