"""DDP that works with Hydra: every process of a job writes into that job's one folder.

Lightning's DDP starts the extra processes by re-running the command line. Under Hydra that
command makes each process compose its own config and its own (timestamped) output folder,
and under ``-m`` it even starts the whole sweep again. ``JobDDPStrategy`` starts the extra
processes from the job's resolved config instead (``python -m zf_lightning.runs.ddp_worker
<config>``), so they train the same job in the same folder. Only rank 0 logs to W&B and
writes metrics.json, samples and status.json (see ``zf_lightning.runs.pipeline.train``).

On SLURM (one task per GPU, e.g. the submitit launcher with ``tasks_per_node`` = GPUs)
the processes already exist and each runs the Hydra job itself; nothing is launched here.

Relies on Lightning's subprocess launcher internals (pinned Lightning version).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

# Set by Lightning's launcher in the main process; cleared after each job so the next job of
# a sequential sweep launches its own processes on a fresh port.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def import_root() -> Path:
    """The folder the package was imported from (a checkout or site-packages): the workers, started
    with ``python -m``, import the same code from it, also when the package is not installed."""
    return Path(sys.modules[__name__.partition(".")[0]].__file__).resolve().parent.parent


class JobScriptLauncher(_SubprocessScriptLauncher):
    """Starts local ranks 1..N-1 with ``worker_command`` instead of the original command line."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.worker_command: list[str] | None = None

    def _call_children_scripts(self) -> None:
        if self.worker_command is None:  # not started by train(): Lightning's own behaviour
            super()._call_children_scripts()
            return
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update({
            "MASTER_ADDR": env.main_address,
            "MASTER_PORT": str(env.main_port),
            "NODE_RANK": str(env.node_rank()),
            "LOCAL_RANK": str(env.local_rank()),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
        })
        python_path = os.pathsep.join(p for p in (str(import_root()), os.environ.get("PYTHONPATH")) if p)
        self.procs = [
            subprocess.Popen(self.worker_command,
                             env=os.environ | {"LOCAL_RANK": str(local_rank), "PYTHONPATH": python_path})
            for local_rank in range(1, self.num_processes)
        ]


class JobDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose extra local processes run the job's resolved config (see module doc)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = JobScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def set_worker_config(self, path: Path) -> None:
        if isinstance(self._launcher, JobScriptLauncher):
            self._launcher.worker_command = [sys.executable, "-m", "zf_lightning.runs.ddp_worker", str(path)]

    @property
    def worker_processes(self) -> list[subprocess.Popen]:
        return list(getattr(self._launcher, "procs", []) or [])


@contextmanager
def distributed_job() -> Iterator[list[JobDDPStrategy]]:
    """Scope of one job: afterwards wait for the job's worker processes, close the process group
    and restore the DDP environment variables (a sweep's next job must start its own group).

    Yields a list to which the job appends its strategy once the Trainer exists."""
    saved = {k: os.environ.get(k) for k in _DDP_ENV}
    strategies: list[JobDDPStrategy] = []
    try:
        yield strategies
    finally:
        for strategy in strategies:
            for proc in strategy.worker_processes:
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if strategies and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
