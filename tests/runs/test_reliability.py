"""Nothing lost, nothing run that should not be (issue 13, items 1-6; item 7 is
test_mixed_precision.py): untrusted checkpoints run no code, a run folder is protected from a
run that cannot continue it and from a second live run, a resume keeps its group choices, bad
input is refused naming its key or file, damaged checkpoints and caches are survived, and the
messages point the right way. docs/resuming.md ("What happens when things go wrong") lists
these cases."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import TINY, compose_config
from zf_lightning.conf import CONF_DIR
from zf_lightning.runs.checkpoint import (
    CHOICES_KEY,
    CONFIG_KEY,
    AtomicCheckpointIO,
    UnreadableCheckpointError,
    load_checkpoint,
)
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.guard import LOCK_FILE, RunFolderError, RunLock
from zf_lightning.runs.pipeline import train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# 3 updates per epoch, no samples, no test pass: the runs here are about the folder, not the numbers
SHORT = ["trainer.limit_train_batches=3", "samples.num=0", "test=false", "trainer.max_epochs=1"]


def short_run(out: Path, *extra: str) -> DictConfig:
    return compose_config("train", [f"paths.output_dir={out}", f"paths.cache_dir={out.parent / 'cache'}", *TINY,
                                    *SHORT, *extra])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed one-epoch run folder (copied by tests that change it)."""
    out = tmp_path_factory.mktemp("completed") / "run"
    train(short_run(out))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ------------------------------------------------------------------------------ 1. untrusted checkpoints
class RunsCode:
    """Pickles as a call of os.system: loading it unrestricted would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, CONFIG_KEY: {}, "payload": RunsCode(marker)}, path)
    return path


def test_a_crafted_checkpoint_given_to_eval_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match="is not a trusted checkpoint"):
        evaluate(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("resume", ["ckpt_path=last", "auto_resume=true"])
def test_a_crafted_last_ckpt_in_a_run_folder_runs_no_code(resume: str, tmp_path: Path) -> None:
    marker, run = tmp_path / "pwned", tmp_path / "run"
    crafted_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"last\.ckpt is not a trusted checkpoint"):
        train(short_run(run, resume))
    assert not marker.exists()
    assert snapshot(run) == before  # refused before writing anything


def test_a_stored_config_that_would_build_code_is_refused(tmp_path: Path) -> None:
    """Plain data, no pickle trick: a config whose _target_ is os.system would run it when built."""
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "plain.ckpt"
    config = {"data": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
              "model": {"_target_": "zf_lightning.models.ZForcing"}}
    torch.save({"state_dict": {}, CONFIG_KEY: config}, ckpt)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match=r"is not a trusted checkpoint: its stored config would build os\.system"):
        evaluate(cfg)
    assert not marker.exists()


def test_a_stored_target_reached_through_a_trusted_module_is_refused_everywhere(tmp_path: Path) -> None:
    """``zf_lightning.runs.checkpoint.os.makedirs`` starts like a trusted name but is os.makedirs:
    refused by load_checkpoint, by eval.py and by a resume, and nothing is built."""
    made = tmp_path / "made_by_the_checkpoint"
    config = {"data": {"_target_": "zf_lightning.runs.checkpoint.os.makedirs", "name": str(made)},
              "model": {"_target_": "zf_lightning.models.ZForcing"}, "paths": {"output_dir": str(tmp_path)}}
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 3, CONFIG_KEY: config}, ckpt)
    refused = r"is not a trusted checkpoint: its stored config would build zf_lightning\.runs\.checkpoint\.os\.makedirs"
    with pytest.raises(ValueError, match=refused + r" \(defined in os\)"):
        load_checkpoint(ckpt)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match=refused):
        evaluate(cfg)
    before = snapshot(run)
    with pytest.raises(ValueError, match=refused):
        train(short_run(run, "ckpt_path=last"))
    assert not made.exists()
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ 2. protected run folders
def test_a_run_that_cannot_continue_a_folder_leaves_it_byte_for_byte_unchanged(completed: Path,
                                                                                  tmp_path: Path) -> None:
    run = copy_run(completed, tmp_path / "run")
    before = snapshot(run)
    assert {"status.json", "config_resolved.yaml", "checkpoints/last.ckpt"} <= set(before)
    with pytest.raises(ValueError, match=r"model\.z_dim: stored 4, now 8") as refused:
        train(short_run(run, "model.z_dim=8", "trainer.max_epochs=2"))
    assert "Nothing was written" in str(refused.value)
    assert snapshot(run) == before
    assert not (run / LOCK_FILE).exists()


class WaitForRelease(Callback):
    """Test helper: at the start of epoch 1 (after epoch 0's checkpoint) signals ``reached`` and
    waits for ``release``, so another run can try the folder meanwhile."""

    reached = threading.Event()
    release = threading.Event()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            WaitForRelease.reached.set()
            WaitForRelease.release.wait(timeout=300)


def test_two_runs_into_one_folder_the_second_is_refused_and_the_first_completes(monkeypatch: pytest.MonkeyPatch,
                                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("ZF_TRUSTED_TARGETS", "tests.")  # the waiting callback is stored in the checkpoints
    run = tmp_path / "run"
    first_cfg = short_run(run, "trainer.max_epochs=2",
                          "+callbacks.wait._target_=tests.runs.test_reliability.WaitForRelease")
    WaitForRelease.reached.clear()
    WaitForRelease.release.clear()
    result: dict[str, object] = {}
    first = threading.Thread(target=lambda: result.update(metrics=train(first_cfg)))
    first.start()
    try:
        assert WaitForRelease.reached.wait(timeout=300)
        during = snapshot(run)
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}"):
            train(short_run(run, "model.z_dim=8"))
        assert snapshot(run) == during  # the second run wrote nothing
    finally:
        WaitForRelease.release.set()
        first.join(timeout=300)
    assert "metrics" in result
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and "error" not in status
    stored = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert stored["global_step"] == 6 and stored[CONFIG_KEY]["model"]["z_dim"] == 4
    assert OmegaConf.load(run / "config_resolved.yaml").model.z_dim == 4
    assert not (run / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_live_one_refused(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "token": "x"}))
    taken = RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "token": "y"}))
    with pytest.raises(RunFolderError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "token": "z"}))
    with pytest.raises(RunFolderError, match="another-host"):  # cannot be checked from here: refused
        RunLock(tmp_path).acquire()


# ------------------------------------------------------------------------------ 3. resume keeps its choices
@contextmanager
def hydra_job(overrides: list[str]) -> Iterator[tuple[DictConfig, RunContext]]:
    """What ``python train.py <overrides>`` hands to train(), in-process: the task config and the
    run context of Hydra's runtime (choices, command-line overrides)."""
    full = compose_config("train", overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    task = OmegaConf.create(OmegaConf.to_container(full, resolve=False))
    with open_dict(task):
        del task["hydra"]
    try:
        yield task, RunContext.from_hydra()
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


def test_a_resume_that_names_no_groups_keeps_the_stored_choices(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    paths = [f"paths.output_dir={run}", f"paths.cache_dir={cache}"]
    with hydra_job([*paths, *TINY, *SHORT]) as (cfg, context):  # TINY has logger=csv
        train(cfg, context)
    # the README's resume command: no overrides besides the run folder and a longer budget
    with hydra_job([*paths, "ckpt_path=last", "trainer.max_epochs=2"]) as (cfg, context):
        assert cfg.logger.get("wandb") is not None  # this command's own default is logger=wandb
        train(cfg, context)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")[CHOICES_KEY]["logger"] == "csv"
    assert not (run / "wandb").exists()
    # resuming again with the true choice is accepted
    with hydra_job([*paths, "ckpt_path=last", "trainer.max_epochs=3", "logger=csv"]) as (cfg, context):
        train(cfg, context)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 9


# ------------------------------------------------------------------------------ 4. bad input refused
@pytest.mark.parametrize(("override", "key"), [
    ("model.z_dim=0", "model.z_dim"),
    ("model.z_dim=-3", "model.z_dim"),
    ("model.rnn_dim=2.5", "model.rnn_dim"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs"),
    ("data.batch_size=0", "data.batch_size"),
    ("optim.optimizer.lr=0", "optim.optimizer.lr"),
    ("optim.lr=-0.001", "optim.lr"),
])
def test_a_bad_size_or_count_is_refused_naming_its_key(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{key}=.*must be"):
        train(short_run(tmp_path / "run", override))
    assert not any((tmp_path / "run" / name).exists() for name in ("checkpoints", "config_resolved.yaml", "csv"))


def test_optim_lr_is_the_learning_rate_and_the_old_key_still_works(tmp_path: Path) -> None:
    param = [torch.nn.Parameter(torch.zeros(1))]
    cfg = short_run(tmp_path / "a", "optim.lr=0.02")
    assert instantiate(cfg.optim.optimizer)(param).param_groups[0]["lr"] == 0.02
    cfg = short_run(tmp_path / "b", "optim=adam_plateau", "optim.lr=0.03")
    assert instantiate(cfg.optim.optimizer)(param).param_groups[0]["lr"] == 0.03
    old = tmp_path / "old"
    train(short_run(old, "optim.optimizer.lr=0.005"))  # a command written before optim.lr existed
    stored = load_checkpoint(old / "checkpoints" / "last.ckpt")[CONFIG_KEY]["optim"]
    assert stored["lr"] == stored["optimizer"]["lr"] == 0.005  # the record says the rate that was used


def test_a_plateau_schedule_waits_for_the_first_validation(tmp_path: Path) -> None:
    """Epochs of 3 updates, a validation every 5: the first epoch ends before the scheduler's metric exists."""
    metrics = train(short_run(tmp_path / "run", "optim=adam_plateau_slow", "trainer.max_epochs=-1",
                              "trainer.max_steps=10", "trainer.val_check_interval=5",
                              "trainer.check_val_every_n_epoch=null"))
    assert metrics["train/updates"] == 10


def sentence_module(files: list[Path], cache: Path):
    from zf_lightning.data.text.sentences import SentencesDataModule

    return SentencesDataModule(files=[str(f) for f in files], cache_dir=str(cache), vocab_size=50, batch_size=4)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n", bytes(range(256)) * 4, b"ok line\n\x00\x01\x02 binary\n"])
def test_a_sentence_file_that_is_empty_or_not_text_is_refused_naming_it(content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    dm = sentence_module([FIXTURES / "tiny_text" / "pos.txt", bad], tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"{bad}.*(no sentences|not UTF-8 text|not text)"):
        dm.prepare_data()


class SpoilWeightsAfterFirstValidation(Callback):
    """Test helper: scales every weight by 10 right after the first validation, so the bound ends
    worse than it started whatever the optimizer does (a high learning rate's path is chaotic)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.global_step == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.mul_(10.0)


def test_a_diverged_run_is_flagged_in_the_log_and_status(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZF_TRUSTED_TARGETS", "tests")  # the spoiling callback is stored in the checkpoints
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="zf_lightning.runs.stopping"):
        train(short_run(run, "trainer.max_steps=3", "trainer.val_check_interval=1",
                        "+callbacks.spoil._target_=tests.runs.test_reliability.SpoilWeightsAfterFirstValidation"))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["diverged"] is True and status["bound_fell"] is True
    first, last = status["first_and_last_validation"]["val/objective"]
    assert last > first
    assert "training diverged: val/objective was" in caplog.text
    sane = tmp_path / "sane"
    metrics = train(short_run(sane, "trainer.max_epochs=2"))
    status = json.loads((sane / "status.json").read_text())
    assert status["diverged"] is False and status["bound_fell"] is False
    assert status["first_and_last_validation"]["val/objective"][1] == pytest.approx(metrics["val/objective"])


def test_a_model_broken_by_a_huge_learning_rate_reports_a_nonfinite_bound(tmp_path: Path) -> None:
    """NaN bounds stay NaN (torchmetrics would drop them and report 0.0), mark the run diverged, and
    are written to metrics.json as null with their keys listed: strict JSON, never a number."""
    run = tmp_path / "run"
    metrics = train(short_run(run, "optim.optimizer.lr=1e30", "trainer.limit_train_batches=6", "trainer.max_steps=6",
                              "test=true", "trainer.limit_test_batches=1"))
    assert math.isnan(metrics["val/neg_elbo"]) and math.isnan(metrics["test/neg_elbo"])

    def no_constants(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    record = json.loads((run / "metrics.json").read_text(), parse_constant=no_constants)
    assert record["val/neg_elbo"] is None and record["test/elbo"] is None
    assert {"val/neg_elbo", "test/neg_elbo", "test/elbo"} <= set(record["nonfinite_keys"])
    assert all(record[k] is None for k in record["nonfinite_keys"])
    status = json.loads((run / "status.json").read_text(), parse_constant=no_constants)
    assert status["status"] == "completed" and status["diverged"] is True


# ------------------------------------------------------------------------------ 5. damaged files
def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    before = target.read_bytes()

    def killed_midway(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert target.read_bytes() == before  # the previous checkpoint, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


class CheckpointWriterSpy(Callback):
    """Test helper: records which writer the Trainer saves checkpoints with."""

    seen: ClassVar[list[str]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        CheckpointWriterSpy.seen.append(type(trainer.strategy.checkpoint_io).__name__)


def test_the_pipeline_writes_checkpoints_through_the_atomic_writer(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("ZF_TRUSTED_TARGETS", "tests.")  # the spy callback is stored in the checkpoints
    CheckpointWriterSpy.seen.clear()
    train(short_run(tmp_path / "run", "+callbacks.spy._target_=tests.runs.test_reliability.CheckpointWriterSpy"))
    assert CheckpointWriterSpy.seen == ["AtomicCheckpointIO"]


def test_an_unreadable_last_ckpt_falls_back_to_the_newest_readable_one(
        completed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = copy_run(completed, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a kill or a full disk mid-write
    with caplog.at_level(logging.WARNING, logger="zf_lightning.runs.resume"):
        train(short_run(run, "trainer.max_epochs=2"))
    assert f"{last} is not a readable checkpoint" in caplog.text and f"resuming from {best}" in caplog.text
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"] == str(best)
    assert load_checkpoint(last)["global_step"] == 6  # a whole last.ckpt again
    assert (run / "checkpoints" / "last.ckpt.damaged").is_file()  # the damaged one, kept aside


@pytest.mark.parametrize("content", [b"epoch 3, step 12\n", b'{"state_dict": {}}\n', b"zf_config:\n  seed: 1\n", b""])
def test_a_file_that_is_not_a_checkpoint_says_so_and_a_run_falls_back_from_it(
        content: bytes, completed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A text, JSON or YAML file is not a checkpoint (not 'KeyError: 101', not 'could run code'); as a
    run's last.ckpt it is passed over like a damaged one."""
    notes = tmp_path / "notes.ckpt"
    notes.write_bytes(content)
    with pytest.raises(UnreadableCheckpointError, match=rf"{notes} is not a checkpoint: it (holds text|is empty)"):
        load_checkpoint(notes)
    cfg = compose_config("eval", [f"ckpt_path={notes}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(UnreadableCheckpointError, match=rf"{notes} is not a checkpoint"):
        evaluate(cfg)
    run = copy_run(completed, tmp_path / "run")
    last, best = run / "checkpoints" / "last.ckpt", next((run / "checkpoints").glob("best-*.ckpt"))
    last.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="zf_lightning.runs.resume"):
        train(short_run(run, "trainer.max_epochs=2"))
    assert f"{last} is not a checkpoint" in caplog.text and f"resuming from {best}" in caplog.text
    assert load_checkpoint(last)["global_step"] == 6


def test_eval_of_a_truncated_checkpoint_names_the_file(completed: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "cut.ckpt"
    whole = (completed / "checkpoints" / "last.ckpt").read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 3])
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match=rf"{ckpt} is not a readable checkpoint"):
        evaluate(cfg)


def test_a_text_cache_whose_arrays_do_not_match_its_metadata_is_rebuilt(tmp_path: Path) -> None:
    files = [FIXTURES / "tiny_text" / "neg.txt", FIXTURES / "tiny_text" / "pos.txt"]
    dm = sentence_module(files, tmp_path / "cache")
    dm.setup()
    expected = [dm.train_set[i] for i in range(len(dm.train_set))]
    ids = dm.cache_path / "train_ids.npy"
    np.save(ids, np.load(ids)[:-5])  # a shorter array than the metadata says (valid .npy, wrong size)
    again = sentence_module(files, tmp_path / "cache")
    again.setup()
    assert again.cache_path == dm.cache_path
    got = [again.train_set[i] for i in range(len(again.train_set))]
    assert len(got) == len(expected)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected, strict=True))


def test_an_audio_cache_cut_short_is_rebuilt(tmp_path: Path) -> None:
    from tests.fixtures_audio import signal, write_sound
    from zf_lightning.data.audio.cache import STREAM_FILE, open_or_build

    root = tmp_path / "audio"
    root.mkdir()
    names = [f"{i}.wav" for i in range(3)]
    for i, name in enumerate(names):
        write_sound(root / name, signal(800 + 100 * i, seed=i), 8000)
    corpus = open_or_build(root, names, tag="t", sample_rate=8000, downmix=True)
    whole = corpus.stream.read(0, len(corpus.stream))
    stream = corpus.directory / STREAM_FILE
    stream.write_bytes(stream.read_bytes()[:-400])  # truncated: the header still says the full length
    again = open_or_build(root, names, tag="t", sample_rate=8000, downmix=True)
    assert again.directory == corpus.directory
    assert np.array_equal(again.stream.read(0, len(again.stream)), whole)


# ------------------------------------------------------------------------------ 6. messages
def test_ckpt_path_last_in_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    typo = tmp_path / "rnu"
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last .* holds no checkpoint.*hydra\.run\.dir"):
        train(short_run(typo, "ckpt_path=last"))
    assert not (typo / "checkpoints").exists() and not (typo / "config_resolved.yaml").exists()


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match=rf"cannot write the run folder {locked / 'run'}.*hydra\.run\.dir"):
            train(short_run(locked / "run"))
        cfg = compose_config("eval", [f"ckpt_path={FIXTURES / 'text_zforcing_before_layout.ckpt'}",
                                      f"paths.output_dir={locked / 'eval'}"])
        with pytest.raises(RunFolderError, match="cannot write the run folder"):
            evaluate(cfg)
    finally:
        locked.chmod(0o755)


def test_a_moved_data_folder_names_the_override_that_points_at_the_new_place(tmp_path: Path) -> None:
    files = [tmp_path / "data" / name for name in ("neg.txt", "pos.txt")]
    files[0].parent.mkdir()
    for f in files:
        f.write_bytes((FIXTURES / "tiny_text" / f.name).read_bytes())
    run = tmp_path / "run"
    listed = f"data.files=[{','.join(str(f) for f in files)}]"

    def sentences_run(*extra: str) -> DictConfig:
        tiny_text = [o for o in TINY if not o.startswith("data.")] + ["data=sentences", listed, "analyses=none",
                                                                        "data.batch_size=8", "data.vocab_size=50"]
        return compose_config("train", [f"paths.output_dir={run}", f"paths.cache_dir={tmp_path / 'cache'}",
                                        *tiny_text, *SHORT, *extra])

    train(sentences_run())
    (tmp_path / "data").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"has moved.*train\.py ckpt_path=last .* data\.files=<new place>"):
        train(sentences_run("trainer.max_epochs=2"))
    last = run / "checkpoints" / "last.ckpt"
    cfg = compose_config("eval", [f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'e'}"])
    with pytest.raises(FileNotFoundError, match=r"eval\.py ckpt_path=.*'\+data_overrides\.files=<new place>'"):
        evaluate(cfg)


def test_the_downmix_hint_names_the_key_to_set(tmp_path: Path) -> None:
    import soundfile as sf

    from zf_lightning.data.audio.io import AudioReadError, read_audio

    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((800, 2), dtype=np.float32), 8000)
    with pytest.raises(AudioReadError, match=r"data\.downmix=true"):
        read_audio(path, 8000, downmix=False)


def test_the_fsdd_regex_example_in_the_config_parses_as_written() -> None:
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = (CONF_DIR / "data" / "audio_folder.yaml").read_text()
    line = next(line for line in text.splitlines() if "data.test_pattern" in line)
    overrides = shlex.split(line.lstrip("# "))
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["data.test_pattern"] == r"_[0-4]\.wav$" and parsed["data.label_pattern"] == r"^(\d+)_"



# ------------------------------------------------------------------------------ through train.py and eval.py
REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, script, *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_through_train_py_a_completed_run_stays_byte_for_byte(tmp_path: Path) -> None:
    """Hydra's records (.hydra/, train.log) are the job's: a repeated command, ``ckpt_path=last``
    and a refused command leave every file of a completed folder, subfolders included, as it was."""
    run = tmp_path / "run"
    command = [*TINY, *SHORT, f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = run_script("train.py", *command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / ".hydra" / "overrides.yaml").is_file() and "training stopped" in (run / "train.log").read_text()
    before = snapshot(run)
    again = run_script("train.py", *command)
    assert again.returncode == 0 and "holds a completed run" in again.stdout + again.stderr
    assert snapshot(run) == before
    last = run_script("train.py", "ckpt_path=last", f"hydra.run.dir={run}")
    assert last.returncode == 0, last.stderr[-3000:]
    assert snapshot(run) == before
    refused = run_script("train.py", *command, "model.z_dim=64")
    assert refused.returncode != 0 and "model.z_dim: stored 4, now 64" in refused.stderr
    assert snapshot(run) == before


@pytest.mark.slow
def test_through_the_scripts_an_unwritable_output_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        trained = run_script("train.py", *TINY, *SHORT, f"hydra.run.dir={locked / 'run'}")
        evaluated = run_script("eval.py", f"ckpt_path={FIXTURES / 'text_zforcing_before_layout.ckpt'}",
                               f"hydra.run.dir={locked / 'eval'}")
    finally:
        locked.chmod(0o755)
    for result, folder in ((trained, locked / "run"), (evaluated, locked / "eval")):
        assert result.returncode != 0
        assert f"cannot write the run folder {folder}" in result.stderr
        assert "PermissionError" not in result.stderr and "Unable to configure handler" not in result.stderr
    assert not (locked / "run").exists() and not (locked / "eval").exists()
