"""What the scripts that re-evaluate a finished study share (``quiet_frames.py``,
``tight_bounds.py``): its completed jobs with their best checkpoints and row names, one
``eval.py`` run per checkpoint, and the per-job CSV. A module, not a script."""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zf_lightning.report.jobs import Job, best_checkpoint, read_sweep
from zf_lightning.report.rows import display_names, group_rows, varying_keys
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.pipeline import compose_config


@dataclass(frozen=True)
class StudyJob:
    job: Job
    checkpoint: Path  # its best validation bound's, the one its test metrics come from
    row: str  # the row name the study's report gives it


def completed_jobs(sweep_dirs: list[Path]) -> list[StudyJob]:
    """Every completed job of the folders, each checkpoint found before any evaluation runs; with
    several folders a job's name gets its folder's (``text_aux_in_use/0``) so names stay unique."""
    found: list[tuple[Job, Path]] = []
    for sweep_dir in sweep_dirs:
        for job in read_sweep(sweep_dir):
            if job.ok:
                checkpoint = best_checkpoint(job, sweep_dir)
                if len(sweep_dirs) > 1:
                    job.name = f"{sweep_dir.name}/{job.name}"
                found.append((job, checkpoint))
    if not found:
        raise FileNotFoundError(f"{' '.join(map(str, sweep_dirs))}: no completed jobs")
    jobs = [job for job, _ in found]
    rows = group_rows(jobs, varying_keys(jobs))
    row_of = {job.name: name for row, name in zip(rows, display_names(rows), strict=True) for job in row.jobs}
    return [StudyJob(job, checkpoint, row_of[job.name]) for job, checkpoint in found]


def evaluate_checkpoint(checkpoint: Path, split: str, overrides: list[str]) -> dict[str, Any]:
    """``eval.py`` on one checkpoint, its outputs in a folder that is removed afterwards."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config("eval", [f"ckpt_path={checkpoint}", f"paths.output_dir={out}", f"split={split}",
                                      "samples.num=0", *overrides])
        return dict(evaluate(cfg))


def write_lines(path: Path, lines: list[dict[str, str]], fields: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["job", "row", "seed", *fields])
        writer.writeheader()
        writer.writerows(lines)
