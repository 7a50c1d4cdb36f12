"""scripts/chance_levels.py computes a capacity study's chance levels from its data config: it
reproduces exactly what the jobs of committed studies logged, the committed chance.csv files agree
with it, and it refuses a study whose data settings have changed since it ran. Each check reads
one job per length of a committed study (its STUDY.md and a few rows of its jobs.csv)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.fixture(scope="module")
def chance_levels() -> ModuleType:
    return load_script("chance_levels")


def one_job_per_length(study: str, tmp_path: Path) -> Path:
    """A copy of a committed study folder with its STUDY.md and the first job of each length."""
    copy = tmp_path / study
    copy.mkdir()
    (copy / "STUDY.md").write_bytes((RESULTS / study / "STUDY.md").read_bytes())
    with (RESULTS / study / "jobs.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows, lengths = [], set()
        for row in reader:
            length = next(o for o in row["overrides"].split() if o.startswith("data.length="))
            if length not in lengths:
                lengths.add(length)
                rows.append(row)
    with (copy / "jobs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        writer.writerows(rows)
    return copy


@pytest.mark.parametrize("study", ["capacity_nearest_neighbor_8bit", "capacity_index_lookup_1layer"])
def test_the_computed_chance_is_what_the_jobs_logged(chance_levels: ModuleType, study: str,
                                                     tmp_path: Path) -> None:
    levels = chance_levels.chance_levels(one_job_per_length(study, tmp_path))
    assert len(levels) == {"capacity_nearest_neighbor_8bit": 3, "capacity_index_lookup_1layer": 4}[study]
    for computed, logged in levels.values():
        assert logged is not None and computed == logged
    if study == "capacity_nearest_neighbor_8bit":  # k = 2, 4, 8 stored labels: the most frequent one
        assert sorted(c for c, _ in levels.values()) == [0.63671875, 0.6875, 0.75]


@pytest.mark.parametrize("study", ["capacity_dyck", "capacity_nearest_neighbor", "capacity_string_equality"])
def test_the_committed_chance_files_hold_the_computed_levels(chance_levels: ModuleType, study: str,
                                                             tmp_path: Path) -> None:
    with (RESULTS / study / "chance.csv").open(newline="") as fh:
        committed = {row["job"]: float(row["test/chance_acc"]) for row in csv.DictReader(fh)}
    levels = chance_levels.chance_levels(one_job_per_length(study, tmp_path))
    assert len(levels) == 3
    assert {job: computed for job, (computed, _) in levels.items()} == {job: committed[job] for job in levels}


def test_a_study_whose_data_settings_changed_is_refused(chance_levels: ModuleType, tmp_path: Path) -> None:
    study = one_job_per_length("capacity_dyck", tmp_path)
    notes = study / "STUDY.md"
    notes.write_text(notes.read_text().replace("negative: swap", "negative: substitute", 1))
    with pytest.raises(SystemExit, match=r"data\.task\.negative: ran with 'substitute', now 'swap'"):
        chance_levels.chance_levels(study)


def test_check_mode_compares_and_writes_nothing(chance_levels: ModuleType, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    study = one_job_per_length("capacity_dyck_1layer", tmp_path)
    assert chance_levels.main([str(study), "--check"]) == 0
    assert "3 logged chance levels reproduced exactly" in capsys.readouterr().out
    assert not (study / "chance.csv").exists()
    rows = (study / "jobs.csv").read_text().replace(",0.5,", ",0.25,", 1)  # a logged value that disagrees
    (study / "jobs.csv").write_text(rows)
    assert chance_levels.main([str(study)]) == 1
    assert "computed 0.5, logged 0.25" in capsys.readouterr().err and not (study / "chance.csv").exists()
