"""A regression study's mean absolute error at each test size, for jobs that logged only the
pooled ``test/mae``: every completed regression job is evaluated again on its test split from its
best checkpoint (the one its test metrics come from), which gives ``test/mae_len<size>`` and the
input-blind guess ``test/guess_mae_len<size>``. The re-evaluation must reproduce the job's own
``test/mae`` (same checkpoint, data and seed), else nothing is written. Writes
``size_errors.csv`` (one line per job), ``size_errors.md`` (per data set: each row's error at each
size with its 95 % t-interval and, against ``--baseline``, the paired differences) and
``size_errors.png`` into ``--out``.

    python scripts/size_errors.py outputs/studies/sets_sire --out results/sets_sire --baseline LSTM
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.jobs import Job, best_checkpoint, read_sweep
from zf_lightning.report.rows import display_names, group_rows, varying_keys
from zf_lightning.report.size_curves import ERROR, size_section
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.pipeline import compose_config

POOLED = "test/mae"
TOLERANCE = 1e-5  # relative: the same computation on the same checkpoint, data and seed


def per_size_errors(checkpoint: Path) -> dict[str, float]:
    """The test split's metrics from ``checkpoint``, as eval.py computes them."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config("eval", [f"ckpt_path={checkpoint}", f"paths.output_dir={out}", "split=test",
                                      "eval.iwae_samples=null", "samples.num=0"])
        return evaluate(cfg)


def reproduces(job: Job, metrics: dict[str, float]) -> bool:
    stored, again = job.metrics[POOLED], metrics.get(POOLED, math.nan)
    return abs(again - stored) <= TOLERANCE * max(1.0, abs(stored))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a study's job folders, e.g. outputs/studies/sets_sire")
    parser.add_argument("--out", type=Path, required=True, help="where size_errors.csv, .md and .png go")
    parser.add_argument("--baseline", default=None, help="the row the paired differences are taken against")
    args = parser.parse_args()
    jobs = [job for job in read_sweep(args.sweep_dir) if job.ok and POOLED in job.metrics]
    if not jobs:
        parser.error(f"{args.sweep_dir} holds no completed regression jobs (none logged {POOLED})")
    checkpoints = {job.name: best_checkpoint(job, args.sweep_dir) for job in jobs}  # all found before any work
    evaluated = []
    for job in jobs:
        metrics = per_size_errors(checkpoints[job.name])
        if not reproduces(job, metrics):
            parser.error(f"job {job.name}: its re-evaluated {POOLED} {metrics.get(POOLED)} is not the stored "
                         f"{job.metrics[POOLED]}; nothing written")
        sizes = {k: v for k, v in metrics.items() if ERROR.key.match(k) or ERROR.guess_key.match(k)}
        evaluated.append(dataclasses.replace(job, metrics=job.metrics | sizes))
    rows = group_rows(evaluated, varying_keys(evaluated))
    row_of = {job.name: name for row, name in zip(rows, display_names(rows), strict=True) for job in row.jobs}
    keys = sorted({k for job in evaluated for k in job.metrics if ERROR.key.match(k) or ERROR.guess_key.match(k)},
                  key=lambda k: (k.startswith("test/guess"), int(k.rsplit("len", 1)[1])))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "size_errors.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["job", "row", "data", "seed", POOLED, *keys])
        writer.writeheader()
        for job in evaluated:
            writer.writerow({"job": job.name, "row": row_of[job.name], "data": job.overrides.get("data", ""),
                             "seed": job.seed, **{k: f"{job.metrics[k]:.6g}" for k in (POOLED, *keys)
                                                 if k in job.metrics}})
    section = size_section(rows, args.out, ERROR, args.baseline)
    intro = [f"# Error against test size: {args.sweep_dir.name}", "",
             f"Each completed regression job re-evaluated on its test split from its best checkpoint by "
             f"`scripts/size_errors.py`; every one reproduced its stored {POOLED} (relative tolerance {TOLERANCE:g}).",
             ""]
    (args.out / "size_errors.md").write_text("\n".join([*intro, *section]))
    print(f"wrote {args.out / 'size_errors.csv'}, {args.out / 'size_errors.md'} and {args.out / ERROR.image}")


if __name__ == "__main__":
    main()
