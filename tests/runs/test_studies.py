"""Runs that end when they have learned (issue 14): early stopping records why a run stopped
and where its best checkpoint was; completed jobs of a study are not run again; every study
config composes and its first updates run."""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, missing_data, require_shared
from zf_lightning.conf import CONF_DIR
from zf_lightning.data.synthetic import ClassificationDataModule
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.guard import check_config
from zf_lightning.runs.pipeline import build_datamodule, build_module, compose_config, train
from zf_lightning.runs.status import code_version
from zf_lightning.runs.stopping import (
    BOUND_FELL,
    CONVERGED,
    DIVERGED,
    MAX_STEPS,
    NOT_FINITE,
    OBJECTIVE_NOT_RECORDED,
    DivergenceWatch,
    PlateauStopping,
    RunEnding,
)

STUDIES = sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))
VALIDATE_EVERY_5 = ["trainer.val_check_interval=5", "trainer.check_val_every_n_epoch=null", "trainer.max_epochs=-1"]


def run(tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                                   *TINY, "samples.num=0", *overrides])
    metrics = train(cfg)
    return metrics, json.loads((tmp_path / "status.json").read_text())


@pytest.mark.slow
def test_early_stopping_ends_a_flat_run_and_says_so(tmp_path: Path) -> None:
    # lr 1e-12: the validation bound moves only by posterior-sampling noise, far below min_delta, so
    # patience 2 ends the run at the third validation
    metrics, status = run(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.patience=2",
                          "callbacks.early_stopping.min_delta=1000", "optim.lr=1e-12", "trainer.max_steps=200",
                          *VALIDATE_EVERY_5)
    assert status["stop_reason"] == metrics["stop_reason"] == CONVERGED
    assert status["updates"] == metrics["train/updates"] == 15
    # the best checkpoint is one of the validated updates (noise decides which)
    assert status["best_step"] == metrics["best/step"] and status["best_step"] in (5, 10, 15)
    # the commit the code ran from: {} where the code is not a git checkout (a copy, an installed package)
    assert status["code"] == code_version() and status["machine"]["cpus"] >= 1


@pytest.mark.slow
def test_validations_before_start_step_do_not_use_up_the_patience(tmp_path: Path) -> None:
    # validations at 5, 10, 15, 20: the one at 5 is neither counted nor remembered, so patience 2
    # runs out at 20 (counted from update 5 it would have run out at 15)
    metrics, status = run(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.patience=2",
                          "callbacks.early_stopping.min_delta=1000", "optim.lr=1e-12", "trainer.max_steps=200",
                          "callbacks.early_stopping.start_step=10", *VALIDATE_EVERY_5)
    assert status["stop_reason"] == CONVERGED and status["updates"] == metrics["train/updates"] == 20


@pytest.mark.slow
def test_min_steps_holds_early_stopping_back_and_the_cap_is_recorded(tmp_path: Path) -> None:
    _, status = run(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                    "callbacks.early_stopping.min_delta=1000", "optim.lr=1e-12", "trainer.max_steps=20",
                    "trainer.min_steps=20", *VALIDATE_EVERY_5)
    # early stopping wanted to stop at update 10; the cap it ran into is what ended the run
    assert status["stop_reason"] == MAX_STEPS and status["updates"] == 20


@pytest.mark.slow
def test_a_completed_job_is_not_run_again_and_a_raised_cap_continues_it(tmp_path: Path) -> None:
    first, _ = run(tmp_path, "trainer.max_steps=5")
    stamp = (tmp_path / "metrics.json").stat().st_mtime_ns
    again, status = run(tmp_path, "trainer.max_steps=5")
    assert again == json.loads((tmp_path / "metrics.json").read_text())
    assert again["test/elbo"] == first["test/elbo"] and status["updates"] == 5
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == stamp
    extended, status = run(tmp_path, "trainer.max_steps=10")
    assert extended["train/updates"] == status["updates"] == 10 and status["resumed_from"].endswith("last.ckpt")


def test_there_are_studies() -> None:
    assert "fsdd_ablation" in STUDIES


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_each_study_composes_and_its_first_updates_run(study: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"study={study}", f"paths.output_dir={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir.endswith(f"studies/{study}") and cfg.study.results_dir == f"results/{study}"
    assert cfg.continue_on_failure and cfg.torch_threads == 1
    # exactly one rule decides that the study's runs converged, and it is built (it has a target)
    rules = [k for k, v in cfg.callbacks.items() if v is not None and str(v.get("_target_", "")).endswith(
        ("EarlyStoppingAfter", "PlateauStopping"))]
    assert len(rules) == 1, dict(cfg.callbacks)
    stopping = rules[0]
    assert cfg.trainer.max_steps > 0 and cfg.callbacks[stopping].start_step >= 0
    if missing := missing_data(cfg.data):
        require_shared(*missing)
    # tiny sizes for whichever of them the study's model has (an LSTM has no z_dim)
    sizes = {"emb_dim": 8, "rnn_dim": 8, "z_dim": 2, "mlp_dim": 8}
    tiny = [f"model.{k}={v}" for k, v in sizes.items() if k in cfg.model] + ["trainer.max_steps=2",
            f"callbacks.{stopping}.start_step=0", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "trainer.val_check_interval=1", "logger=csv", "analyses=none", "samples.num=0",
            "continue_on_failure=false"]  # a failure raises here, instead of returning the worst value
    cfg = compose_config("train", [f"study={study}", f"paths.output_dir={tmp_path}",
                                   f"paths.cache_dir={tmp_path / 'cache'}", *tiny])
    metrics = train(cfg)
    assert metrics["train/updates"] == 2 and metrics["stop_reason"] == MAX_STEPS


def study_rows(study: str) -> list[list[str]]:
    """Every row of a study: the product of its swept values (seeds aside, they change no config),
    parsed as Hydra parses the sweeper's params, once per listed cell where the study lists cells."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zf_lightning.runs.cells import parse_cells

    sweeper = compose_config("train", [f"study={study}"], return_hydra_config=True).hydra.sweeper
    params = sweeper.get("params") or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items() if k != "seed"])
    swept = [[f"{o.get_key_element()}={value}" for value in
              (o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()])]
             for o in parsed]
    rows = [list(row) for row in itertools.product(*swept)]
    cells = [[o for o in cell if not o.startswith("seed=")] for cell in parse_cells(list(sweeper.get("cells") or []))]
    unique = list(dict.fromkeys(tuple(cell) for cell in cells))
    return [list(cell) + row for cell in unique for row in rows] if unique else rows


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_every_row_of_every_study_builds_its_data_and_model(study: str, tmp_path: Path) -> None:
    # the test above runs the study's config without its swept values; each row adds a model or
    # data choice on top (study=fsdd_table1's +variant=rnn_gauss met the Z-Forcing sizes of its
    # experiment and failed to build), so every row must compose, pass the checks and build
    rows = study_rows(study)
    assert rows
    if missing := missing_data(compose_config("train", [f"study={study}"]).data):
        require_shared(*missing)
    drawn: set[str] = set()
    for row in rows:
        cfg = compose_config("train", [f"study={study}", *row, f"paths.output_dir={tmp_path}",
                                       f"paths.cache_dir={tmp_path / 'cache'}"])
        check_config(cfg)
        dm = build_datamodule(cfg)
        lit = build_module(cfg, dm)
        assert sum(p.numel() for p in lit.parameters()) > 0, row
        # generated tasks draw their fixed sets at setup, and a size with too few distinct
        # sequences fails only there (capacity_string_equality once swept 8-bit strings:
        # 256 equal pairs for 500 test sequences), so each distinct data config draws them
        data_key = OmegaConf.to_yaml(cfg.data)
        if isinstance(dm, ClassificationDataModule) and data_key not in drawn:
            drawn.add(data_key)
            dm.setup("fit")
            dm.setup("test")


def test_a_completed_folder_of_another_job_is_refused_not_reported(tmp_path: Path) -> None:
    from zf_lightning.runs import status

    (tmp_path / "metrics.json").write_text(json.dumps({"test/elbo": -1.0}))
    (tmp_path / "status.json").write_text(json.dumps({"status": "completed",
                                                      "job": {"override_dirname": "ablation=plain,seed=1"}}))
    same = RunContext(mode="multirun", override_dirname="ablation=plain,seed=1")
    assert status.completed_metrics(tmp_path, same) == {"test/elbo": -1.0}
    # a single run may continue the folder with other overrides (ckpt_path=last, a raised cap)
    resume = RunContext(mode="run", override_dirname="ckpt_path=last")
    assert status.completed_metrics(tmp_path, resume) == {"test/elbo": -1.0}
    other = RunContext(mode="multirun", override_dirname="ablation=kla,seed=1")
    with pytest.raises(ValueError, match=r"holds a completed run of another job \('ablation=plain,seed=1'\)"):
        status.completed_metrics(tmp_path, other)


def test_a_completed_folder_is_recognised_by_the_sweep_command_that_last_resumed_it(tmp_path: Path) -> None:
    """A study continued with an added override (a callback its first attempt lacked) finishes
    its jobs under that command; rerunning the same command finds them complete."""
    from zf_lightning.runs import status

    (tmp_path / "metrics.json").write_text(json.dumps({"val/elbo": 1.0}))
    (tmp_path / "status.json").write_text(json.dumps({
        "status": "completed", "job": {"override_dirname": "optim=adam,seed=1"},
        "resumed_by": {"override_dirname": "callbacks.plateau.window=4,optim=adam,seed=1"}}))
    resumed = RunContext(mode="multirun", override_dirname="callbacks.plateau.window=4,optim=adam,seed=1")
    assert status.completed_metrics(tmp_path, resumed) == {"val/elbo": 1.0}
    assert status.completed_metrics(tmp_path, RunContext(mode="multirun", override_dirname="optim=adam,seed=1"))
    with pytest.raises(ValueError, match="another job"):
        status.completed_metrics(tmp_path, RunContext(mode="multirun", override_dirname="optim=sgd,seed=1"))


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(p.stem for p in (CONF_DIR / "variant" / "sets").glob("*.yaml")))
def test_every_row_of_the_set_study_trains_and_reports_its_flip_rate(row: str, tmp_path: Path) -> None:
    cfg = compose_config("train", ["study=sets_sire", f"+variant=sets/{row}", "data=set_parity",
                                   f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                                   "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
                                   "data.num_val=20", "data.num_test=20", "samples.num=0"])
    assert cfg.table_row
    metrics = train(cfg)
    assert metrics["train/updates"] == 3 and 0.0 <= metrics["test/perm_flip_rate"] <= 1.0
    assert {"test/acc_len10", "test/acc_len100"} <= set(metrics)


@pytest.mark.parametrize(("study", "twin"), [("capacity_index_lookup_1layer", "capacity_index_lookup"),
                                             ("capacity_dyck_1layer", "capacity_dyck")])
def test_one_layer_transformer_studies_differ_from_their_twin_only_in_the_layers(study: str, twin: str) -> None:
    # the theorems are about one layer; their rows are read next to the 2-layer study's, so data,
    # widths, lengths and budget must stay the same if either study changes
    rows = study_rows(study)
    assert rows == [row for row in study_rows(twin) if row[0] == "model=transformer"]
    for row in (rows[0], rows[-1]):
        one = compose_config("train", [f"study={study}", *row])
        two = compose_config("train", [f"study={twin}", *row])
        assert one.model.layers == 1 and two.model.layers == 2
        assert one.study.name == study and one.study.results_dir == f"results/{study}"
        for key in ("data", "trainer", "callbacks", "optim", "lit", "seed"):
            assert one[key] == two[key], key
        one.model.layers = 2
        assert one.model == two.model


def plateau(history: list[tuple[int, float]], **kwargs) -> PlateauStopping:
    rule = PlateauStopping(**({"window": 4000, "min_fraction": 0.02, "smooth": 4} | kwargs))
    rule.history = history
    return rule


def test_the_plateau_rule_waits_out_a_slow_climb_and_stops_a_flat_curve() -> None:
    # the kla_aux FSDD curve: -1,336 at update 250, rising ~35 nats per 1,000 updates near 20,000
    climbing = [(s, 1336.0 - 2600.0 * (1 - math.exp(-s / 8000))) for s in range(250, 22_001, 250)]
    assert plateau(climbing).decide() is None
    flat = climbing + [(s, climbing[-1][1] - 0.5 * (s - 22_000) / 1000) for s in range(22_250, 30_001, 250)]
    assert plateau(flat).decide() == CONVERGED  # 2 nats gained over 4,000 updates, 0.1 % of the total
    assert plateau(climbing[:15]).decide() is None  # no full window yet
    assert plateau([*climbing, (22_250, float("nan"))]).decide() == NOT_FINITE
    worse = [(s, 100.0 + s / 1000) for s in range(250, 6_001, 250)]
    assert plateau(worse).decide() == CONVERGED  # no gain at all over the window


def test_a_run_diverged_when_its_objective_got_worse_not_when_only_its_bound_fell() -> None:
    """(first, last) pairs, lower is better: the aux-dominated run (bound worse, objective better) is
    named apart; a non-finite bound is a divergence even with no objective recorded."""
    assert RunEnding.of((60.0, 220.0), (-2500.0, -2900.0)).verdict == BOUND_FELL
    assert RunEnding.of((60.0, 220.0), (-2500.0, -2400.0)).verdict == DIVERGED
    assert RunEnding.of((60.0, 50.0), (-2500.0, -2400.0)).verdict == DIVERGED
    assert RunEnding.of((60.0, 50.0), (10.0, float("nan"))).verdict == DIVERGED
    assert RunEnding.of((60.0, 50.0), (10.0, 5.0)).verdict is None
    assert RunEnding.of((60.0, 220.0), None).verdict == OBJECTIVE_NOT_RECORDED
    assert RunEnding.of((60.0, float("inf")), None).verdict == DIVERGED
    assert RunEnding.of((60.0, 50.0), None) == RunEnding(bound_fell=False, diverged=None)


def watched(*validations: tuple[float, float]) -> DivergenceWatch:
    """A watch that saw these (val/neg_elbo, val/objective) validations, after a sanity check it ignores."""
    watch = DivergenceWatch("val/neg_elbo")
    trainer = SimpleNamespace(sanity_checking=True, callback_metrics={"val/neg_elbo": 1e9, "val/objective": 1e9})
    watch.on_validation_end(trainer, None)
    for bound, objective in validations:
        trainer = SimpleNamespace(sanity_checking=False,
                                  callback_metrics={"val/neg_elbo": bound, "val/objective": objective})
        watch.on_validation_end(trainer, None)
    return watch


def test_the_watch_names_a_falling_bound_apart_from_a_divergence(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zf_lightning.runs.stopping"):
        record = watched((67.0, -2498.0), (150.0, -2700.0), (217.0, -2938.0)).report()
    assert record == {"diverged": False, "bound_fell": True, "first_and_last_validation": {
        "val/neg_elbo": [67.0, 217.0], "val/objective": [-2498.0, -2938.0]}}
    assert "the bound fell while the objective improved" in caplog.text and "diverged" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zf_lightning.runs.stopping"):
        record = watched((67.0, -2498.0), (217.0, -2400.0)).report()
    assert record["diverged"] is True and "training diverged: val/objective was -2498" in caplog.text
    resumed = DivergenceWatch("val/neg_elbo")
    resumed.load_state_dict(watched((67.0, -2498.0), (60.0, -2500.0)).state_dict())
    assert resumed.report()["diverged"] is False and resumed.report()["bound_fell"] is False
    assert DivergenceWatch("val/neg_elbo").report() == {}


@pytest.mark.slow
def test_a_run_on_a_plateau_stops_as_converged_and_resumes_the_same_decision(tmp_path: Path) -> None:
    # a learning rate of 1e-12: the bound moves only by sampling noise, so with a window of 10
    # updates and validations every 5 the rule stops at the first full window after smoothing
    rule = ["callbacks=plateau", "callbacks.plateau.window=10", "callbacks.plateau.smooth=2",
            "callbacks.plateau.min_fraction=0.5", "optim.lr=1e-12", "trainer.max_steps=200", *VALIDATE_EVERY_5]
    metrics, status = run(tmp_path / "straight", *rule)
    assert status["stop_reason"] == metrics["stop_reason"] == CONVERGED
    assert status["updates"] == metrics["train/updates"] <= 25
    _, status = run(tmp_path / "cut", *rule[:-4], "trainer.max_steps=10", *VALIDATE_EVERY_5)
    assert status["stop_reason"] == MAX_STEPS
    resumed, status = run(tmp_path / "cut", *rule)
    assert status["stop_reason"] == CONVERGED and resumed["train/updates"] == metrics["train/updates"]
