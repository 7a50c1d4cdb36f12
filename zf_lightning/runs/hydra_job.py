"""What a job takes from Hydra's running job, and the records Hydra would write into the run
folder, written by the job itself once it knows it may write there.

Hydra writes ``.hydra/`` and the job's log file before the task function starts, so a command
that is then refused (a folder holding another run) would still rewrite them. Here Hydra
writes neither (``hydra.output_subdir: null``, a console-only ``job_logging``): ``record_job``
writes ``.hydra/`` the first time a folder's run starts, and ``JobLog`` appends the log of
every accepted attempt to ``<folder>/<job name>.log``. ``CheckOutputFolder`` refuses an
output folder that cannot be written before Hydra tries to create it.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from zf_lightning.runs.context import RunContext
from zf_lightning.runs.guard import RunFolderError, check_writable

RECORD_DIR = ".hydra"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def record_job(out_dir: Path, composed: DictConfig, context: RunContext) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra writes them, for the
    command that started the folder's run (a resume or an extension keeps that first record)."""
    record = out_dir / RECORD_DIR
    if context.hydra_config is None or (record / "config.yaml").exists():
        return
    record.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"]) if "hydra" in composed else composed
    OmegaConf.save(task, record / "config.yaml")
    OmegaConf.save(context.hydra_config, record / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(context.overrides)), record / "overrides.yaml")


class JobLog:
    """This attempt's log records, held in memory from the start of the job and appended to
    ``<folder>/<job name>.log`` once the job is accepted (``accept``): a refused command writes
    no log into the folder, an accepted one keeps the records from before it was accepted."""

    def __init__(self) -> None:
        self.buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self.file: logging.FileHandler | None = None
        logging.getLogger().addHandler(self.buffer)

    def accept(self, out_dir: Path, context: RunContext) -> None:
        if not context.hydra_job or self.file is not None:
            return
        self.file = logging.FileHandler(out_dir / f"{context.job_name}.log", mode="a")
        self.file.setFormatter(logging.Formatter(LOG_FORMAT))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        logging.getLogger().addHandler(self.file)
        logging.getLogger().removeHandler(self.buffer)

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        self.buffer.setTarget(None)
        self.buffer.close()
        if self.file is not None:
            root.removeHandler(self.file)
            self.file.close()


def _refuse_unwritable(folder: Path) -> None:
    try:
        check_writable(folder)
    except RunFolderError as error:
        raise SystemExit(str(error)) from None  # Hydra turns a callback's exceptions into warnings


class CheckOutputFolder(HydraCallback):
    """Refuses an output folder that cannot be written, naming it, before Hydra creates it (Hydra's
    own attempt fails with a bare ``PermissionError``); exits with status 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unwritable(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unwritable(Path(str(config.hydra.sweep.dir)))
