"""Writing a report: every table and picture of a list of jobs, from whatever source they came."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zf_lightning.report.heatmap import add_capacity_heatmaps, capacity_headline
from zf_lightning.report.jobs import (
    CHANCE_CSV,
    CURVES_CSV,
    JOBS_CSV,
    Job,
    read_chance,
    read_jobs,
    write_chance,
    write_curves_csv,
    write_jobs_csv,
)
from zf_lightning.report.plots import write_curves
from zf_lightning.report.rows import HEADLINE, Row, group_rows, metric_names, varying_keys
from zf_lightning.report.selection import DEFAULT_METRIC, add_selection, check_choose
from zf_lightning.report.size_curves import add_size_curves
from zf_lightning.report.tables import write_csv, write_markdown


def build_report(jobs: list[Job], out_dir: Path, title: str, headline: str = HEADLINE,
                 baseline: str | None = None, chance: dict[str, float] | None = None,
                 choose: Sequence[str] = (), choose_by: str = DEFAULT_METRIC) -> list[Row]:
    """Write report.md, report.csv, curves.png, jobs.csv and curves.csv for these jobs (and
    chance.csv: the computed chance levels, by job name, where given; with ``choose``, the setting
    of those keys that validation chooses, by ``choose_by``); returns the rows."""
    keys = varying_keys(jobs)
    check_choose(jobs, choose, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = group_rows(jobs, keys)
    metrics = metric_names(jobs)
    headline = capacity_headline(jobs, headline, HEADLINE)
    write_markdown(out_dir / "report.md", title, jobs, rows, keys, metrics, headline, baseline)
    write_csv(out_dir / "report.csv", rows, keys, metrics)
    write_curves(out_dir / "curves.png", rows)
    write_jobs_csv(out_dir / JOBS_CSV, jobs)
    write_curves_csv(out_dir / CURVES_CSV, jobs)
    if chance:
        write_chance(out_dir / CHANCE_CSV, chance)
    add_capacity_heatmaps(jobs, out_dir, out_dir / "report.md", computed_chance=chance)  # width x data.length
    add_size_curves(rows, out_dir, out_dir / "report.md", baseline)  # jobs tested at several sizes
    add_selection(jobs, choose, keys, out_dir / "report.md", choose_by)  # a pilot's grid
    return rows


def write_report(sweep_dir: Path, out_dir: Path | None = None, headline: str = HEADLINE,
                 baseline: str | None = None, choose: Sequence[str] = (),
                 choose_by: str = DEFAULT_METRIC) -> list[Row]:
    """Report of a sweep folder or a committed study folder (written into it unless ``out_dir`` is given)."""
    return build_report(read_jobs(sweep_dir), out_dir or Path(sweep_dir), str(sweep_dir), headline, baseline,
                        read_chance(sweep_dir), choose, choose_by)
