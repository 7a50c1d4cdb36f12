"""The cells of a study that reruns a grid's rows at the settings validation chose: for each family
of the grid (a setting of the keys it varies besides the chosen ones, e.g. ``ablation=aux``) and
each seed, that family's keys with its chosen setting, as the report's "Chosen on validation"
section reads them (the best mean over seeds at each job's best checkpoint). Printed as the
``cells`` list of a study with ``override /hydra/sweeper: cells``, one cell per line.

``--term-on``: where the best turns a weight off (0), the best weight that keeps it on, for rows
that exist to have the term (a "+ aux" row); the grid's report says by how much the off setting
was better.

    python scripts/chosen_cells.py results/mnist_aux_grid --choose schedule.aux_end --seeds 1 2 3 --term-on
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.jobs import read_jobs
from zf_lightning.report.rows import varying_keys
from zf_lightning.report.selection import DEFAULT_METRIC, chosen_settings


def chosen_cells(directory: Path, choose: list[str], seeds: list[str], metric: str = DEFAULT_METRIC,
                 term_on: bool = False) -> list[str]:
    jobs = read_jobs(directory)
    unfinished = [job.name for job in jobs if not job.ok]
    if unfinished:
        raise SystemExit(f"{directory}: jobs not finished: {', '.join(unfinished)}; the grid has not chosen yet")
    chosen = chosen_settings(jobs, choose, varying_keys(jobs), metric, term_on)
    return [
        " ".join(f"{k}={v}" for k, v in (*family, *point.setting) if v != "") + f" seed={seed}"
        for family, point in chosen.items()
        for seed in seeds
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="a committed grid study, e.g. results/mnist_aux_grid")
    parser.add_argument("--choose", action="append", required=True, help="a key the grid chose (repeatable)")
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    parser.add_argument("--metric", default=DEFAULT_METRIC)
    parser.add_argument("--term-on", action="store_true", help="never a setting that turns a weight off")
    args = parser.parse_args()
    for line in chosen_cells(args.grid, args.choose, args.seeds, args.metric, args.term_on):
        print(f'      - "{line}"')


if __name__ == "__main__":
    main()
