"""What one job records about itself: ``status.json`` in its folder (running -> completed /
failed / interrupted, with the error and traceback, and whether training diverged), so a
crash is diagnosable after the fact and the report can list failed jobs; and how to find a
sweep's job folders."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback

from zf_lightning.data.cache import atomic_write_json

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
COMPLETED, FAILED, RUNNING, INTERRUPTED = "completed", "failed", "running", "interrupted"


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """A job's JSON record (status.json, metrics.json), written atomically: a reader never sees half a file."""
    atomic_write_json(path, payload, indent=2)


def job_identity() -> dict[str, Any]:
    """The Hydra job's overrides, number and sweep folder (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    info: dict[str, Any] = {
        "overrides": list(hc.overrides.task),
        "override_dirname": hc.job.override_dirname,
        "mode": str(hc.mode).rsplit(".", 1)[-1].lower(),
    }
    if info["mode"] == "multirun":
        info["num"] = hc.job.get("num")
        info["sweep_dir"] = str(hc.sweep.dir)
    return info


class JobStatus:
    """Maintains ``status.json`` in a job folder; only rank 0 writes (workers write
    ``status.rank<r>.json`` when they fail, since their error would otherwise be lost)."""

    def __init__(self, directory: Path, rank: int = 0) -> None:
        self.rank = rank
        self.path = directory / (STATUS_FILE if rank == 0 else f"status.rank{rank}.json")
        self.record: dict[str, Any] = {}

    def _save(self, **fields: Any) -> None:
        self.record.update(fields)
        if self.rank == 0 or self.record.get("status") == FAILED:
            write_json(self.path, self.record)

    def started(self, **fields: Any) -> None:
        """A new attempt of this folder's job. A resume (``ckpt_path=last hydra.run.dir=...``) has
        other overrides than the job it continues: the folder keeps the original job's identity
        (the report groups by it) and records the resuming command next to it."""
        job = job_identity()
        previous = read_status(self.path.parent).get("job") if self.rank == 0 else None
        self.record = {"status": RUNNING, "started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                       "job": previous or job}
        if previous and previous != job:
            self.record["resumed_by"] = job
        self._save(**fields)

    def update(self, **fields: Any) -> None:
        self._save(**fields)

    def completed(self) -> None:
        self._save(status=COMPLETED, finished=_now())

    def failed(self, error: BaseException) -> None:
        status = FAILED if isinstance(error, Exception) else INTERRUPTED
        self._save(status=status, finished=_now(), error=f"{type(error).__name__}: {error}",
                   traceback="".join(traceback.format_exception(error)))


class DivergenceWatch(Callback):
    """Remembers the monitored validation bound (lower is better) at the first and the latest
    validation, across resumes (its state rides in the checkpoints), so a run whose bound ended
    worse than where it started (e.g. a learning rate far too high) is said to have diverged,
    in the log and in status.json, instead of ending as a plain 'completed'."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.first: float | None = None
        self.last: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        if self.first is None:
            self.first = value
        self.last = value

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first, self.last = state_dict.get("first"), state_dict.get("last")

    def diverged(self) -> bool:
        if self.first is None or self.last is None:
            return False
        return not math.isfinite(self.last) or (math.isfinite(self.first) and self.last > self.first)

    def report(self) -> dict[str, Any]:
        """Fields for status.json (none before two validations); warns when the run diverged."""
        if self.first is None or self.last is None:
            return {}
        if not self.diverged():
            return {"diverged": False}
        message = (f"training diverged: {self.monitor} was {self.first:.6g} at the first validation and "
                   f"{self.last:.6g} at the last (lower is better); lower the learning rate (optim.lr)")
        log.warning("%s", message)
        return {"diverged": True, "warning": message,
                "divergence": {"metric": self.monitor, "first": self.first, "last": self.last}}


def read_status(directory: Path) -> dict[str, Any]:
    """A job's status record; a worker's failure wins over rank 0's 'running' (rank 0 was killed)."""
    path = directory / STATUS_FILE
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("status") in (None, RUNNING):
        for worker in sorted(directory.glob("status.rank*.json")):
            failure = json.loads(worker.read_text())
            if failure.get("status") == FAILED:
                return record | {k: failure[k] for k in ("status", "error", "traceback", "finished") if k in failure}
    return record


def job_folders(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep (any depth): folders with Hydra's overrides or our status/metrics."""
    found: set[Path] = set()
    for pattern in (".hydra/overrides.yaml", STATUS_FILE, "metrics.json"):
        for path in sweep_dir.rglob(pattern):
            job = path.parent.parent if pattern.startswith(".hydra") else path.parent
            if ".submitit" not in job.parts and "wandb" not in job.parts and job != sweep_dir:
                found.add(job)
    # a job folder never contains another job folder; drop candidates inside one
    jobs = [j for j in found if not any(o != j and o in j.parents for o in found)]

    def order(path: Path) -> tuple:
        rel = path.relative_to(sweep_dir).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel)

    return sorted(jobs, key=order)


def failed_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """Jobs that failed or never finished (no metrics.json), with their error."""
    failures = []
    for job in job_folders(sweep_dir):
        status = read_status(job)
        state = status.get("status")
        if state == COMPLETED and (job / "metrics.json").is_file():
            continue
        if state is None and (job / "metrics.json").is_file():
            continue  # written before status files existed
        failures.append((job, str(status.get("error") or f"status: {state or 'unknown'}, no metrics.json")))
    return failures
