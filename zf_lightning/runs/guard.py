"""What a job checks before it writes anything into its run folder, so a command that cannot
run leaves the folder as it found it:

- the folder is writable (a clear error naming it and the override that moves it);
- no other live run holds it (``RunLock``: a lock file with the holder's pid and host; a lock
  left by a dead process on this host is taken over);
- the config is sound: model sizes are positive integers, counts are integers, the learning
  rate is positive (the key is named, instead of an error deep inside torch or Lightning).

Comparing a resumed run's config with the stored one lives in ``zf_lightning.runs.resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.data.cache import is_writable_dir, pid_alive

log = logging.getLogger(__name__)

LOCK_FILE = ".zf-lock"
# what marks a folder as holding a run (a refused command must leave these untouched)
RUN_FILES = ("status.json", "config_resolved.yaml", "metrics.json", "checkpoints")


class RunFolderError(RuntimeError):
    """The run folder cannot be used by this command (held by another run, or unwritable)."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds (part of) a run."""
    return any((folder / name).exists() for name in RUN_FILES)


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written, naming it and how to choose another."""
    if not is_writable_dir(folder):
        raise RunFolderError(
            f"cannot write the run folder {folder}: it (or the nearest existing folder above it) is not writable. "
            "Choose another with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m sweeps; "
            "paths.output_dir when calling train() directly) or paths.log_dir=<folder>."
        )


class RunLock:
    """``<run>/.zf-lock``: held by the one live run that writes the folder.

    Created with ``O_EXCL`` (two runs starting at once cannot both get it). A lock whose process
    is gone (same host, pid not alive: a killed run) is taken over with a warning; a lock of a
    live process, or of another host (whose processes cannot be checked from here), is refused
    with the holder's pid and host and how to clear it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.record, fh)
        return True

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"pid": None, "host": None}

    def acquire(self) -> RunLock:
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            if not holder:
                continue  # released in between
            pid, host = holder.get("pid"), holder.get("host")
            stale = host == self.record["host"] and isinstance(pid, int) and not pid_alive(pid)
            if not stale:
                raise RunFolderError(
                    f"{self.path.parent} is in use by another run (pid {pid} on host {host}, lock {self.path}); "
                    "wait for it to end or choose another hydra.run.dir. If that run is gone (another host's "
                    f"process cannot be checked from here), delete {self.path}."
                )
            # take over: move the stale lock aside (only one taker can), check it was that one
            aside = self.path.with_name(f"{LOCK_FILE}.stale-{self.record['token']}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            moved = json.loads(aside.read_text() or "{}") if aside.is_file() else {}
            if moved.get("token") != holder.get("token"):  # another taker's fresh lock: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            log.warning("taking over %s from pid %s on %s, which is no longer running", self.path, pid, host)
        raise RunFolderError(
            f"could not lock {self.path.parent} ({self.path} keeps changing); is another run starting?"
        )

    def release(self) -> None:
        if self.held and self._holder().get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        self.held = False


# ------------------------------------------------------------------------------ config checks
MODEL_SIZES = ("emb_dim", "rnn_dim", "z_dim", "mlp_dim", "hidden_dim", "num_layers", "components")
# counts that must be integers: key -> smallest allowed value
COUNTS = {
    "trainer.max_steps": -1,
    "trainer.max_epochs": -1,
    "trainer.min_steps": -1,
    "trainer.min_epochs": 0,
    "trainer.log_every_n_steps": 1,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.accumulate_grad_batches": 1,
    "trainer.num_sanity_val_steps": -1,
    "data.batch_size": 1,
    "data.eval_batch_size": 1,
    "data.num_workers": 0,
    "samples.num": 0,
    "seed": None,
}
# limits that may be a count (batches) or a fraction (of the batches)
FRACTIONS_OR_COUNTS = ("trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
                       "trainer.val_check_interval")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every size or count in ``cfg`` that cannot be right, as ``key=value: why``."""
    problems: list[str] = []
    model = cfg.get("model") or {}
    for name in MODEL_SIZES:
        value = model.get(name) if isinstance(model, DictConfig) else None
        if value is not None and not (_is_int(value) and value >= 1):
            problems.append(f"model.{name}={value!r}: a layer size must be a positive integer")
    for key, smallest in COUNTS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not _is_int(value):
            problems.append(f"{key}={value!r}: must be an integer")
        elif smallest is not None and value < smallest:
            problems.append(f"{key}={value!r}: must be >= {smallest}")
    for key in FRACTIONS_OR_COUNTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{key}={value!r}: must be a number of batches or a fraction of them (>= 0)")
    problems += _learning_rate_problems(cfg)
    return problems


def _learning_rate_problems(cfg: DictConfig) -> list[str]:
    """``optim.lr`` and a directly set ``optim.optimizer.lr`` must be positive numbers: a rate of 0
    trains nothing, and a negative one climbs the loss."""
    optim = cfg.get("optim")
    if not isinstance(optim, DictConfig):
        return []
    rates = {"optim.lr": optim.get("lr")}
    optimizer = optim.get("optimizer")
    if isinstance(optimizer, DictConfig) and "lr" in optimizer and not OmegaConf.is_interpolation(optimizer, "lr"):
        rates["optim.optimizer.lr"] = optimizer.get("lr")
        if rates["optim.lr"] == rates["optim.optimizer.lr"]:
            del rates["optim.lr"]  # set through optim.optimizer.lr (sync_learning_rate copied it): name that key
    problems = []
    for key, lr in rates.items():
        if lr is None:
            continue
        if isinstance(lr, bool) or not isinstance(lr, int | float):
            problems.append(f"{key}={lr!r}: must be a number")
        elif not lr > 0:
            problems.append(f"{key}={lr!r}: a learning rate must be > 0")
    return problems


def check_config(cfg: DictConfig) -> None:
    """Refuse a config with impossible sizes or counts, naming every key (one error for all)."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError("invalid settings:\n  " + "\n  ".join(problems))


def sync_learning_rate(cfg: DictConfig) -> None:
    """``optim.lr`` is the learning rate users set; ``optim.optimizer.lr`` reads it. A command (or
    an older config) that sets ``optim.optimizer.lr`` itself wins, and ``optim.lr`` is made to
    match it, so the stored config says the rate the run used."""
    optim = cfg.get("optim")
    if not isinstance(optim, DictConfig) or "lr" not in optim or "lr" not in (optim.get("optimizer") or {}):
        return
    if OmegaConf.is_interpolation(optim.optimizer, "lr"):
        return
    used = optim.optimizer.lr
    if used != optim.lr:
        log.info("optim.optimizer.lr=%s is set directly; recording it as optim.lr (was %s)", used, optim.lr)
        with open_dict(optim):
            optim.lr = used
