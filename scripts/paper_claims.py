"""Table 1's claims, one verdict each, from a study of its rows: the auxiliary cost helps and KL
annealing helps (each with and without the other), and on speech Z-Forcing > SRNN > VRNN > RNN,
each step of the paper's TIMIT ordering as one claim; a claim about rows the study lacks (the
baselines, in a study of the four Z-Forcing rows) is named below the table instead. For each
claim, (higher row) − (lower row) of ``--metric`` paired by seed, with a 95 % Student-t interval,
where it was read (convergence, or a budget naming how the runs stopped), and a verdict:

* ``holds``: the interval excludes 0 on the paper's side, every run of both rows converged;
* ``does not hold``: the interval excludes 0 on the other side, every run converged;
* ``cannot tell``: the interval includes 0, fewer than two shared seeds, or a run of either row
  was stopped by its cap while its bound still rose (what it shows at that budget is said).

Written to ``<study>/claims.md``.

    python scripts/paper_claims.py results/fsdd_table1_all
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.jobs import read_jobs
from zf_lightning.report.rows import Row, group_rows, varying_keys
from zf_lightning.report.stats import (
    BETTER,
    CANNOT_TELL,
    WORSE,
    difference_text,
    higher_is_better,
    paired_difference,
)
from zf_lightning.report.tables import CAPPED_WHILE_IMPROVING, capped_while_improving, md_table, read_at


@dataclass(frozen=True)
class Claim:
    """The paper says ``higher`` scores above ``lower`` (TIMIT numbers of Table 1, ELBOs or exact)."""

    what: str
    higher: str
    lower: str
    paper: str  # the paper's TIMIT numbers, higher first


CLAIMS = (
    Claim("the aux cost helps, with KL annealing", "Z-Forcing + kla, aux", "Z-Forcing + kla", "≥ 70469 vs ≥ 68903"),
    Claim("the aux cost helps, without KL annealing", "Z-Forcing + aux", "Z-Forcing", "≥ 69530 vs ≥ 68132"),
    Claim("KL annealing helps, with the aux cost", "Z-Forcing + kla, aux", "Z-Forcing + aux", "≥ 70469 vs ≥ 69530"),
    Claim("KL annealing helps, without the aux cost", "Z-Forcing + kla", "Z-Forcing", "≥ 68903 vs ≥ 68132"),
    Claim("Z-Forcing beats SRNN", "Z-Forcing + kla, aux", "SRNN (smooth + Resq)", "≥ 70469 vs ≥ 60550"),
    Claim("SRNN beats the best VRNN", "SRNN (smooth + Resq)", "VRNN-GMM", "≥ 60550 vs ≥ 28982"),
    Claim("VRNN-GMM beats VRNN-Gauss", "VRNN-GMM", "VRNN-Gauss", "≥ 28982 vs ≥ 28805"),
    Claim("VRNN-Gauss beats VRNN-I-Gauss", "VRNN-Gauss", "VRNN-I-Gauss", "≥ 28805 vs ≥ 28340"),
    Claim("the worst VRNN beats the best RNN", "VRNN-I-Gauss", "RNN-GMM", "≥ 28340 vs 26643"),
    Claim("RNN-GMM beats RNN-Gauss", "RNN-GMM", "RNN-Gauss", "26643 vs -1900"),
)
HOLDS, DOES_NOT_HOLD = "holds", "does not hold"


def verdict(higher: Row, lower: Row, metric: str) -> tuple[str, str]:
    """The claim's verdict and the paired difference's text, (higher) − (lower)."""
    values = {row.name: {j.seed: j.metrics.get(metric, math.nan) for j in row.done} for row in (higher, lower)}
    diff = paired_difference(values[lower.name], values[higher.name], higher_is_better(metric))
    text = difference_text(diff)
    shown = {BETTER: HOLDS, WORSE: DOES_NOT_HOLD}.get(diff.verdict)
    if shown is None:
        return CANNOT_TELL + ("" if diff.n >= 2 else f" (n={diff.n})"), text
    if any(capped_while_improving(j) for row in (higher, lower) for j in row.done):
        return f"{CANNOT_TELL} ({CAPPED_WHILE_IMPROVING}; {shown} at this budget)", text
    return shown, text


def claims_table(rows: list[Row], metric: str) -> list[str]:
    by_name: dict[str, list[Row]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    body, absent = [], []
    for claim in CLAIMS:
        found = [by_name.get(claim.higher, []), by_name.get(claim.lower, [])]
        if not all(found):
            absent.append(claim.what)
            continue
        if any(len(f) != 1 for f in found):
            named = [n for n, f in zip((claim.higher, claim.lower), found, strict=True) if len(f) != 1]
            body.append([claim.what, f"({claim.higher}) − ({claim.lower})", claim.paper,
                         "–", "–", f"{CANNOT_TELL} (more than one row named {', '.join(named)})"])
            continue
        higher, lower = found[0][0], found[1][0]
        shown, text = verdict(higher, lower, metric)
        body.append([claim.what, f"({claim.higher}) − ({claim.lower})", claim.paper, text,
                     read_at(higher, lower), shown])
    table = md_table(["the paper's claim", "difference", "the paper (TIMIT)",
                      f"{metric}: mean [95 % t-interval], n", "read at", "verdict"], body)
    return table + ([] if not absent else ["", f"Not in this study (a row missing): {'; '.join(absent)}."])


def report(directory: Path, metric: str) -> list[str]:
    jobs = read_jobs(directory)
    rows = group_rows([j for j in jobs if j.ok], varying_keys(jobs))
    unfinished = len([j for j in jobs if not j.ok])
    return [
        f"# Table 1's claims in {directory.name}", "",
        f"Per claim, (higher row) − (lower row) of `{metric}` in the paper's order, paired by seed with a 95 % "
        "Student-t interval. `holds` / `does not hold`: the interval excludes 0 on the paper's side / the other "
        "side and every run of both rows converged; otherwise `cannot tell`, with what a budget shows. "
        f"Built by `python scripts/paper_claims.py {directory}`"
        + (f"; {unfinished} jobs not finished when built, so rows may have fewer seeds than the study will."
           if unfinished else "."), "",
        *claims_table(rows, metric), "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study folder of Table 1's rows, e.g. results/fsdd_table1_all")
    parser.add_argument("--metric", default="test/elbo")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <study>/claims.md)")
    args = parser.parse_args()
    text = "\n".join(report(args.study, args.metric))
    (args.out or args.study / "claims.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
