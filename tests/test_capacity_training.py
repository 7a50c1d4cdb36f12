"""Capacity experiments end to end: tiny models learn an easy instance, train.py writes the
accuracy per test length, sweep=capacity composes, and the report draws the heatmaps."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zf_lightning.conf import CONF_DIR
from zf_lightning.data.synthetic import ClassificationDataModule, IndexLookup
from zf_lightning.lit import SequenceLitModule
from zf_lightning.lit.module import EVAL_WEIGHTS
from zf_lightning.models import LRU, RNN, CategoricalHead, Transformer
from zf_lightning.report.build import build_report, write_report
from zf_lightning.report.heatmap import (
    at_chance,
    capacity_grid,
    capacity_headline,
    chance_by_length,
    heatmap_tables,
    width_needed,
    width_needed_table,
)
from zf_lightning.report.jobs import Job
from zf_lightning.report.rows import HEADLINE

BUILDERS = {
    "rnn": lambda spec: RNN(spec, CategoricalHead, emb_dim=16, rnn_dim=32),
    "transformer": lambda spec: Transformer(spec, CategoricalHead, d_model=32, layers=1, heads=2),
    "lru": lambda spec: LRU(spec, CategoricalHead, d_model=32, layers=1),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_tiny_models_learn_a_short_index_lookup(name: str) -> None:
    """4 symbols, N = 4: chance is 0.25; 400 updates (about a second) reach at least 0.95 on test
    sequences none of which was trained on."""
    torch.manual_seed(0)
    dm = ClassificationDataModule(IndexLookup(symbols=4), length=4, num_train=32 * 400, num_val=100, num_test=100,
                                  batch_size=32, eval_batch_size=100)
    dm.setup()
    lit = SequenceLitModule(BUILDERS[name](dm.spec), dm.spec, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    optimizer = lit.configure_optimizers()
    lit.eval()
    lit.test_step(next(iter(dm.test_dataloader())), 0)
    before = lit.epoch_metrics("test")["test/acc"]
    lit.reset_epoch_metrics("test")
    lit.train()
    for batch in dm.train_dataloader():
        loss, _ = lit.objective(batch, EVAL_WEIGHTS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lit.eval()
    with torch.no_grad():
        lit.test_step(next(iter(dm.test_dataloader())), 0)
    after = lit.epoch_metrics("test")
    assert before < 0.5
    assert after["test/acc"] >= 0.95 and after["test/acc_len4"] == after["test/acc"]
    assert after["test/pred_nll"] < 0.3


@pytest.mark.parametrize("model", ["rnn", "transformer", "lru", "zforcing"])
def test_train_writes_accuracy_per_test_length(compose_train: Callable[..., DictConfig], tmp_path: Path,
                                              model: str) -> None:
    from zf_lightning.runs.pipeline import train

    cfg = compose_train(
        "data=index_lookup", f"model={model}", "+width=16", "logger=csv", "trainer.max_steps=4",
        "trainer.enable_progress_bar=false", "data.length=4", "data.test_lengths=[4,7]", "data.num_train=64",
        "data.num_val=32", "data.num_test=32", "data.batch_size=16", "lit.class_samples=3", tiny=False,
    )
    assert cfg.model.get("rnn_dim", cfg.model.get("d_model")) == 16  # `width` sets every model's width
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["test/acc"] == pytest.approx((metrics["test/acc_len4"] + metrics["test/acc_len7"]) / 2)
    assert metrics["test/pred_nll"] > 0 and "val/acc" in metrics
    # the data's chance level rides along (4 symbols: the most frequent of N guessed blind)
    assert metrics["test/chance_acc_len4"] == pytest.approx(IndexLookup(4).chance_accuracy(4))
    assert metrics["test/chance_acc"] == pytest.approx(
        (IndexLookup(4).chance_accuracy(4) + IndexLookup(4).chance_accuracy(7)) / 2)


def test_capacity_sweep_composes_and_the_data_can_be_chosen(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("sweep=capacity", tiny=False)
    assert cfg.data.task._target_.endswith("IndexLookup") and cfg.width == 32 and cfg.model.rnn_dim == 32
    params = OmegaConf.load(CONF_DIR / "sweep" / "capacity.yaml").hydra.sweeper.params
    assert set(params) == {"model", "width", "data.length"}
    assert params.model.split(",") == ["rnn", "lru", "transformer", "zforcing"]
    cfg = compose_train("sweep=capacity", "data=dyck", "model=lru", "width=24", tiny=False)
    assert cfg.data.task._target_.endswith("BoundedDyck") and cfg.model.d_model == 24


def _job(model: str, width: int, length: int, acc: float, seed: int = 1, ok: bool = True) -> Job:
    overrides = {"model": model, "width": str(width), "data.length": str(length), "seed": str(seed)}
    metrics = {"test/acc": acc, "test/elbo": -1.0} if ok else {}
    return Job(name=f"{model}-{width}-{length}-{seed}", overrides=overrides, status="completed" if ok else "failed",
               metrics=metrics)


@pytest.mark.parametrize("task", ["index_lookup", "dyck", "string_equality", "nearest_neighbor"])
def test_every_length_of_the_capacity_sweep_draws_its_sets(compose_train: Callable[..., DictConfig],
                                                            task: str) -> None:
    # the sweep's lengths must suit every task: 8 brackets or 8-bit strings have too few distinct
    # sequences for disjoint validation and test sets, which fails only when the sets are drawn
    lengths = str(OmegaConf.load(CONF_DIR / "sweep" / "capacity.yaml").hydra.sweeper.params["data.length"])
    for length in lengths.split(","):
        cfg = compose_train("sweep=capacity", f"data={task}", f"data.length={length}", tiny=False)
        dm = instantiate(cfg.data)
        dm.setup("fit")
        dm.setup("test")
        assert len(dm.val_dataloader().dataset) == cfg.data.num_val


def test_report_draws_accuracy_heatmaps_per_model(tmp_path: Path) -> None:
    jobs = [_job("rnn", w, n, acc=min(1.0, w / n / 2)) for w in (8, 16) for n in (8, 32)]
    jobs += [_job("transformer", w, n, acc=0.9) for w in (8, 16) for n in (8, 32)]
    jobs += [_job("transformer", 8, 8, acc=0.7, seed=2), _job("rnn", 8, 32, acc=0.0, seed=2, ok=False)]
    grid = capacity_grid(jobs)
    assert set(grid) == {"rnn", "transformer"}
    assert grid["rnn"][(8, 32)] == [0.125]  # the failed seed is left out
    assert grid["transformer"][(8, 8)] == [0.9, 0.7]
    table = "\n".join(heatmap_tables(grid))
    assert "| 8 | 0.800 (n=2) | 0.900 |" in table and "| 16 | 1.000 | 0.250 |" in table
    build_report(jobs, tmp_path, "capacity")
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    assert "## Capacity heatmaps" in report and "![test/acc" in report
    assert "| rnn | 16 | > 16 |" in report  # the smallest width solving each length
    assert "## test/acc" in report  # classification sweeps lead with accuracy
    assert capacity_headline(jobs, "test/elbo", HEADLINE) == "test/acc"
    assert capacity_headline(jobs, "test/nll", HEADLINE) == "test/nll"  # an explicit choice wins


def test_heatmap_tables_end_with_the_chance_level_the_jobs_logged(tmp_path: Path) -> None:
    jobs = [_job("rnn", 8, n, acc=0.7) for n in (8, 32)] + [_job("lru", 8, 8, acc=0.9)]
    for job in jobs:
        job.metrics["test/chance_acc"] = {"8": 0.442, "32": 0.344}[job.overrides["data.length"]]
    jobs.append(_job("lru", 8, 32, acc=0.2, ok=False))
    jobs[-1].metrics["test/chance_acc"] = 0.9  # failed jobs are not read
    assert chance_by_length(jobs) == {8: 0.442, 32: 0.344}
    build_report(jobs, tmp_path, "capacity")
    report = (tmp_path / "report.md").read_text()
    assert "| 8 | 0.700 | 0.700 |\n| chance | 0.442 | 0.344 |" in report
    assert "| 8 | 0.900 |\n| chance | 0.442 |\n" in report  # only the lengths this panel ran
    assert "†: within two binomial standard errors of the chance level" in report
    # jobs that did not log it (studies run before it existed) get no row; jobs that disagree
    # at a length (the sweep varied the data too) get no value there
    for job in jobs:
        del job.metrics["test/chance_acc"]
    assert chance_by_length(jobs) == {}
    build_report(jobs, tmp_path / "old", "capacity")
    old = (tmp_path / "old" / "report.md").read_text()
    assert "| chance |" not in old and "cannot be read against it here" in old
    jobs[0].metrics["test/chance_acc"], jobs[2].metrics["test/chance_acc"] = 0.44, 0.5
    jobs[1].metrics["test/chance_acc"] = 0.34
    assert chance_by_length(jobs) == {32: 0.34}


def test_chance_computed_for_jobs_that_did_not_log_it_marks_their_cells(tmp_path: Path) -> None:
    """A study from before chance was logged: the levels of chance.csv (by job name) fill in, a
    logged value wins, and the report says which jobs' levels were computed."""
    jobs = [_job("rnn", 8, n, acc=acc) for n, acc in ((8, 0.45), (32, 0.9))] + [_job("lru", 8, 8, acc=0.9)]
    jobs[2].metrics["test/chance_acc"] = 0.442
    computed = {jobs[0].name: 0.442, jobs[1].name: 0.344, jobs[2].name: 0.5}
    assert chance_by_length(jobs, computed) == {8: 0.442, 32: 0.344}
    study = tmp_path / "study"
    build_report(jobs, study, "capacity", chance=computed)
    report = (study / "report.md").read_text()
    assert "| 8 | 0.450 † | 0.900 |\n| chance | 0.442 | 0.344 |" in report
    assert "2 of 3 jobs did not log test/chance_acc: their chance level was computed" in report
    assert (study / "chance.csv").read_text().splitlines()[1:] == [f"{job},{v!r}" for job, v in computed.items()]
    rebuilt = tmp_path / "rebuilt"  # from the committed files alone: jobs.csv, curves.csv, chance.csv
    rebuilt.mkdir()
    for name in ("jobs.csv", "curves.csv", "chance.csv"):
        (rebuilt / name).write_bytes((study / name).read_bytes())
    write_report(rebuilt)
    assert (rebuilt / "report.md").read_text().split("\n", 1)[1] == report.split("\n", 1)[1]


def test_cells_within_noise_of_chance_or_below_it_are_marked() -> None:
    # chance 0.32 with 500 test examples: two standard errors are 0.042, so 0.36 is noise, 0.37 is not
    assert at_chance(0.36, 0.32) and at_chance(0.25, 0.32) and not at_chance(0.37, 0.32)
    assert not at_chance(0.2, None) and not at_chance(math.nan, 0.32)
    grid = capacity_grid([_job("rnn", 8, 64, 0.264), _job("rnn", 16, 64, 0.9)])
    table = "\n".join(heatmap_tables(grid, chance={64: 0.32}))
    assert "| 8 | 0.264 † |" in table and "| 16 | 0.900 |" in table


def test_width_needed_is_the_smallest_width_that_solves_each_length() -> None:
    # rnn: solves 8 from width 16 (width 32 fails to train there), never solves 32
    jobs = [_job("rnn", 8, 8, 0.6), _job("rnn", 16, 8, 0.97), _job("rnn", 32, 8, 0.5), _job("rnn", 64, 8, 1.0)]
    jobs += [_job("rnn", w, 32, 0.4) for w in (8, 16, 32, 64)]
    # transformer: the mean over seeds decides (0.99 and 0.90 average to 0.945 < 0.95)
    jobs += [_job("transformer", 8, 8, 0.99), _job("transformer", 8, 8, 0.90, seed=2), _job("transformer", 16, 8, 0.96)]
    jobs += [_job("transformer", 8, 32, 0.95)]
    grid = capacity_grid(jobs)
    assert width_needed(grid["rnn"], 8) == 16
    assert width_needed(grid["rnn"], 32) is None
    assert width_needed(grid["transformer"], 8) == 16
    assert width_needed(grid["transformer"], 32) == 8
    assert width_needed(grid["rnn"], 8, threshold=0.99) == 64
    table = "\n".join(width_needed_table(grid))
    assert "| rnn | 16 | > 64 |" in table and "| transformer | 16 | 8 |" in table


def test_sweeps_without_width_and_length_get_no_heatmap(tmp_path: Path) -> None:
    jobs = [Job(name=str(s), overrides={"ablation": a, "seed": str(s)}, status="completed",
                metrics={"test/elbo": -float(s)}) for a in ("plain", "kla") for s in (1, 2)]
    build_report(jobs, tmp_path, "ablation")
    assert not (tmp_path / "heatmap.png").exists()
    assert "heatmap" not in (tmp_path / "report.md").read_text()
