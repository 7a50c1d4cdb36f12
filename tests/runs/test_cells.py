"""Sweeping a list of cells (zf_lightning/runs/cells.py): the scattered cells of a grid that a
study continues, each run once per job of the basic sweep."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.helpers import load_script
from zf_lightning.runs.cells import parse_cells

REPO = Path(__file__).resolve().parents[2]


def CellSweeper(**options: Any) -> Any:  # noqa: N802 - stands for the class
    """The sweeper class as Hydra's plugin scan last loaded it: the scan re-executes every plugin
    module and Hydra's own sweeper module, so a class imported before a scan no longer matches."""
    return importlib.import_module("hydra_plugins.zf_lightning_cells.cells_sweeper").CellSweeper(**options)


def jobs(sweeper: Any, *arguments: str) -> list[list[str]]:
    overrides = OverridesParser.create().parse_overrides([*sweeper._parse_config(), *arguments])
    return [job for batch in sweeper.split_arguments(overrides, sweeper.max_batch_size) for job in batch]


def test_every_job_of_the_sweep_runs_once_per_cell_cells_outermost() -> None:
    sweeper = CellSweeper(params={"seed": "1,2"}, cells=["model=rnn width=8", "model=lru width=16"])
    assert jobs(sweeper, "data.length=32") == [
        ["model=rnn", "width=8", "seed=1", "data.length=32"], ["model=rnn", "width=8", "seed=2", "data.length=32"],
        ["model=lru", "width=16", "seed=1", "data.length=32"], ["model=lru", "width=16", "seed=2", "data.length=32"]]
    batched = CellSweeper(max_batch_size=3, cells=["width=8", "width=16", "width=32", "width=64"])
    overrides = OverridesParser.create().parse_overrides([])
    assert [len(b) for b in batched.split_arguments(overrides, 3)] == [3, 1]


@pytest.mark.parametrize(("cells", "message"), [
    ([], "lists no cells"),
    (["model=rnn,lru width=8"], "sweeps a value"),
    (["width=8 width=16"], "sets a key twice"),
    (["width=8 model=rnn", "model=rnn width=8"], "listed twice"),
])
def test_a_malformed_cell_list_is_refused_naming_the_cell(cells: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CellSweeper(cells=cells)


def test_a_cell_that_sets_a_swept_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"sets \['width'\], which the sweep sets too"):
        jobs(CellSweeper(params={"width": "8,16"}, cells=["model=rnn width=8"]))


def test_the_boundary_studies_list_what_the_script_finds_in_their_committed_studies() -> None:
    """The cells a boundary study continues are the ones scripts/boundary_cells.py reads from the
    committed study it continues (kept once: the study lists them, the script says why)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from boundary_cells import boundary_cells

    from zf_lightning.runs.pipeline import compose_config

    for task in ("index_lookup", "dyck", "nearest_neighbor"):
        cfg = compose_config("train", [f"study=capacity_{task}_boundary"], return_hydra_config=True)
        assert list(cfg.hydra.sweeper.cells) == boundary_cells(REPO / "results" / f"capacity_{task}"), task
        assert [" ".join(c) for c in parse_cells(list(cfg.hydra.sweeper.cells))] == list(cfg.hydra.sweeper.cells)


@pytest.mark.parametrize(("study", "grid"), [("mnist_ablation_converged", "mnist_aux_grid"),
                                           ("text_ablation_converged", "text_aux_grid")])
def test_a_converged_ablation_runs_each_aux_row_at_the_weight_its_grid_chose(study: str, grid: str) -> None:
    """The aux cells of a rerun are what scripts/chosen_cells.py reads from the committed grid
    (the weight that keeps the term on); the other rows are the study's own, one cell per seed."""
    from zf_lightning.runs.pipeline import compose_config

    chosen = load_script("chosen_cells").chosen_cells(REPO / "results" / grid, ["schedule.aux_end"], ["1", "2", "3"],
                                                      term_on=True)
    cells = list(compose_config("train", [f"study={study}"], return_hydra_config=True).hydra.sweeper.cells)
    # a grid that swept one family names no family key: its cells then hold the study's own (ablation=aux)
    aux_cells = [set(c.split()) for c in cells if "schedule.aux_end=" in c]
    assert len(aux_cells) == len(chosen)
    assert all(any(set(line.split()) <= cell for cell in aux_cells) for line in chosen)
    assert all(any(set(line.split()) <= cell for line in chosen) for cell in aux_cells)
    for seed in ("1", "2", "3"):  # every row has every seed
        assert len([c for c in cells if c.endswith(f" seed={seed}")]) == len(cells) // 3


def test_the_text_row_in_use_runs_at_the_smallest_grid_weight_whose_latents_stayed_in_use() -> None:
    """study=text_aux_in_use's second rule, read from the committed grid: the smallest aux weight
    whose validation KL ended above 0.01 nats per word."""
    from zf_lightning.report.jobs import read_jobs
    from zf_lightning.runs.pipeline import compose_config

    jobs = read_jobs(REPO / "results" / "text_aux_grid")
    in_use = sorted(float(j.overrides["schedule.aux_end"]) for j in jobs if j.metrics["val/kl"] > 0.01)
    assert in_use and float(compose_config("train", ["study=text_aux_in_use"]).schedule.aux_end) == in_use[0]


@pytest.mark.slow
def test_a_cell_study_launches_one_job_per_cell(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "study=capacity_dyck_boundary",
           "hydra.sweeper.cells=['model=rnn width=8 data.length=16','model=lru width=8 data.length=16']",
           "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=csv", "data.num_train=32",
           "data.num_val=16", "data.num_test=16", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}",
           "study.results_dir=" + str(tmp_path / "results"), "hydra.launcher.n_jobs=1"]
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = [json.loads((sweep / n / "status.json").read_text()) for n in ("0", "1")]
    assert [s["job"]["overrides"][:3] for s in statuses] == [["model=rnn", "width=8", "data.length=16"],
                                                              ["model=lru", "width=8", "data.length=16"]]
    assert not (sweep / "2").exists()
