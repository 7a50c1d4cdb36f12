"""Resuming: 2 epochs then 2 more equals 4 straight (RNG included), the W&B run id is kept,
the CSV history continues, and a run killed with SIGKILL resumes from the command line alone."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from tests.conftest import TINY, compose_config
from zf_lightning.runs.checkpoint import LAST, find_checkpoint, load_checkpoint
from zf_lightning.runs.pipeline import train
from zf_lightning.runs.resume import ResumePoint, _before, _rng_state, _set_rng_state, apply_overrides

REPO = Path(__file__).resolve().parents[2]
# 5 updates per epoch, W&B offline (conftest sets WANDB_MODE), no samples
RUN = [o for o in TINY if not o.startswith("logger")] + [
    "logger=wandb", "trainer.limit_train_batches=5", "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1",
    "samples.num=0",
]
COMPARED = ("test/elbo", "test/nll", "test/kl", "test/aux", "val/neg_elbo", "best/val/neg_elbo")


def compose_run(out: Path, cache: Path, *extra: str) -> DictConfig:
    return compose_config("train", [f"paths.output_dir={out}", f"paths.cache_dir={cache}", *RUN, *extra])


def wandb_ids(run_dir: Path) -> list[str]:
    """The W&B run id of every offline run folder, ``offline-run-<date>_<time>-<id>``; W&B appends
    ``-1`` when a resumed run starts within the same second as the one before, hence the regex."""
    names = [p.name for p in (run_dir / "wandb").glob("offline-run-*")]
    return sorted(m.group(1) for n in names if (m := re.match(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)", n)))


def val_rows(run_dir: Path) -> list[tuple[int, float]]:
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return [(int(r["step"]), float(r["val/elbo"])) for r in csv.DictReader(fh) if r.get("val/elbo")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], Path]:
    """Four epochs in one go: the reference every resumed run must end at."""
    out = tmp_path_factory.mktemp("straight")
    metrics = train(compose_run(out / "run", out / "cache", "trainer.max_epochs=4"))
    return metrics, out / "run"


@pytest.mark.slow
def test_two_epochs_then_two_more_equal_four_straight(straight, tmp_path: Path) -> None:
    reference, reference_dir = straight
    run = tmp_path / "run"
    train(compose_run(run, tmp_path / "cache", "trainer.max_epochs=2"))
    first_id = wandb_ids(run)
    assert len(first_id) == 1
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 10 and last["wandb_run"]["id"] == first_id[0]
    assert last["zf_config"]["model"]["rnn_dim"] == 16 and "rng" in last["callbacks"]["ResumeState"]

    resumed = train(compose_run(run, tmp_path / "cache", "trainer.max_epochs=4", "ckpt_path=last"))
    for key in COMPARED:
        assert resumed[key] == pytest.approx(reference[key], abs=1e-4), key
    assert wandb_ids(run) == first_id * 2  # a second offline segment of the same W&B run
    # the CSV history runs through the resume: every validation once, equal to the straight run's
    steps, values = zip(*val_rows(run), strict=True)
    ref_steps, ref_values = zip(*val_rows(reference_dir), strict=True)
    assert steps == ref_steps == (4, 9, 14, 19)
    assert values == pytest.approx(ref_values, abs=1e-4)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"].endswith("last.ckpt")


@pytest.mark.slow
def test_a_run_whose_folder_has_a_checkpoint_continues_on_its_own(straight, tmp_path: Path) -> None:
    """What a requeued SLURM job does: the same command again, no ckpt_path given."""
    reference, _ = straight
    run = tmp_path / "run"
    train(compose_run(run, tmp_path / "cache", "trainer.max_epochs=3"))
    resumed = train(compose_run(run, tmp_path / "cache", "trainer.max_epochs=4"))
    assert resumed["test/elbo"] == pytest.approx(reference["test/elbo"], abs=1e-4)
    assert len(set(wandb_ids(run))) == 1


# WANDB_SERVICE would attach the children to this process's W&B service, which still holds a
# killed child's run; a separate process (a shell, a requeued job) has none. ZF_TRUSTED_TARGETS:
# the tests' own callbacks are stored in the checkpoints a resume reads back
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {
    "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "ZF_TRUSTED_TARGETS": "tests."}


def signal_when_ready(cmd: list[str], flag: Path, signum: int) -> subprocess.Popen:
    """Start ``cmd``, wait until its test callback announces itself (``flag`` with suffix
    ``.ready``; no timing is asserted), send ``signum``, let a paused callback go on (``flag``
    removed) and wait for the process to end."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(6000):
            if flag.with_suffix(".ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        os.kill(proc.pid, signum)
        flag.unlink()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


class BlockAtEpoch(Callback):
    """Test helper: at the start of ``epoch`` (after the previous epoch's checkpoint), announce
    itself and wait to be killed, while the ``flag`` file exists."""

    def __init__(self, epoch: int, flag: str) -> None:
        self.epoch = epoch
        self.flag = Path(flag)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and self.flag.exists():
            self.flag.with_suffix(".ready").touch()
            time.sleep(600)


@pytest.mark.slow
def test_killed_run_resumes_from_the_command_line_and_ends_where_a_straight_run_ends(straight, tmp_path: Path) -> None:
    reference, _ = straight
    run, flag = tmp_path / "run", tmp_path / "block.flag"
    flag.touch()
    cmd = [sys.executable, "train.py", *RUN, "trainer.max_epochs=4", f"hydra.run.dir={run}",
           f"paths.cache_dir={tmp_path / 'cache'}", "+callbacks.block._target_=tests.runs.test_resume.BlockAtEpoch",
           "+callbacks.block.epoch=2", f"+callbacks.block.flag={flag}"]
    signal_when_ready(cmd, flag, signal.SIGKILL)
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    assert not (run / "metrics.json").exists()
    killed_id = wandb_ids(run)

    # the documented command: no overrides, the config comes from the checkpoint
    done = subprocess.run([sys.executable, "train.py", "ckpt_path=last", f"hydra.run.dir={run}"], cwd=REPO,
                          env=CHILD_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in COMPARED:
        assert metrics[key] == pytest.approx(reference[key], abs=1e-4), key
    assert wandb_ids(run) == killed_id * 2
    assert [s for s, _ in val_rows(run)] == [4, 9, 14, 19]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed"
    # the folder keeps its job's identity (the report groups by it); the resume is recorded beside it
    assert "trainer.max_epochs=4" in status["job"]["overrides"]
    assert status["resumed_by"]["overrides"] == ["ckpt_path=last"]


# ---------------------------------------------------------------------------- units
def test_resume_overrides_apply_values_and_refuse_other_groups() -> None:
    stored = {"seed": 1, "trainer": {"max_epochs": 2}, "callbacks": {"a": {"x": 1}, "b": {"y": 2}}}
    choices = {"ablation": "aux", "data": "mnist"}
    cfg = apply_overrides(stored, ["trainer.max_epochs=4", "ablation=aux", "~callbacks.b", "hydra.run.dir=/x",
                                   "ckpt_path=last", "++new.key=3"], choices, choices)
    assert cfg.trainer.max_epochs == 4 and cfg.seed == 1 and "b" not in cfg.callbacks and cfg.new.key == 3
    with pytest.raises(ValueError, match="trained with ablation=aux"):
        apply_overrides(stored, ["ablation=plain"], choices, choices)


def test_last_is_the_newest_checkpoint_and_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert find_checkpoint(tmp_path, LAST) is None
    (tmp_path / "checkpoints").mkdir()
    older, newer = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    older.write_bytes(b"a")
    newer.write_bytes(b"b")
    os.utime(older, ns=(1, 1))
    assert find_checkpoint(tmp_path, LAST) == newer
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path / "nope.ckpt"))


def test_csv_rows_kept_on_resume_are_those_logged_up_to_the_checkpoint() -> None:
    point = ResumePoint(Path("x"), epoch=1, global_step=10)
    keep = [{"epoch": "0", "step": "4"}, {"epoch": "1", "step": "9"}, {"epoch": "1", "step": "10"},
            {"epoch": "", "step": "5"}]
    drop = [{"epoch": "2", "step": "10"}, {"epoch": "2", "step": "12"}, {"epoch": "", "step": "10"}]
    assert all(_before(r, point) for r in keep)
    assert not any(_before(r, point) for r in drop)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.save({"rng": _rng_state()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(2), random.random())
    _set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# ---------------------------------------------------------------------------- exact mid-epoch resumes
# 5 batches per epoch, a validation after the third batch of every epoch (updates 3, 8, 13, 18)
MID = [*(o for o in RUN if not o.startswith("logger=")), "logger=csv", "trainer.max_epochs=-1",
       "trainer.val_check_interval=3"]
LEARNING_RATE_ROWS = "lr-"  # LearningRateMonitor: logged when an epoch starts


def csv_rows(run_dir: Path, skip: str | None = None) -> list[dict[str, str]]:
    """Every CSV row with its non-empty values (optionally without the rows of keys starting ``skip``)."""
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        rows = [{k: v for k, v in r.items() if v} for r in csv.DictReader(fh)]
    return [r for r in rows if skip is None or not any(k.startswith(skip) for k in r)]


@pytest.fixture(scope="module")
def straight_mid(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], Path]:
    """20 updates in one go with validations in the middle of epochs."""
    out = tmp_path_factory.mktemp("straight_mid")
    metrics = train(compose_run(out / "run", out / "cache", *MID, "trainer.max_steps=20"))
    return metrics, out / "run"


@pytest.mark.parametrize("cut", [7, 8, 13])
def test_a_run_capped_mid_epoch_and_continued_is_the_run_that_never_stopped(straight_mid, cut: int, tmp_path: Path,
                                                                           recwarn: pytest.WarningsRecorder) -> None:
    """Capped at update 7 (mid-epoch), 8 (a validation) or 13: raising the cap continues the
    completed run from its final state; the CSV, every validation and the final metrics are
    those of the straight run, and the data order continued mid-epoch."""
    reference, reference_dir = straight_mid
    run = tmp_path / "run"
    first = train(compose_run(run, tmp_path / "cache", *MID, f"trainer.max_steps={cut}"))
    assert first["train/updates"] == cut
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == cut
    resumed = train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=20"))
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert csv_rows(run) == csv_rows(reference_dir)
    assert json.loads((run / "status.json").read_text())["resumed_from"].endswith("last.ckpt")
    # Lightning cannot see that the data continues mid-epoch; its warning that it does not is not shown
    assert not [w for w in recwarn if "dataloader is not resumable" in str(w.message)]


def test_a_cap_at_an_epochs_end_continues_with_the_next_epoch(straight_mid, tmp_path: Path) -> None:
    """Capped at update 10, the end of the second epoch. The values and steps are the straight
    run's; only the learning-rate row of the next epoch's start is not logged again (Lightning
    closes the capped epoch on resume without the next epoch's start hooks)."""
    reference, reference_dir = straight_mid
    run = tmp_path / "run"
    train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=10"))
    resumed = train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=20"))
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert csv_rows(run, skip=LEARNING_RATE_ROWS) == csv_rows(reference_dir, skip=LEARNING_RATE_ROWS)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_completed_run_is_never_trained_again(straight_mid, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The same command, and ``ckpt_path=last``, on a completed run change no file; a converged
    run is not continued by a raised cap."""
    run = tmp_path / "run"
    done = train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=6"))
    before = snapshot(run)
    with caplog.at_level(logging.INFO, logger="zf_lightning.runs.resume"):
        again = train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=6"))
        last = train(compose_run(run, tmp_path / "cache", *MID, "trainer.max_steps=6", "ckpt_path=last"))
    assert again == last == json.loads((run / "metrics.json").read_text())
    assert again["test/elbo"] == done["test/elbo"]
    assert snapshot(run) == before
    assert "holds a completed run (max_steps after 6 updates): nothing to do" in caplog.text
    assert "Raise trainer.max_steps to continue it" in caplog.text

    converged = tmp_path / "converged"
    early = ["callbacks=early_stopping", "callbacks.early_stopping.patience=1",
             "callbacks.early_stopping.min_delta=1e9"]
    train(compose_run(converged, tmp_path / "cache", *MID, *early, "trainer.max_steps=20"))
    assert json.loads((converged / "status.json").read_text())["stop_reason"] == "converged"
    before = snapshot(converged)
    train(compose_run(converged, tmp_path / "cache", *MID, *early, "trainer.max_steps=40"))
    assert snapshot(converged) == before


def test_a_moved_run_folder_resumes_and_chooses_its_best_among_its_own_checkpoints(straight_mid,
                                                                                   tmp_path: Path) -> None:
    reference, _ = straight_mid
    first = tmp_path / "first"
    train(compose_run(first, tmp_path / "cache", *MID, "trainer.max_steps=7"))
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    resumed = train(compose_run(moved, tmp_path / "cache", *MID, "trainer.max_steps=20"))
    assert str(resumed["test/checkpoint"]).startswith(str(moved / "checkpoints"))
    for key in COMPARED:
        assert resumed[key] == reference[key], key


class PauseAfter(Callback):
    """Test helper: after update ``step`` (its batch's end), announce itself and wait while the
    ``flag`` file exists, so the test can signal the run at a known update."""

    def __init__(self, step: int, flag: str) -> None:
        self.step = step
        self.flag = Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.flag.exists():
            self.flag.with_suffix(".ready").touch()
            for _ in range(6000):
                if not self.flag.exists():
                    break
                time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_run_stopped_by_a_signal_mid_epoch_and_rerun_ends_where_a_straight_run_ends(
        straight_mid, how: str, tmp_path: Path) -> None:
    """Ctrl+C after update 11 stores that update's state and ends the run as interrupted; ``kill -9``
    there leaves the checkpoint of the validation at update 8. Rerunning the same command ends
    with the straight run's CSV, validations and metrics."""
    reference, reference_dir = straight_mid
    run, flag = tmp_path / "run", tmp_path / "pause.flag"
    flag.touch()
    cmd = [sys.executable, "train.py", *MID, "trainer.max_steps=20", f"hydra.run.dir={run}",
           f"paths.cache_dir={tmp_path / 'cache'}", "+callbacks.pause._target_=tests.runs.test_resume.PauseAfter",
           "+callbacks.pause.step=11", f"+callbacks.pause.flag={flag}"]
    proc = signal_when_ready(cmd, flag, getattr(signal, how))
    status = json.loads((run / "status.json").read_text())
    stored_step = load_checkpoint(run / "checkpoints" / "last.ckpt", {f"{__name__}.PauseAfter"})["global_step"]
    if how == "SIGINT":
        assert proc.returncode != 0 and status["status"] == "interrupted" and stored_step == 11
    else:
        assert status["status"] == "running" and stored_step == 8
    assert not (run / "metrics.json").exists()

    done = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in COMPARED:
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key
    assert csv_rows(run) == csv_rows(reference_dir)
    first, second = json.loads((run / "status.json").read_text())["attempts"]
    assert first["from_update"] == 0 and first.get("status") == ("interrupted" if how == "SIGINT" else None)
    assert second["from_update"] == stored_step and second["status"] == "completed" and second["updates"] == 20
    assert second["commit"] == first["commit"] and second["cpu"]
