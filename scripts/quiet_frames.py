"""How many nats of each speech run's bound, and of each difference between rows, come from
near-silent frames: every completed job of a study is evaluated with ``analyses=quiet_frames``
(its checkpoint of the best validation bound, the one its test metrics come from), and the
bound is split into frames whose normalised mean square is below the threshold and the rest.
Writes ``quiet_frames.csv`` (one line per job) and ``quiet_frames.md`` (row means and, against
``--baseline``, the paired differences of each part) into ``--out``.

    python scripts/quiet_frames.py outputs/studies/fsdd_table1_all --out results/fsdd_table1_all \\
        --baseline "Z-Forcing + kla, aux"

Run it from a folder where the jobs' stored data root (e.g. ``../shared/data/fsdd``) resolves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.study_checkpoints import completed_jobs, evaluate_checkpoint, write_lines

PARTS = ("elbo", "elbo_quiet", "elbo_other", "quiet_fraction", "nll_quiet", "nll_other")


def evaluate_job(checkpoint: Path, split: str, threshold: float) -> dict[str, float]:
    metrics = evaluate_checkpoint(checkpoint, split, ["analyses=quiet_frames", "eval.iwae_samples=null",
                                                      f"analyses.quiet_frames.threshold={threshold}"])
    parts = {part: float(metrics[f"{split}/{part}"]) for part in PARTS if part != "elbo"}
    parts["elbo"] = parts["elbo_quiet"] + parts["elbo_other"]  # the same latent draws as its parts
    return parts


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def markdown(lines: list[dict[str, str]], split: str, threshold: float, baseline: str | None) -> str:
    by_row: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for line in lines:
        by_row[line["row"]][line["seed"]] = {part: float(line[part]) for part in PARTS}
    out = [f"# Near-silent frames ({split} split)", "",
           f"Frames whose normalised mean square is below {threshold} against the rest, per utterance "
           "(nats; the bound is -(nll + kl) summed over each kind of frame, and its column the sum of the two, "
           "with the same latent draws; mean ± sample standard deviation over seeds). "
           "Computed by `scripts/quiet_frames.py` from each job's best checkpoint.", "",
           "| row | seeds | share of frames quiet | bound | from quiet frames | from the other frames |",
           "|---|---|---|---|---|---|"]
    for row, seeds in by_row.items():
        parts = {part: [v[part] for v in seeds.values()] for part in PARTS}
        out.append(f"| {row} | {len(seeds)} | {statistics.fmean(parts['quiet_fraction']):.3f} | {fmt(parts['elbo'])} "
                   f"| {fmt(parts['elbo_quiet'])} | {fmt(parts['elbo_other'])} |")
    if baseline in by_row:
        out += ["", f"Paired by seed against {baseline}: (row) − ({baseline}), and how much of it is made on each kind "
                "of frame.", "",
                "| difference | seeds | bound | on quiet frames | on the other frames |", "|---|---|---|---|---|"]
        base = by_row[baseline]
        for row, seeds in by_row.items():
            common = sorted(set(seeds) & set(base))
            if row == baseline or not common:
                continue
            diffs = {part: [seeds[s][part] - base[s][part] for s in common]
                     for part in ("elbo", "elbo_quiet", "elbo_other")}
            out.append(f"| ({row}) − ({baseline}) | {len(common)} | {fmt(diffs['elbo'])} | {fmt(diffs['elbo_quiet'])} "
                       f"| {fmt(diffs['elbo_other'])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a study's job folders, e.g. outputs/studies/fsdd_table1_all")
    parser.add_argument("--out", type=Path, required=True, help="where quiet_frames.csv and .md go")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--baseline", default=None, help="the row the paired differences are taken against")
    args = parser.parse_args()
    try:
        jobs = completed_jobs([args.sweep_dir])
    except FileNotFoundError as error:
        parser.error(str(error))
    lines = []
    for study_job in jobs:
        values = evaluate_job(study_job.checkpoint, args.split, args.threshold)
        lines.append({"job": study_job.job.name, "row": study_job.row, "seed": study_job.job.seed,
                      **{key: f"{value:.6g}" for key, value in values.items()}})
    write_lines(args.out / "quiet_frames.csv", lines, list(PARTS))
    (args.out / "quiet_frames.md").write_text(markdown(lines, args.split, args.threshold, args.baseline))
    print(f"wrote {args.out / 'quiet_frames.csv'} and {args.out / 'quiet_frames.md'}")


if __name__ == "__main__":
    main()
