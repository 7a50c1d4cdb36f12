"""scripts/capacity_thresholds.py: a continued cell replaces its budgeted run, and a threshold is
read at convergence only where no narrower cell was still rising at its cap."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script
from zf_lightning.report.jobs import Job
from zf_lightning.runs.status import COMPLETED
from zf_lightning.runs.stopping import MAX_STEPS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def thresholds() -> ModuleType:
    return load_script("capacity_thresholds")


def job(model: str, width: int, length: int, acc: float, stop: str = "converged", gain: float = 0.0,
        seed: str | None = None) -> Job:
    overrides = {"model": model, "width": str(width), "data.length": str(length)} | ({"seed": seed} if seed else {})
    curve = [(0, 0.5), (800, 0.5 + acc / 10), (1000, 0.5 + acc / 10 + gain)]
    return Job(f"{model}-{width}-{length}-{seed}", overrides, COMPLETED, metrics={"test/acc": acc},
               curves={"val/acc": curve}, info={"stop_reason": stop})


def test_a_narrower_cell_still_rising_at_its_cap_leaves_the_threshold_open(thresholds: ModuleType) -> None:
    base = [job("lru", 8, 16, 0.6, MAX_STEPS, gain=0.1), job("lru", 16, 16, 0.97), job("lru", 32, 16, 0.99),
            job("lru", 8, 32, 0.6), job("lru", 16, 32, 0.7), job("lru", 32, 32, 0.8, MAX_STEPS, gain=0.05),
            job("lru", 8, 48, 0.6), job("lru", 16, 48, 0.7)]
    grid = thresholds.cells({thresholds.job_key(j): j for j in base})["lru"]
    assert thresholds.threshold(grid, 16) == "<= 16"  # width 8 might have solved it
    assert thresholds.threshold(grid, 32) == "> 32?"
    assert thresholds.threshold(grid, 48) == "> 16"  # every cell converged unsolved
    assert thresholds.threshold(grid, 64) == "–"
    # continued to convergence, width 8 stays unsolved: the threshold is read at convergence
    merged = thresholds.merged_jobs(base, [job("lru", 8, 16, 0.7, "converged", gain=0.001)])
    assert thresholds.threshold(thresholds.cells(merged)["lru"], 16) == "16"
    # a cap that stopped a cell rising by less than the rule's 0.02 is not an open question
    merged = thresholds.merged_jobs(base, [job("lru", 8, 16, 0.7, MAX_STEPS, gain=0.01)])
    assert thresholds.threshold(thresholds.cells(merged)["lru"], 16) == "16"


def test_seeds_are_averaged_and_replaced_one_by_one(thresholds: ModuleType) -> None:
    base = [job("transformer", 16, 64, 0.58, MAX_STEPS, gain=0.2), job("transformer", 16, 64, 0.99, seed="2"),
            job("transformer", 32, 64, 1.0), job("transformer", 32, 64, 1.0, seed="2")]
    merged = thresholds.merged_jobs(base, [job("transformer", 16, 64, 0.97)])
    assert merged[("transformer", 16, 64, "2")].metrics["test/acc"] == 0.99  # the other seed kept
    cell = thresholds.cells(merged)["transformer"][(16, 64)]
    assert cell.seeds == 2 and cell.accuracy == pytest.approx(0.98) and not cell.rising
    assert thresholds.threshold(thresholds.cells(merged)["transformer"], 64) == "16"
    with pytest.raises(ValueError, match="continues no cell"):
        thresholds.merged_jobs(base, [job("transformer", 8, 64, 0.5)])


def test_the_committed_dyck_study_reads_with_its_continued_cells(
    thresholds: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    results = Path("results")  # as the committed file's command names it
    text = "\n".join(thresholds.report(results / "capacity_dyck", results / "capacity_dyck_boundary"))
    assert "replaces 15 of them" in text
    assert text.count("| transformer |") == 2  # the budget's row and the continued one
    assert (results / "capacity_dyck_boundary" / "thresholds.md").read_text() == text  # the committed file is this
    png = tmp_path / "heatmap_continued.png"
    thresholds.write_continued_heatmap(png, results / "capacity_dyck", results / "capacity_dyck_boundary")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
