"""Turn a sweep's output folder into a paper-style comparison, without any server.

``python -m zf_lightning.report <sweep dir>`` writes into the sweep folder:

* ``report.md``: one row per configuration (the overrides that vary across jobs, the seed
  excluded), the headline test metric as mean ± standard deviation over seeds (laid out
  like Table 1 of the paper: one column per data set when the data varies), n and failed
  jobs; then every test metric, and the failed jobs with their errors.
* ``report.csv``: the same rows, every test metric as ``<metric> mean`` / ``<metric> std``.
* ``curves.png``: validation ELBO and KL against the update step, per configuration, the
  mean over seeds with a ±1 standard deviation band (from each job's ``csv/metrics.csv``).
* ``jobs.csv`` (one line per job: row, seed, why it stopped, updates, every metric) and
  ``curves.csv`` (every job's validation curves): the report can be rebuilt from these two
  files alone, e.g. from a study committed under ``results/``; a folder's ``chance.csv`` (chance
  levels computed by ``scripts/chance_levels.py`` for jobs that did not log them) is read and
  written alongside.

With ``--baseline ROW`` the report adds each row's paired difference against that row
(``zf_lightning.report.stats``); with ``--choose KEY`` (a pilot's grid) the setting of those keys
that the validation metric ``--choose-by`` picks per family of the other keys, and whether it
lies at the grid's edge (``zf_lightning.report.selection``); jobs that record why they stopped add how the runs ended
and whether the rows' ordering is stable over the last part of the curves.
Standard deviations are sample deviations (n - 1 in the denominator), empty for n = 1.
``--wandb ENTITY/PROJECT [--group G]`` reads the runs from W&B instead (needs network).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from zf_lightning.report.build import build_report, write_report
from zf_lightning.report.jobs import combined_chance, combined_jobs, read_wandb
from zf_lightning.report.rows import HEADLINE
from zf_lightning.report.selection import DEFAULT_METRIC, ChooseError
from zf_lightning.report.study_notes import write_study_notes


def main(argv: list[str] | None = None) -> int:
    """``python -m zf_lightning.report``; argparse exits with code 2 on a wrong command."""
    parser = argparse.ArgumentParser(prog="python -m zf_lightning.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="*", type=Path, metavar="DIR",
                        help="a multirun folder (hydra.sweep.dir) or a committed study folder; several are "
                             "reported as one table (e.g. an ablation study and its baselines), with --out")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the one folder given)")
    parser.add_argument("--metric", default=HEADLINE, help=f"headline metric (default {HEADLINE})")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)")
    parser.add_argument("--group", help="with --wandb: only this group (one sweep)")
    parser.add_argument("--baseline", help="a row name (e.g. 'Z-Forcing + kla'): paired differences against it")
    parser.add_argument("--choose", action="append", default=[], metavar="KEY",
                        help="an override key a pilot's grid sweeps (repeatable): report the setting validation "
                             "chooses per family of the other keys")
    parser.add_argument("--choose-by", default=DEFAULT_METRIC, metavar="METRIC",
                        help=f"with --choose: the validation metric that chooses (default {DEFAULT_METRIC})")
    parser.add_argument("--study-notes", action="store_true",
                        help="also write STUDY.md into --out from the study's job folder (its multirun.yaml)")
    args = parser.parse_args(argv)
    if args.study_notes and (args.wandb or len(args.sweep_dirs) != 1):
        # checked before anything is written
        parser.error("--study-notes writes STUDY.md from one study's job folder; give exactly that folder "
                     "(pooling several folders writes the report only; say how they were pooled in the "
                     "STUDY.md notes)")
    try:
        if args.wandb:
            out = args.out or Path(f"report-{args.wandb.replace('/', '_')}" + (f"-{args.group}" if args.group else ""))
            jobs = read_wandb(args.wandb, args.group)
            if not jobs:
                parser.error(f"no runs in W&B project {args.wandb}" + (f" group {args.group}" if args.group else ""))
            title = f"W&B {args.wandb}" + (f" / {args.group}" if args.group else "")
            rows = build_report(jobs, out, title, args.metric, args.baseline, choose=args.choose,
                                choose_by=args.choose_by)
        elif len(args.sweep_dirs) == 1:
            out = args.out or args.sweep_dirs[0]
            rows = write_report(args.sweep_dirs[0], out, args.metric, args.baseline, args.choose, args.choose_by)
            if args.study_notes:
                multirun = args.sweep_dirs[0] / "multirun.yaml"
                if not multirun.is_file():
                    parser.error(f"--study-notes needs {multirun} (the job folder a study ran into)")
                write_study_notes(OmegaConf.load(multirun), args.sweep_dirs[0], out)
        elif args.sweep_dirs:
            if args.out is None:
                parser.error("several folders are reported together into --out FOLDER")
            out = args.out
            rows = build_report(combined_jobs(args.sweep_dirs), out, " + ".join(map(str, args.sweep_dirs)), args.metric,
                                args.baseline, combined_chance(args.sweep_dirs), args.choose, args.choose_by)
        else:
            parser.error("give a sweep folder or --wandb ENTITY/PROJECT")
    except ChooseError as err:  # raised before anything is written
        parser.error(str(err))
    failed = sum(len(row.failed) for row in rows)
    unfinished = sum(len(row.unfinished) for row in rows)
    print(f"{out / 'report.md'}: {len(rows)} configurations, {failed} failed jobs"
          + (f", {unfinished} not finished" if unfinished else ""))
    return 0

