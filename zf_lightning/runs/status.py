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
import platform
import socket
import subprocess
import traceback
from pathlib import Path
from typing import Any

from zf_lightning.data.cache import atomic_write_json
from zf_lightning.runs.context import RunContext

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
COMPLETED, FAILED, RUNNING, INTERRUPTED = "completed", "failed", "running", "interrupted"


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


NONFINITE_KEYS = "nonfinite_keys"  # in a written record: the keys whose values were NaN or infinite


def _strict(node: Any, key: str, nonfinite: list[str]) -> Any:
    """``node`` with every NaN or infinite number replaced by None, its dotted key added to ``nonfinite``."""
    if isinstance(node, dict):
        return {k: _strict(v, f"{key}.{k}" if key else str(k), nonfinite) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_strict(v, f"{key}[{i}]", nonfinite) for i, v in enumerate(node)]
    if isinstance(node, float) and not math.isfinite(node):
        nonfinite.append(key)
        return None
    return node


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """A job's JSON record (status.json, metrics.json), written atomically: a reader never sees half a file.

    The file is strict JSON: a NaN or infinite value (a diverged model's bound) is written as
    null and its key listed under ``nonfinite_keys``, never as a number and never as the
    ``NaN`` that Python writes and other JSON readers reject."""
    nonfinite: list[str] = []
    record = _strict(dict(payload), "", nonfinite)
    if nonfinite:
        record[NONFINITE_KEYS] = nonfinite
    atomic_write_json(path, record, indent=2)


class UnreadableRecordError(ValueError):
    """A job's status.json or metrics.json that is not valid JSON (edited by hand, damaged)."""


def read_record(path: Path) -> dict[str, Any]:
    """A job's JSON record; one that cannot be parsed raises ``UnreadableRecordError`` naming the file."""
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableRecordError(f"{path} is not readable JSON ({err})") from err
    if not isinstance(record, dict):
        raise UnreadableRecordError(f"{path} is not a job record: it holds a JSON {type(record).__name__}")
    return record


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json as the job returned it: the values listed as non-finite are NaN again."""
    record = read_record(path)
    for key in record.pop(NONFINITE_KEYS, None) or []:
        if key in record and record[key] is None:
            record[key] = math.nan
    return record


class JobStatus:
    """Maintains ``status.json`` in a job folder; only rank 0 writes (workers write
    ``status.rank<r>.json`` when they fail, since their error would otherwise be lost)."""

    def __init__(self, directory: Path, rank: int = 0, context: RunContext | None = None) -> None:
        self.rank = rank
        self.context = context or RunContext()
        self.path = directory / (STATUS_FILE if rank == 0 else f"status.rank{rank}.json")
        self.record: dict[str, Any] = {}

    def _save(self, **fields: Any) -> None:
        self.record.update(fields)
        if self.rank == 0 or self.record.get("status") == FAILED:
            write_json(self.path, self.record)

    def started(self, from_update: int = 0, **fields: Any) -> None:
        """A new attempt of this folder's job, from update ``from_update``. A resume (``ckpt_path=last
        hydra.run.dir=...``) has other overrides than the job it continues: the folder keeps the
        original job's identity (the report groups by it) and records the resuming command next to
        it. ``attempts`` lists every attempt (start, end, commit, machine, updates from and to), so a
        study that ran over several sessions says what each one did."""
        job = self.context.identity()
        before = read_status(self.path.parent) if self.rank == 0 else {}
        previous = before.get("job")
        self.record = {"status": RUNNING, "started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                       "job": previous or job, "code": code_version(), "machine": machine()}
        if previous and previous != job:
            self.record["resumed_by"] = job
        attempts = list(before.get("attempts") or ([_attempt(before)] if before.get("started") else []))
        self.record["attempts"] = [*attempts, {"started": self.record["started"], "from_update": int(from_update),
                                               "commit": self.record["code"].get("commit"),
                                               "dirty": self.record["code"].get("dirty"),
                                               "host": self.record["host"], "cpu": self.record["machine"]["cpu"]}]
        self._save(**fields)

    def _end_attempt(self, status: str) -> None:
        if self.record.get("attempts"):
            self.record["attempts"][-1] |= {"finished": _now(), "status": status, "updates": self.record.get("updates")}

    def update(self, **fields: Any) -> None:
        self._save(**fields)

    def completed(self) -> None:
        self._end_attempt(COMPLETED)
        self._save(status=COMPLETED, finished=_now())

    def failed(self, error: BaseException) -> None:
        status = FAILED if isinstance(error, Exception) else INTERRUPTED
        self._end_attempt(status)
        self._save(status=status, finished=_now(), error=f"{type(error).__name__}: {error}",
                   traceback="".join(traceback.format_exception(error)))


def _attempt(record: dict[str, Any]) -> dict[str, Any]:
    """The one attempt a status record written before attempts were listed describes."""
    code, machine_ = record.get("code") or {}, record.get("machine") or {}
    return {"started": record.get("started"), "finished": record.get("finished"), "status": record.get("status"),
            "updates": record.get("updates"), "commit": code.get("commit"), "dirty": code.get("dirty"),
            "host": record.get("host"), "cpu": machine_.get("cpu")}


def completed_metrics(directory: Path, context: RunContext | None = None) -> dict[str, Any] | None:
    """The metrics of a job folder whose run completed (None when it did not, or never ran).

    Under a Hydra multirun the folder must hold this very job (the same overrides, by Hydra's
    job name, as the job that started it or the command that last resumed it): a study whose
    grid was edited would otherwise find another configuration's results under the same job
    number and report them as this one's."""
    metrics = directory / "metrics.json"
    status = read_status(directory)
    if status.get("status") != COMPLETED or not metrics.is_file():
        return None
    context = context or RunContext()
    stored, current = (status.get("job") or {}).get("override_dirname"), context.override_dirname
    resumed = (status.get("resumed_by") or {}).get("override_dirname")
    if context.multirun and stored is not None and current not in (stored, resumed):
        raise ValueError(
            f"{directory} holds a completed run of another job ({stored!r}), not of this one ({current!r}): "
            "the sweep's grid changed since it ran. Run the changed sweep into a new folder "
            "(hydra.sweep.dir=...), or move the old one away"
        )
    return read_metrics(metrics)


def code_version() -> dict[str, Any]:
    """The commit the code was run from and whether the checkout had uncommitted changes, so a
    result can be traced to its code. Empty when the running package is not a tracked part of a
    git checkout: a copy, or an installed package (even one installed in a checkout's ``.venv``)."""
    package = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(package)]
    try:
        subprocess.run([*git, "ls-files", "--error-unmatch", "--", "__init__.py"], capture_output=True,
                       timeout=10, check=True)
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(dirty)}


def machine() -> dict[str, Any]:
    """What the job ran on: host, CPU model and count, Python version."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"host": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()}


def read_status(directory: Path) -> dict[str, Any]:
    """A job's status record; a worker's failure wins over rank 0's 'running' (rank 0 was killed)."""
    path = directory / STATUS_FILE
    record: dict[str, Any] = read_record(path) if path.is_file() else {}
    if record.get("status") in (None, RUNNING):
        for worker in sorted(directory.glob("status.rank*.json")):
            failure = read_record(worker)
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


def error_summary(error: str, limit: int = 300) -> str:
    """A job's error on one line: its informative lines joined (``invalid settings:`` alone says
    nothing; the keys it lists on the next lines do), cut at ``limit`` characters."""
    summary = ""
    for line in (raw.strip() for raw in error.splitlines()):
        if line:
            summary += line if not summary else (" " if summary.endswith(":") else "; ") + line
    return summary if len(summary) <= limit else summary[: limit - 3].rstrip() + "..."


def failed_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """Jobs that failed or never finished (no metrics.json), with their error; a job whose
    status.json or metrics.json cannot be read counts as failed, naming the file."""
    failures = []
    for job in job_folders(sweep_dir):
        try:
            status = read_status(job)
            if (job / "metrics.json").is_file():
                read_record(job / "metrics.json")
        except UnreadableRecordError as err:
            failures.append((job, str(err)))
            continue
        state = status.get("status")
        if state == COMPLETED and (job / "metrics.json").is_file():
            continue
        if state is None and (job / "metrics.json").is_file():
            continue  # written before status files existed
        failures.append((job, str(status.get("error") or f"status: {state or 'unknown'}, no metrics.json")))
    return failures
