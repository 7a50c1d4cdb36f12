"""Importance-sampled bounds of every completed job of one or more studies, and the rows' paired
differences on them: with latents in use the ELBO is a looser bound on log p(x) than with a
collapsed posterior, so a row can lose on the ELBO and still model the data as well. Each job's
checkpoint of the best validation bound (the one its test metrics come from) is evaluated by
``eval.py`` with ``eval.iwae_samples``. Writes ``bounds.csv`` (one line per job) and ``bounds.md``
(row means and, against ``--baseline``, paired differences with 95 % t-intervals) into ``--out``.

    python scripts/tight_bounds.py outputs/studies/text_ablation_converged outputs/studies/text_aux_in_use \\
        --out results/text_ablation_converged_all --baseline "Z-Forcing" --samples 1 10 100

Run it from a folder where the jobs' stored data root (e.g. ``../shared/data/rt-polarity``) resolves.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.study_checkpoints import completed_jobs, evaluate_checkpoint, write_lines
from zf_lightning.report.stats import difference_text, paired_difference


def bound_names(samples: list[int]) -> list[str]:
    """``elbo`` and one ``iwae_K`` per K: all log-likelihood lower bounds, higher is better."""
    return ["elbo", *(f"iwae_{k}" for k in samples)]


def evaluate_job(checkpoint: Path, split: str, samples: list[int]) -> dict[str, float]:
    metrics = evaluate_checkpoint(checkpoint, split, [f"eval.iwae_samples=[{','.join(map(str, samples))}]"])
    return {name: float(metrics[f"{split}/{name}"]) for name in bound_names(samples)}


def fmt(values: list[float]) -> str:
    """Mean ± sd with the places the sd needs (two significant digits of it)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4g}"
    sd = statistics.stdev(values)
    places = max(0, 1 - math.floor(math.log10(sd))) if sd > 0 else 4
    return f"{mean:.{places}f} ± {sd:.{places}f}"


def interval(values: dict[str, float], base: dict[str, float]) -> str:
    return difference_text(paired_difference(base, values, higher_is_better=True))


def markdown(lines: list[dict[str, str]], split: str, samples: list[int], baseline: str | None) -> str:
    names = bound_names(samples)
    by_row: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for line in lines:
        by_row[line["row"]][line["seed"]] = {name: float(line[name]) for name in names}
    out = [f"# Importance-sampled bounds ({split} split)", "",
           "In nats, in the units of the runs' `test/elbo` (per utterance for speech, per word for text); higher is "
           "better. Each `iwae_K` tightens towards log p(x) as K grows, and `iwae_1` is the sampled ELBO; `elbo` is "
           "the analytic-KL bound, a draw of its own. Mean ± sample standard deviation over seeds. Computed by "
           "`scripts/tight_bounds.py` from each job's best checkpoint.", "",
           "| row | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row, seeds in by_row.items():
        out.append(f"| {row} | {len(seeds)} | "
                   + " | ".join(fmt([v[name] for v in seeds.values()]) for name in names) + " |")
    if baseline in by_row:
        out += ["", f"Paired by seed: (row) − ({baseline}) on each bound, mean [95 % t-interval], n seeds.", "",
                "| difference | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        base = by_row[baseline]
        for row, seeds in by_row.items():
            if row == baseline:
                continue
            cells = [interval({s: v[name] for s, v in seeds.items()}, {s: v[name] for s, v in base.items()})
                     for name in names]
            out.append(f"| ({row}) − ({baseline}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="studies' job folders, e.g. outputs/studies/<study>")
    parser.add_argument("--out", type=Path, required=True, help="where bounds.csv and bounds.md go")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 10, 100], help="the Ks of iwae_K")
    parser.add_argument("--baseline", default=None, help="the row the paired differences are taken against")
    args = parser.parse_args()
    if any(k < 1 for k in args.samples):
        parser.error(f"--samples must be positive, got {args.samples}")
    try:
        jobs = completed_jobs(args.sweep_dirs)
    except FileNotFoundError as error:
        parser.error(str(error))
    rows = sorted({study_job.row for study_job in jobs})
    if args.baseline is not None and args.baseline not in rows:
        parser.error(f"--baseline {args.baseline!r} is not a row; the rows are {rows}")
    lines = []
    for study_job in jobs:
        values = evaluate_job(study_job.checkpoint, args.split, args.samples)
        lines.append({"job": study_job.job.name, "row": study_job.row, "seed": study_job.job.seed,
                      **{key: f"{value:.6g}" for key, value in values.items()}})
    write_lines(args.out / "bounds.csv", lines, bound_names(args.samples))
    (args.out / "bounds.md").write_text(markdown(lines, args.split, args.samples, args.baseline))
    print(f"wrote {args.out / 'bounds.csv'} and {args.out / 'bounds.md'}")


if __name__ == "__main__":
    main()
