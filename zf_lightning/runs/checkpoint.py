"""What a checkpoint holds besides Lightning's own entries, and how one is found and loaded.

Every key we add to a checkpoint is a constant here. Checkpoints also store the resolved
run config, whose ``_target_`` paths name classes and functions; when one of those moves,
``MOVED_TARGETS`` maps its old path to the new one, when an object's settings move into a node
of their own ``MOVED_KEYS`` says where, and ``migrate_config`` rewrites stored configs on load,
so checkpoints written before the move keep loading and resuming.
"""

from __future__ import annotations

import codecs
import csv
import functools
import importlib
import logging
import os
import pickle
import signal
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from zf_lightning.data.cache import remove_stale_temps, temporary_name
from zf_lightning.lit import SequenceLitModule

log = logging.getLogger(__name__)

CONFIG_KEY = "zf_config"
CHOICES_KEY = "zf_choices"
WANDB_KEY = "wandb_run"  # id, name, group and tags of the job's W&B run
WANDB_ID_KEY = "wandb_run_id"  # the id alone (checkpoints written before WANDB_KEY existed)
CSV_ROWS_KEY = "zf_csv_rows"  # rows metrics.csv held when the checkpoint was written (a resume keeps those)
TRAIN_SUMS_KEY = "zf_train_sums"  # the training epoch's running sums (SequenceLitModule.train_sums_state)
NONFINITE_KEY = "nonfinite"  # the objective's skipped-update counters (SequenceLitModule.nonfinite_state)
STATE_DICT_KEY = "state_dict"  # Lightning's: the LightningModule's weights
LAST = "last"  # ckpt_path=last: the newest last*.ckpt of the run folder

# What a stored config may build: a checkpoint is data, and ``instantiate`` on a ``_target_``
# such as ``os.system`` would run code, so a stored target must name an object defined in one of
# these packages (or be exactly one of the names listed); anything else is refused on load.
# Your own packages (a model or callback of your own in a config) are added with the
# environment variable ZF_TRUSTED_TARGETS, comma-separated names such as "mylab.models".
TRUSTED_TARGETS = ("zf_lightning", "lightning.pytorch", "torch.optim", "torch.nn", "datetime.timedelta")
TRUSTED_TARGETS_ENV = "ZF_TRUSTED_TARGETS"


def trusted_targets() -> tuple[str, ...]:
    """Trusted packages and names (a trailing dot, as in ``mylab.models.``, is allowed and ignored)."""
    extra = [p.strip() for p in os.environ.get(TRUSTED_TARGETS_ENV, "").split(",") if p.strip()]
    return tuple(p.rstrip(".") for p in (*TRUSTED_TARGETS, *extra))


def _under(name: str, packages: Collection[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _locate_trusted(target: str, packages: tuple[str, ...]) -> Any:
    """The object ``target`` names, importing only modules inside ``packages`` (None if it names nothing).

    Unlike Hydra's locator, this never imports a module outside the trusted packages, so checking
    a stored target cannot itself run untrusted code."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if not _under(module_name, packages):
            break
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


@functools.lru_cache(maxsize=256)
def _target_trusted(target: str, packages: tuple[str, ...]) -> bool:
    """Whether a stored ``_target_`` names an object defined in a trusted package.

    A name under a trusted package is not enough: ``zf_lightning.runs.checkpoint.os.makedirs``
    is ``os.makedirs`` reached through a module that imports ``os``. The object it resolves to must
    itself be defined there (its ``__module__``); objects without one (modules, some builtins) are refused."""
    if target in packages:
        return True
    if not _under(target, packages):
        return False
    obj = _locate_trusted(target, packages)
    module = getattr(obj, "__module__", None) if obj is not None else None
    return isinstance(module, str) and _under(module, packages)


# ``_target_`` paths stored in checkpoints written before a module moved -> where they live now
MOVED_TARGETS: dict[str, str] = {
    "zf_lightning.data.text.SentencesDataModule": "zf_lightning.data.text.sentences.SentencesDataModule",
    "zf_lightning.data.text.ImdbDataModule": "zf_lightning.data.text.imdb.ImdbDataModule",
    "zf_lightning.data.text.modules.SentencesDataModule": "zf_lightning.data.text.sentences.SentencesDataModule",
    "zf_lightning.data.text.modules.ImdbDataModule": "zf_lightning.data.text.imdb.ImdbDataModule",
    "zf_lightning.distributed.JobDDPStrategy": "zf_lightning.runs.ddp.JobDDPStrategy",
    "zf_lightning.jobs.SweepStatus": "zf_lightning.report.callback.SweepStatus",
    "zf_lightning.sweeps.callback.SweepStatus": "zf_lightning.report.callback.SweepStatus",
    "zf_lightning.text_analysis.latent_probe": "zf_lightning.evaluation.probes.latent_probe",
    "zf_lightning.text_analysis.resample_words": "zf_lightning.evaluation.text.resample_words",
}


# settings of an object's stored config that moved into a node of their own since, by the object's
# ``_target_``: (the node's key, what the node builds, the keys that moved into it)
MOVED_KEYS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    # the sum of MNIST digits keeps its label settings under data.task, as the other sum tasks do
    "zf_lightning.data.synthetic.MnistSumDataModule": (
        "task", {"_target_": "zf_lightning.data.synthetic.MnistSum", "_partial_": True},
        ("max_size", "modulus", "regression")),
}


def migrate_target(target: str) -> str:
    """Where a stored ``_target_`` lives now."""
    return MOVED_TARGETS.get(target, target)


def _move_keys(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with the settings that ``MOVED_KEYS`` names for its ``_target_`` moved into their node."""
    moved = MOVED_KEYS.get(str(node.get("_target_")))
    if moved is None or moved[0] in node:
        return node
    key, builds, keys = moved
    return {k: v for k, v in node.items() if k not in keys} | {key: builds | {k: node[k] for k in keys if k in node}}


def migrate_config(node: Any) -> Any:
    """A stored config with every moved ``_target_`` rewritten and every moved setting in its new node
    (a new object; ``node`` is untouched)."""
    if isinstance(node, dict):
        return _move_keys({k: migrate_target(v) if k == "_target_" and isinstance(v, str) else migrate_config(v)
                           for k, v in node.items()})
    if isinstance(node, list):
        return [migrate_config(v) for v in node]
    return node


def find_checkpoint(output_dir: Path, ckpt_path: str | None) -> Path | None:
    """``last``: the newest of ``checkpoints/last*.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt``
    in the run folder (None when there is none yet); a path: that file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) != LAST:
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return path
    candidates = [*output_dir.glob("checkpoints/last*.ckpt"), *output_dir.glob("hpc_ckpt_*.ckpt")]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated by a kill or a full disk, or not a checkpoint)."""


# how the files torch.save writes begin: a zip archive, or (the legacy format) a pickle's protocol opcode
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def _check_is_checkpoint(path: Path) -> None:
    """Refuse a file that is not in torch.save's format at all (a text, JSON or YAML file given as a
    checkpoint) before unpickling it, which would fail with a bare ``KeyError`` or be taken for a
    pickle that runs code. Raises ``UnreadableCheckpointError``, so a run's ``last.ckpt`` that is
    not a checkpoint is passed over like a damaged one."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(CHECKPOINT_MAGIC):
        return
    if not head:
        what = "it is empty"
    else:
        try:  # incremental: a character cut at the end of the head is not an error
            text = codecs.getincrementaldecoder("utf-8")().decode(head)
        except UnicodeDecodeError:
            what = f"it starts with the bytes {head[:8]!r}"
        else:
            first = text.strip().splitlines()[0][:40] if text.strip() else ""
            what = f"it holds text ({first!r}...)" if first else "it holds only blank text"
    raise UnreadableCheckpointError(
        f"{path} is not a checkpoint: {what}, not the zip archive (or legacy pickle) that torch.save writes"
    )


def load_checkpoint(path: Path, also_trusted: Collection[str] = ()) -> dict[str, Any]:
    """A checkpoint on the CPU, with its non-tensor entries (stored config, choices, W&B identity).

    Checkpoints are data: they are unpickled with ``weights_only=True``, which refuses any
    object that could run code (``ValueError``: not a trusted checkpoint). A damaged file raises
    ``UnreadableCheckpointError`` naming it. The stored config is migrated (``MOVED_TARGETS``, ``MOVED_KEYS``)."""
    _check_is_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a trusted checkpoint: it holds objects other than tensors and plain data, "
            f"which are refused because loading them could run code ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UnreadableCheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise UnreadableCheckpointError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}")
    if isinstance(checkpoint.get(CONFIG_KEY), dict):
        checkpoint[CONFIG_KEY] = migrate_config(checkpoint[CONFIG_KEY])
        untrusted = sorted(set(untrusted_targets(checkpoint[CONFIG_KEY])) - set(also_trusted))
        if untrusted:
            named = ", ".join(map(_described, untrusted))
            raise ValueError(
                f"{path} is not a trusted checkpoint: its stored config would build {named}, "
                f"and a stored config may only name classes and functions defined in {', '.join(trusted_targets())} "
                f"(building anything else from a file could run arbitrary code; add your own packages with "
                f"{TRUSTED_TARGETS_ENV}=package,...)"
            )
    return checkpoint


def config_targets(node: Any) -> set[str]:
    """Every ``_target_`` a config names (a run trusts what its own config already built)."""
    if isinstance(node, dict):
        own = {str(v) for k, v in node.items() if k == "_target_"}
        return own.union(*(config_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(config_targets(v) for v in node))
    return set()


def untrusted_targets(node: Any) -> list[str]:
    """Every ``_target_`` in a stored config that does not name an object defined in a trusted package."""
    packages = trusted_targets()
    return sorted(t for t in config_targets(node) if not _target_trusted(t, packages))


def _described(target: str) -> str:
    """A refused target, with where the object it reaches is defined when it reaches one."""
    packages = trusted_targets()
    obj = _locate_trusted(target, packages) if _under(target, packages) else None
    module = getattr(obj, "__module__", None) if obj is not None else None
    if obj is None:
        return target
    return f"{target} (defined in {module})" if isinstance(module, str) else f"{target} (a {type(obj).__name__})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name in its folder, fsyncs it, then renames it into
    place (``os.replace``), so a kill or a full disk never leaves a half-written ``last.ckpt``:
    the file under the real name is always the previous complete one or the new complete one.
    (Lightning's own writer goes through a temporary file elsewhere and a move, which is a copy
    into the final name when the two are on different file systems.) Temporary files left by a
    killed writer are removed by the next writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        tmp = temporary_name(target)
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every interpolation resolved (the hydra node excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def flush_csv(loggers: list[Logger]) -> None:
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            lg.save()


def csv_row_count(loggers: list[Logger]) -> int | None:
    """Rows the CSV logger has logged so far (None without one), flushed to metrics.csv first: a
    checkpoint records how many rows its state had logged, so a resume keeps exactly those."""
    flush_csv(loggers)
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            return len(read_csv_rows(Path(lg.log_dir) / "metrics.csv"))
    return None


class StoreConfig(Callback):
    """Puts the resolved run configuration, its group choices, the W&B run identity and the
    objective's skipped-update counters into every checkpoint, so eval.py and resumes rebuild
    exactly the model that was trained and a resumed run continues the same W&B run and counts."""

    def __init__(self, config: dict[str, Any], choices: dict[str, Any] | None = None) -> None:
        self.config = config
        self.choices = dict(choices or {})

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[CHOICES_KEY] = self.choices
        checkpoint[CSV_ROWS_KEY] = csv_row_count(trainer.loggers)
        if isinstance(pl_module, SequenceLitModule):
            checkpoint[NONFINITE_KEY] = pl_module.nonfinite_state()
            checkpoint[TRAIN_SUMS_KEY] = pl_module.train_sums_state()
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and trainer.is_global_zero:
                run = lg.experiment
                checkpoint[WANDB_ID_KEY] = run.id
                checkpoint[WANDB_KEY] = {"id": run.id, "name": run.name, "group": run.group,
                                         "tags": list(run.tags or [])}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if isinstance(pl_module, SequenceLitModule):
            pl_module.restore_nonfinite_state(checkpoint.get(NONFINITE_KEY) or {})
            if trainer.state.fn == TrainerFn.FITTING:
                pl_module.restore_train_sums(checkpoint.get(TRAIN_SUMS_KEY) or {})


LAST_FILE = f"{LAST}.ckpt"


class LastCheckpoint(Checkpoint):
    """Owns ``checkpoints/last.ckpt``: the newest state of the run, written after every validation
    (once the best checkpoint is chosen), at the end of training, and when the run is interrupted,
    so that continuing a run starts where it stopped.

    Ctrl+C (SIGINT) asks the run to stop after the current update (and its validation, if one is
    due): the state after that update is written and the run ends as interrupted.
    (An interrupt in the middle of an update would store half an optimizer step and a random
    state no uninterrupted run passes through.) A second Ctrl+C stops at once; the run then
    continues from the last validation's checkpoint. A ``kill -9`` also leaves that one."""

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / LAST_FILE
        self.saved_step: int | None = None
        self.interrupted = False
        self._pending: dict[str, Any] | None = None
        self._pending_until_end = False
        self._previous_handler: Any = None

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step

    def _write_pending(self, trainer: L.Trainer) -> None:
        """Write the state taken at the end of an update, once that update's metrics are logged
        (an epoch that ended with that update is summarized in the CSV by now, and its running
        sums are spent: a resume starts the next epoch)."""
        if self._pending is None:
            return
        self._pending[CSV_ROWS_KEY] = csv_row_count(trainer.loggers)
        if self._pending_until_end:
            self._pending[TRAIN_SUMS_KEY] = {}
        trainer.strategy.save_checkpoint(self._pending, self.path)
        trainer.strategy.barrier("LastCheckpoint")
        self.saved_step, self._pending = int(self._pending["global_step"]), None

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, self._previous_handler)  # a second Ctrl+C stops at once
        log.warning("interrupted: the run stops after this update and stores its state in %s "
                    "(Ctrl+C again stops at once)", self.path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) == self._request_stop:
                signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _stop_if_saved(self, trainer: L.Trainer) -> None:
        if self.interrupted and self.saved_step == trainer.global_step:
            raise KeyboardInterrupt(f"interrupted at update {trainer.global_step}; its state is in {self.path}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        capped = 0 < trainer.max_steps <= trainer.global_step
        if not (self.interrupted or capped):
            return
        # A validation due now belongs to this update: last.ckpt is written once it is done. At an
        # epoch's end the state is taken once the epoch is closed (at the cap: on_train_end; when
        # interrupted: after the next update). Otherwise it is taken here, before Lightning closes
        # the epoch early at the update cap (so a raised cap continues mid-epoch), and written once
        # this update's metrics are logged.
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return
        self._pending = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        self._pending_until_end = epoch_loop.batch_progress.is_last_batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._write_pending(trainer)
        self._stop_if_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.save(trainer)
        self._stop_if_saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # taken at an epoch's last update, the state is written once the epoch's own summary is
        # logged (a resume closes that epoch without logging it again)
        if not self._pending_until_end:
            self._write_pending(trainer)
            self._stop_if_saved(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_pending(trainer)
        self.save(trainer)
