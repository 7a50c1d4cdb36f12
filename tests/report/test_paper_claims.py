"""scripts/paper_claims.py: each of Table 1's claims gets holds / does not hold only from an
interval that excludes 0 with every run converged, and cannot tell otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script
from zf_lightning.report.jobs import Job
from zf_lightning.report.rows import group_rows

ROOT = Path(__file__).resolve().parents[2]
claims = load_script("paper_claims")


def job(row: str, seed: int, elbo: float, stop: str = "converged", late: float = -1.0) -> Job:
    return Job(f"{row}-{seed}", {"variant": row, "seed": str(seed)}, "completed", metrics={"test/elbo": elbo},
               curves={"val/elbo": [(0, 0.0), (800, 10.0), (1000, 10.0 + late)]}, table_row=row,
               info={"stop_reason": stop})


def verdict_of(jobs: list[Job], what: str) -> list[str]:
    table = claims.claims_table(group_rows(jobs, ["variant"]), "test/elbo")
    return next(line.split(" | ") for line in table if line.startswith(f"| {what} |"))


def test_a_claim_holds_does_not_hold_or_cannot_be_told() -> None:
    kla, aux = "Z-Forcing + kla", "Z-Forcing + kla, aux"
    held = [job(kla, s, 100.0 + s) for s in (1, 2, 3)] + [job(aux, s, 150.0 + 2 * s) for s in (1, 2, 3)]
    line = verdict_of(held, "the aux cost helps, with KL annealing")
    # as many places as the interval's width needs for three digits (a per-word difference gets four)
    assert line[3].startswith("+52.00 [") and line[4] == "convergence" and line[5] == "holds |"
    reversed_ = [job(kla, s, 150.0 + 2 * s) for s in (1, 2, 3)] + [job(aux, s, 100.0 + s) for s in (1, 2, 3)]
    assert verdict_of(reversed_, "the aux cost helps, with KL annealing")[5] == "does not hold |"
    # the same numbers, but one run was stopped by its cap while still rising: what a budget shows
    capped = [*held[:-1], job(aux, 3, 156.0, stop="max_steps", late=5.0)]
    line = verdict_of(capped, "the aux cost helps, with KL annealing")
    assert line[5] == "cannot tell (capped while improving; holds at this budget) |"
    assert line[4].startswith("a budget")
    mixed = [job(kla, s, 100.0) for s in (1, 2, 3)] + [job(aux, s, 100.0 + (-1) ** s) for s in (1, 2, 3)]
    assert verdict_of(mixed, "the aux cost helps, with KL annealing")[5] == "cannot tell |"
    one_seed = [job(kla, 1, 100.0), job(aux, 1, 200.0)]
    assert verdict_of(one_seed, "the aux cost helps, with KL annealing")[5] == "cannot tell (n=1) |"
    # a claim whose rows the study does not have is named below the table instead of a number
    table = claims.claims_table(group_rows(held, ["variant"]), "test/elbo")
    assert not any(line.startswith("| Z-Forcing beats SRNN |") for line in table)
    assert "Z-Forcing beats SRNN" in table[-1] and "the aux cost helps, with KL annealing" not in table[-1]


def test_every_claim_names_rows_of_table_1_in_the_papers_order() -> None:
    rows = [line.split(" | ")[0].lstrip("| ") for line in (ROOT / "results" / "fsdd_table1_all" / "report.md")
            .read_text().splitlines() if line.startswith("| ") and " | " in line]
    for claim in claims.CLAIMS:
        assert claim.higher in rows and claim.lower in rows, claim
        higher, lower = (float(x.strip("≥ ")) for x in claim.paper.split(" vs "))
        assert higher > lower, claim


@pytest.mark.parametrize("study", ["fsdd_table1_6000_all", "fsdd_table1_all", "mnist_ablation_converged",
                                   "text_ablation_converged"])
def test_the_committed_claims_file_is_what_the_script_writes(study: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    folder = Path("results") / study
    assert (folder / "claims.md").read_text() == "\n".join(claims.report(folder, "test/elbo"))
