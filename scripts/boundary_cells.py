"""The cells of a committed capacity study that its budget decided: not solved (test accuracy
below ``--solved``) and still improving when the cap stopped them (validation accuracy up by more
than ``--rising`` over the last 20 % of their updates). Printed as the ``cells`` list of a study
that continues them (``override /hydra/sweeper: cells``), one cell per line; a job whose seed
is not the study's default names it.

    python scripts/boundary_cells.py results/capacity_index_lookup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.jobs import Job, read_jobs
from zf_lightning.report.tables import late_improvement

CELL_KEYS = ("model", "width", "data.length")


def is_boundary(job: Job, solved: float, rising: float) -> bool:
    accuracy = job.metrics.get("test/acc", float("nan"))
    return not accuracy >= solved and late_improvement(job, "val/acc") > rising


def cell(job: Job) -> str:
    parts = [f"{key}={job.overrides[key]}" for key in CELL_KEYS if key in job.overrides]
    return " ".join(parts + ([f"seed={job.seed}"] if job.seed != "default" else []))


def boundary_cells(directory: Path, solved: float = 0.99, rising: float = 0.02) -> list[str]:
    return [cell(job) for job in read_jobs(directory) if job.ok and is_boundary(job, solved, rising)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a committed capacity study folder, e.g. results/capacity_dyck")
    parser.add_argument("--solved", type=float, default=0.99, help="test accuracy at or above which a cell is solved")
    parser.add_argument("--rising", type=float, default=0.02,
                        help="validation accuracy gain over the last 20 %% of updates above which a cell still rose")
    args = parser.parse_args()
    for line in boundary_cells(args.study, args.solved, args.rising):
        print(f'      - "{line}"')


if __name__ == "__main__":
    main()
