"""What one job of a sweep records about itself and how a sweep reacts to failed jobs.

Every job writes ``status.json`` into its folder (running -> completed / failed / interrupted,
with the error and traceback), so a crash is diagnosable after the fact and the report can
list failed jobs. ``SweepStatus`` is a Hydra callback: at the end of a multirun it writes the
report and makes the sweep's exit code nonzero when any job failed.
"""

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

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
COMPLETED, FAILED, RUNNING, INTERRUPTED = "completed", "failed", "running", "interrupted"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def global_rank() -> int:
    """This process's rank from the launcher's environment: 0 for the job's main process, a
    unique positive number for every other DDP process.

    Read before the Trainer exists, so that DDP workers and SLURM tasks know from the start
    that they must not write the job's files."""
    for name in ("RANK", "SLURM_PROCID"):
        rank = _env_int(name)
        if rank is not None:
            return rank
    local, node = _env_int("LOCAL_RANK") or 0, _env_int("NODE_RANK") or 0
    return local if node == 0 else node * (_env_int("WORLD_SIZE") or 1) + local


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


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


def failure_value(cfg: DictConfig) -> float:
    """What a failed job returns to the sweeper: the worst value of the optimized metric, so an
    Optuna study records a bad trial and goes on (NaN would make it stop)."""
    direction = "minimize"
    if HydraConfig.initialized():
        sweeper_direction = HydraConfig.get().sweeper.get("direction")
        if sweeper_direction is not None:
            direction = str(sweeper_direction).rsplit(".", 1)[-1].lower()
    return math.inf if direction == "minimize" else -math.inf


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def threads_per_job(cfg: DictConfig) -> int | None:
    """Torch threads for this job: ``torch_threads`` (or ``ZF_TORCH_THREADS``) when set; otherwise
    the CPUs divided by the joblib launcher's parallel jobs, or a submitit job's CPUs per task,
    so parallel jobs do not oversubscribe the machine. None leaves torch's default."""
    explicit = cfg.get("torch_threads") or os.environ.get("ZF_TORCH_THREADS")
    if explicit:
        return max(1, int(explicit))
    if not HydraConfig.initialized() or str(HydraConfig.get().mode) != "RunMode.MULTIRUN":
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", "")).lower()
    n_jobs = launcher.get("n_jobs")
    if "joblib" in target and n_jobs:
        cpus = available_cpus()
        parallel = int(n_jobs) if int(n_jobs) > 0 else max(1, cpus + 1 + int(n_jobs))  # joblib: -1 = all CPUs
        return max(1, cpus // parallel)
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


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


class SweepStatus(HydraCallback):
    """Hydra callback (conf/hydra/callbacks/sweep_status.yaml): at the end of a multirun, write
    the report and exit nonzero when any job failed, naming the failed jobs."""

    def __init__(self, report: bool = True, fail_exit_code: bool = True) -> None:
        self.report = report
        self.fail_exit_code = fail_exit_code

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if self.report:
            from zf_lightning.report import write_report

            try:
                write_report(sweep_dir)
                log.info("sweep report: %s", sweep_dir / "report.md")
            except Exception as err:  # a broken report must not hide the jobs' own outcome
                log.warning("could not write the sweep report: %s", err)
        failures = failed_jobs(sweep_dir)
        if failures:
            lines = "\n".join(f"  {job}: {error.splitlines()[0] if error else ''}" for job, error in failures)
            message = f"{len(failures)} of {len(job_folders(sweep_dir))} jobs failed:\n{lines}"
            log.error(message)
            if self.fail_exit_code:
                raise SystemExit(message)
