"""Per-process policy of a job: which rank this process is (only rank 0 writes the job's
files), how many torch threads it may use next to its siblings, and what a failed job
returns to the sweeper."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig

from zf_lightning.runs.context import RunContext


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


def failure_value(context: RunContext | None = None) -> float:
    """What a failed job returns to the sweeper: the worst value of the optimized metric, so an
    Optuna study records a bad trial and goes on (NaN would make it stop)."""
    return math.inf if (context or RunContext()).sweeper_direction == "minimize" else -math.inf


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _launches_with(launcher: Mapping[str, Any], cls: type) -> bool:
    """Whether the Hydra launcher config builds a ``cls`` (an unknown or missing class does not)."""
    try:
        return issubclass(get_class(str(launcher.get("_target_"))), cls)
    except (ImportError, ValueError):
        return False


def threads_per_job(cfg: DictConfig, context: RunContext | None = None) -> int | None:
    """Torch threads for this job: ``torch_threads`` (or ``ZF_TORCH_THREADS``) when set; otherwise
    the CPUs divided by the joblib launcher's parallel jobs, or a submitit job's CPUs per task,
    so parallel jobs do not oversubscribe the machine. None leaves torch's default."""
    explicit = cfg.get("torch_threads") or os.environ.get("ZF_TORCH_THREADS")
    if explicit:
        return max(1, int(explicit))
    context = context or RunContext()
    if not context.multirun:
        return None
    launcher = context.launcher
    n_jobs = launcher.get("n_jobs")
    if _launches_with(launcher, JoblibLauncher) and n_jobs:
        cpus = available_cpus()
        parallel = int(n_jobs) if int(n_jobs) > 0 else max(1, cpus + 1 + int(n_jobs))  # joblib: -1 = all CPUs
        return max(1, cpus // parallel)
    if launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None
