"""Real tiny multiruns through train.py: basic (with failing jobs), joblib, Optuna and
submitit_local. Every job its own folder and W&B run; the report equals the jobs' metrics."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, compose_config
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.pipeline import train
from zf_lightning.runs.policy import available_cpus, failure_value, global_rank
from zf_lightning.runs.status import JobStatus, read_status

REPO = Path(__file__).resolve().parents[2]

# one epoch of 3 updates, W&B offline
TINY_RUN = [o for o in TINY if not o.startswith("logger")] + [
    "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_test_batches=1",
    "samples.num=2",
]


def multirun(tmp_path: Path, *overrides: str, group: str = "grp-tiny-sweep",
             searched: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, Path]:
    """Run train.py -m; ``searched`` keys are left to the sweeper (a command-line value would fix them)."""
    sweep = tmp_path / group
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline",
                                                                          "PYTHONPATH": str(REPO)}
    tiny = [o for o in TINY_RUN if o.split("=", 1)[0] not in searched]
    cmd = [sys.executable, "train.py", "-m", *tiny, f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200), sweep


def jobs_of(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def wandb_runs(job: Path) -> list[Path]:
    return sorted((job / "wandb").glob("offline-run-*"))


def run_id(run_dir: Path) -> str:
    return run_dir.name.rsplit("-", 1)[-1]


def assert_one_wandb_run_per_job(jobs: list[Path], group: str) -> None:
    """N jobs -> N runs, each in its job's folder, holding that job's name and the sweep's group only."""
    names = [json.loads((j / "status.json").read_text())["job"]["override_dirname"] for j in jobs]
    ids = []
    for job, name in zip(jobs, names, strict=True):
        runs = wandb_runs(job)
        assert len(runs) == 1, f"{job}: {runs}"
        ids.append(run_id(runs[0]))
        record = next(runs[0].glob("run-*.wandb")).read_bytes()
        assert name.encode() in record and group.encode() in record
        assert not any(other.encode() in record for other in names if other != name)  # no shared history
        assert json.loads((job / "status.json").read_text())["wandb_run_id"] == ids[-1]
    assert len(set(ids)) == len(jobs)


@pytest.mark.slow
def test_basic_multirun_isolates_failures_and_the_report_matches_the_jobs(tmp_path: Path) -> None:
    # lr 1e30 turns the loss into NaN after the first update, and one skipped update ends the job
    proc, sweep = multirun(tmp_path, "sweep=ablation", "ablation=plain,kla", "seed=1,2",
                           "optim.optimizer.lr=3e-3,1e+30", "lit.max_consecutive_nonfinite=1")
    assert proc.returncode != 0  # two jobs failed: the sweep says so ...
    assert "4 of 8 jobs failed" in proc.stderr
    jobs = jobs_of(sweep)
    assert len(jobs) == 8  # ... but every job ran
    assert_one_wandb_run_per_job(jobs, sweep.name)
    values: dict[tuple[str, str], list[float]] = {}
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        if overrides["optim.optimizer.lr"] == "1e+30":
            assert status["status"] == "failed" and "had a non-finite loss" in status["error"]
            assert "Traceback" in status["traceback"] and not (job / "metrics.json").exists()
        else:
            assert status["status"] == "completed"
            for name in ("config_resolved.yaml", "csv/metrics.csv", "checkpoints/last.ckpt", "samples/prior.png"):
                assert (job / name).is_file(), name
            metrics = json.loads((job / "metrics.json").read_text())
            values.setdefault((overrides["ablation"], overrides["optim.optimizer.lr"]), []).append(metrics["test/elbo"])
    report = (sweep / "report.csv").read_text().splitlines()
    import csv

    rows = {(r["ablation"], r["optim.optimizer.lr"]): r for r in csv.DictReader(report)}
    assert len(rows) == 4
    for key, elbos in values.items():
        assert float(rows[key]["test/elbo mean"]) == pytest.approx(statistics.fmean(elbos), abs=1e-9)
        assert float(rows[key]["test/elbo std"]) == pytest.approx(statistics.stdev(elbos), abs=1e-9)
        assert rows[key]["n"] == "2" and rows[key]["failed"] == "0"
    assert rows[("plain", "1e+30")]["failed"] == "2" and rows[("plain", "1e+30")]["n"] == "0"
    text = (sweep / "report.md").read_text()
    assert "| Z-Forcing + kla |" in text and "had a non-finite loss" in text


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_with_a_share_of_the_cpus_each(tmp_path: Path) -> None:
    proc, sweep = multirun(tmp_path, "hydra/launcher=joblib_local", "seed=1,2", group="grp-joblib")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 2
    assert_one_wandb_run_per_job(jobs, sweep.name)
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed"
        assert status["torch_threads"] == max(1, available_cpus() // 2)
    pids = {json.loads((j / "status.json").read_text())["pid"] for j in jobs}
    assert os.getpid() not in pids and (sweep / "report.md").exists() is False  # no sweep config: no report


@pytest.mark.slow
def test_optuna_runs_three_trials_into_a_resumable_study(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc, sweep = multirun(tmp_path, "sweep=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}",
                           "hydra.sweeper.study_name=tiny", group="grp-optuna", searched=("model.z_dim",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    jobs = jobs_of(sweep)
    for trial, job in zip(trials, jobs, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["best/val/neg_elbo"])
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"model.z_dim={trial.params['model.z_dim']}" in overrides
    assert set(trials[0].params) == {"optim.optimizer.lr", "schedule.aux_end", "model.z_dim"}
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == pytest.approx(
        min(t.value for t in trials))
    assert (sweep / "report.md").exists()


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path) -> None:
    proc, sweep = multirun(tmp_path, "hydra/launcher=submitit_cpu", "seed=1,2", group="grp-submitit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    assert_one_wandb_run_per_job(jobs, sweep.name)
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed" and status["torch_threads"] == 1  # cpus_per_task
        assert "test/elbo" in json.loads((job / "metrics.json").read_text())
    assert (sweep / ".submitit").is_dir()


# ---------------------------------------------------------------------------- units (fast)
def test_continue_on_failure_records_the_error_and_returns_the_worst_value(tmp_path: Path) -> None:
    import wandb

    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", *TINY_RUN, "optim.optimizer.lr=-1.0",
                                   "++continue_on_failure=true"])
    result = train(cfg)
    assert result == {"val/neg_elbo": math.inf, "failed": 1.0}  # train.py hands this to the sweeper
    status = read_status(tmp_path)
    assert status["status"] == "failed"
    assert status["error"] == "ValueError: invalid settings:\n  optim.optimizer.lr=-1.0: a learning rate must be > 0"
    assert "check_config" in status["traceback"] and wandb.run is None
    cfg = compose_config("train", [f"paths.output_dir={tmp_path / 'b'}", *TINY_RUN, "optim.optimizer.lr=-1.0"])
    with pytest.raises(ValueError, match="a learning rate must be > 0"):  # off by default: the error propagates
        train(cfg)
    assert read_status(tmp_path / "b")["status"] == "failed"


def test_failure_value_is_the_worst_for_the_direction() -> None:
    assert failure_value(RunContext()) == math.inf  # outside Hydra: minimize (-ELBO)
    assert failure_value(RunContext(mode="multirun", sweeper_direction="maximize")) == -math.inf


def test_ranks_from_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert global_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert global_rank() == 1
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert global_rank() != 0  # the first process of the second node does not write the job's files
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert global_rank() == 5


def test_only_rank_zero_writes_status_unless_a_worker_fails(tmp_path: Path) -> None:
    worker = JobStatus(tmp_path, rank=1)
    worker.started()
    worker.completed()
    assert not list(tmp_path.iterdir())
    worker.failed(RuntimeError("gloo timeout"))
    assert json.loads((tmp_path / "status.rank1.json").read_text())["error"] == "RuntimeError: gloo timeout"


def test_the_run_context_is_what_hydra_says_and_empty_outside_it() -> None:
    from hydra.core.hydra_config import HydraConfig

    assert RunContext.from_hydra() == RunContext() and not RunContext().hydra_job and RunContext().identity() == {}
    full = compose_config("train", ["ablation=aux", "seed=3"], return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    try:
        context = RunContext.from_hydra()
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert context.hydra_job and not context.multirun and context.choices["ablation"] == "aux"
    assert context.overrides == ("ablation=aux", "seed=3") and context.job_name
    assert context.identity()["overrides"] == ["ablation=aux", "seed=3"]
    assert context.run_identity(["t"])["tags"] == ["t", "ablation=aux", "seed=3"]
    sweep = RunContext(mode="multirun", override_dirname="seed=1", num=4, sweep_dir="/s/abc")
    assert sweep.identity() | {"overrides": []} == {"overrides": [], "override_dirname": "seed=1", "mode": "multirun",
                                                    "num": 4, "sweep_dir": "/s/abc"}
    assert sweep.run_identity([])["group"] == "abc"
