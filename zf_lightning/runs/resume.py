"""Resuming a run where it stopped: same config, optimizer, schedules, step, RNG and W&B run.

``python train.py ckpt_path=last hydra.run.dir=<run dir>`` (or a checkpoint file) resumes a
run. The config comes from the checkpoint (every checkpoint stores the resolved config), so
the command needs none of the original overrides; value overrides on the resume command line
(``trainer.max_epochs=8``) still apply, while switching a config group (``data=...``) is refused.
A job whose folder already holds a checkpoint (a SLURM requeue, a sweep rerun into the same
folder) continues from it on its own; ``++auto_resume=false`` starts afresh instead.

Exactness: the checkpoint also stores every rank's RNG state, restored before the first
batch is drawn, so "2 epochs, then resume to 4" matches "4 epochs" (shuffling and the
posterior samples both come from the global RNG).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import os
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.runs.checkpoint import (
    CHOICES_KEY,
    CONFIG_KEY,
    CSV_ROWS_KEY,
    LAST,
    WANDB_ID_KEY,
    WANDB_KEY,
    UnreadableCheckpointError,
    config_targets,
    find_checkpoint,
    flush_csv,
    load_checkpoint,
    read_csv_rows,
    resolved_config,
)
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.status import completed_metrics, read_status
from zf_lightning.runs.stopping import MAX_EPOCHS, MAX_STEPS, TIME_LIMIT

log = logging.getLogger(__name__)

# What a resumed run shares with the run it continues: its weights, optimizer state and objective
# are restored as they were, so a command that changes these cannot continue that run.
FIXED_ON_RESUME = ("model", "lit", "schedule", "optim", "seed", "data")
# ... except these, which do not change what was learned (where the data now lives, how it is loaded)
FREE_ON_RESUME = ("model.compile_step", "model.native_loop", "data.root", "data.files", "data.cache_dir",
                  "data.data_dir", "data.path", "data.num_workers", "data.pin_memory", "data.eval_batch_size",
                  "data.persistent_workers")


class ResumeRefusedError(ValueError):
    """The run folder's stored run cannot be continued with this command's settings."""

@dataclass
class ResumePoint:
    """A checkpoint to continue from and what a resumed run needs from it."""

    path: Path
    epoch: int
    global_step: int
    wandb: dict[str, Any] = field(default_factory=dict)  # id, name, group, tags of the W&B run
    choices: dict[str, Any] = field(default_factory=dict)  # the stored run's config-group choices
    damaged: list[Path] = field(default_factory=list)  # unreadable newer checkpoints passed over
    csv_rows: int | None = None  # rows metrics.csv held when the checkpoint was written
    stored_trainer: dict[str, Any] = field(default_factory=dict)  # the stored run's trainer settings

    def set_damaged_aside(self) -> None:
        """Rename the passed-over damaged checkpoints to ``<name>.damaged`` (kept for inspection), so the
        resumed run writes a whole ``last.ckpt`` under its usual name. Called once the run may write."""
        for path in self.damaged:
            if path.is_file():
                path.rename(path.with_name(path.name + ".damaged"))
                log.warning("kept the damaged %s as %s.damaged", path, path.name)


def data_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """The epoch a checkpoint was written in and how many of its batches had been trained on
    (Lightning's loop progress), which is where the data must continue."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = (loop.get("epoch_progress") or {}).get("current") or {}
    epoch = int(epochs.get("processed", 0))  # epochs finished, i.e. the index of the one in progress
    if int(epochs.get("started", 0)) <= epoch:  # written between two epochs
        return epoch, 0
    batches = loop.get("epoch_loop.batch_progress") or {}
    total = batches.get("total") or {}
    if batches.get("is_last_batch") and int(total.get("completed", 0)) == int(total.get("processed", 0)) - 1:
        return epoch + 1, 0  # at the end of an epoch's last update: Lightning closes that epoch on resume
    return epoch, int((batches.get("current") or {}).get("processed", 0))


def _replace_prefix(node: Any, old: str, new: str) -> Any:
    """``node`` with every string path under ``old`` (values and keys) moved under ``new``."""
    if isinstance(node, dict):
        return {_replace_prefix(k, old, new): _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old + "/")):
        return new + node[len(old):]
    return node


def apply_overrides(stored: dict[str, Any], overrides: list[str], stored_choices: dict[str, Any],
                    current_choices: dict[str, Any]) -> DictConfig:
    """The stored config with the command line's value overrides applied.

    Group overrides (``ablation=aux``) cannot be replayed on a resolved config: one that
    repeats the stored choice is a no-op (a requeued sweep job), a different one is an error."""
    cfg = OmegaConf.create(stored)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "ckpt_path" or key.startswith("hydra.") or key == "hydra":
            continue
        if key in current_choices or key in stored_choices:
            value = override.value()
            if key in stored_choices and stored_choices[key] != value:
                raise ValueError(
                    f"cannot resume with {key}={value}: the checkpoint was trained with {key}={stored_choices[key]}; "
                    "a resumed run keeps its config groups (value overrides such as trainer.max_epochs=8 are fine)"
                )
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                with open_dict(node):
                    del node[leaf]
            continue
        OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    return cfg


def config_differences(stored: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, stored value, new value)`` for every key both configs hold with different values
    (a key only one side has, e.g. one added to the configs since, is not a difference)."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return [d for k in stored if k in new
                for d in config_differences(stored[k], new[k], f"{prefix}.{k}" if prefix else str(k))]
    return [] if stored == new else [(prefix, stored, new)]


def _fixed(key: str) -> bool:
    def under(names: tuple[str, ...]) -> bool:
        return any(key == n or key.startswith(n + ".") for n in names)

    return under(FIXED_ON_RESUME) and not under(FREE_ON_RESUME)


def check_resumable(stored: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse to continue the run stored in ``path`` with settings it was not trained with, naming them."""
    differing = [d for d in config_differences(stored, resolved_config(cfg)) if _fixed(d[0])]
    if differing:
        listed = "; ".join(f"{k}: stored {old!r}, now {new!r}" for k, old, new in differing)
        raise ResumeRefusedError(
            f"cannot continue the run in {path.parent.parent if path.parent.name == 'checkpoints' else path.parent} "
            f"({path.name}) with these settings, which differ from the stored run: {listed}. A resumed run keeps "
            "its model, objective, optimizer, seed and data (trainer.*, data locations and logging may change). "
            "Nothing was written. For a new run choose another hydra.run.dir; ++auto_resume=false starts this "
            "folder afresh, overwriting it."
        )


def _resume_candidates(output_dir: Path) -> list[Path]:
    """Checkpoints a run folder may resume from, best first: the newest ``last``/SLURM checkpoint, then
    every other checkpoint of the folder (e.g. the best one), newest first."""
    newest_last = find_checkpoint(output_dir, LAST)
    others = [p for p in output_dir.glob("checkpoints/*.ckpt") if p != newest_last]
    others += [p for p in output_dir.glob("hpc_ckpt_*.ckpt") if p != newest_last]
    others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return ([newest_last] if newest_last is not None else []) + others


def _load_newest_readable(output_dir: Path, also_trusted: Collection[str] = ()
                          ) -> tuple[Path, dict[str, Any], list[Path]] | None:
    """The newest readable checkpoint of a run folder; an unreadable ``last.ckpt`` (a kill or full
    disk while it was written) falls back to the next one with a warning naming both."""
    damaged: list[UnreadableCheckpointError] = []
    passed_over: list[Path] = []
    for candidate in _resume_candidates(output_dir):
        try:
            checkpoint = load_checkpoint(candidate, also_trusted)
        except UnreadableCheckpointError as err:
            damaged.append(err)
            passed_over.append(candidate)
            continue
        if damaged:
            log.warning("%s; resuming from %s instead, the newest readable checkpoint of the run",
                        "; ".join(str(e) for e in damaged), candidate)
        return candidate, checkpoint, passed_over
    if damaged:
        raise UnreadableCheckpointError(
            f"no readable checkpoint in {output_dir} to resume from: " + "; ".join(str(e) for e in damaged)
            + ". ++auto_resume=false starts the folder afresh (overwriting it)."
        )
    return None


def resume_from(cfg: DictConfig, context: RunContext | None = None) -> tuple[DictConfig, ResumePoint | None]:
    """The config to run and where to resume from (None: a fresh run). Writes nothing.

    For a Hydra job the config comes from the checkpoint plus the command line's value overrides;
    called as a function (tests, DDP workers: ``context`` is not a Hydra job) ``cfg`` is used as
    given. Either way a config whose model, objective, optimizer, seed or data differ from the stored run is refused
    (``ResumeRefusedError``), as is ``ckpt_path=last`` in a folder that holds no run."""
    output_dir = Path(cfg.paths.output_dir)
    requested = cfg.get("ckpt_path")
    automatic = requested is None and cfg.get("auto_resume", True)
    # what this command's own config builds anyway (its callbacks, a model of your own) is trusted
    own_targets = config_targets(OmegaConf.to_container(cfg, resolve=False))
    if automatic or str(requested) == LAST:
        found = _load_newest_readable(output_dir, own_targets)
        if found is None and requested is not None:
            raise FileNotFoundError(
                f"ckpt_path=last asks to continue the run in {output_dir}, but it holds no checkpoint "
                "(checkpoints/last.ckpt). Check hydra.run.dir (a typo starts nowhere); drop ckpt_path=last "
                "to start a new run there."
            )
        if found is not None and automatic:
            log.info("the run folder holds a checkpoint: continuing from it (++auto_resume=false starts afresh)")
    elif requested is not None:
        path = find_checkpoint(output_dir, requested)
        assert path is not None
        found = (path, load_checkpoint(path, own_targets), [])
    else:
        found = None
    if found is None:
        return cfg, None
    path, checkpoint, damaged = found
    stored = checkpoint.get(CONFIG_KEY)
    if isinstance(stored, dict):
        stored = _replace_prefix(stored, str(stored["paths"]["output_dir"]), str(output_dir))
    context = context or RunContext()
    if context.hydra_job:
        if stored is None:
            raise ValueError(f"{path} stores no config ('{CONFIG_KEY}'); only checkpoints written by train.py resume")
        cfg = apply_overrides(stored, list(context.overrides), checkpoint.get(CHOICES_KEY, {}), dict(context.choices))
    if isinstance(stored, dict):
        check_resumable(stored, cfg, path)
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
    point = ResumePoint(path, int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)),
                        dict(checkpoint.get(WANDB_KEY) or {}), dict(checkpoint.get(CHOICES_KEY) or {}), damaged)
    point.csv_rows = checkpoint.get(CSV_ROWS_KEY)
    point.stored_trainer = dict((stored or {}).get("trainer") or {}) if isinstance(stored, dict) else {}
    if not point.wandb and checkpoint.get(WANDB_ID_KEY):
        point.wandb = {"id": checkpoint[WANDB_ID_KEY]}
    log.info("resuming from %s (epoch %d, step %d)", path, point.epoch, point.global_step)
    return cfg, point


# ---------------------------------------------------------------------------- completed runs
# the trainer setting whose cap ended a run, by the stop reason it records
CAPS = {MAX_STEPS: "max_steps", MAX_EPOCHS: "max_epochs", TIME_LIMIT: "max_time"}


def _cap_value(key: str, value: Any) -> float:
    """A cap as a number (seconds for ``max_time``); no cap (None, -1) is infinite."""
    if value is None or (key != "max_time" and int(value) < 0):
        return math.inf
    if key != "max_time":
        return float(value)
    if isinstance(value, str):
        days, hours, minutes, seconds = (float(p) for p in value.split(":"))
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if isinstance(value, dict):
        return dt.timedelta(**{k: float(v) for k, v in value.items()}).total_seconds()
    return float(value.total_seconds()) if isinstance(value, dt.timedelta) else float(value)


def extension(status: dict[str, Any], point: ResumePoint, cfg: DictConfig) -> str | None:
    """Why this command continues a completed run (its cap was raised past where the run stopped),
    or None when it does not: a converged run, or one whose cap is unchanged, is complete."""
    key = CAPS.get(str(status.get("stop_reason")))
    if key is None:
        return None
    stored, now = point.stored_trainer.get(key), (cfg.get("trainer") or {}).get(key)
    if _cap_value(key, now) <= _cap_value(key, stored):
        return None
    return f"trainer.{key} raised from {stored} to {now}"


def completed_run(output_dir: Path, point: ResumePoint | None, cfg: DictConfig,
                  context: RunContext | None = None) -> dict[str, Any] | None:
    """The metrics of the completed run in ``output_dir`` when this command leaves it as it is
    (None: run, i.e. start, resume or extend it). A completed run is never trained again or
    re-tested: the same command says so and changes nothing; a raised cap continues it from its
    final state."""
    metrics = completed_metrics(output_dir, context)
    if metrics is None or point is None:
        return metrics
    status = read_status(output_dir)
    reason = extension(status, point, cfg)
    if reason is not None:
        log.info("%s holds a completed run (%s after %s updates); %s: continuing it", output_dir,
                 status.get("stop_reason"), status.get("updates"), reason)
        return None
    cap = CAPS.get(str(status.get("stop_reason")))
    hint = f" Raise trainer.{cap} to continue it." if cap else " A converged run is not continued."
    log.info("%s holds a completed run (%s after %s updates): nothing to do, nothing was written.%s",
             output_dir, status.get("stop_reason"), status.get("updates"), hint)
    return metrics


# ---------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain numbers (Lightning loads checkpoints weights-only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(Callback):
    """Puts every rank's RNG state into each checkpoint and restores it on resume.

    Lightning restores weights, optimizer, schedulers and loop counters but not the global
    RNG, so without this a resumed run would shuffle and sample differently from an
    uninterrupted one. Restoring happens when the callback's state is loaded, which is before
    the training loader draws its first permutation (only when fitting: a test pass that loads
    a checkpoint is seeded by its caller). Also flushes the CSV logger at every
    checkpoint, so a killed run's CSV holds everything up to its last checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        states = [_rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, _rng_state())
        return {"rng": states}

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = None if output_dir is None else str(output_dir)
        self.fitting = False
        self.restored = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Lightning also restores callbacks for trainer.test(ckpt_path=...), which is seeded on its own
        self.fitting = trainer.state.fn == TrainerFn.FITTING
        stored_dir = ((checkpoint.get(CONFIG_KEY) or {}).get("paths") or {}).get("output_dir")
        if self.output_dir is not None and stored_dir and str(stored_dir) != self.output_dir:
            # a run folder that was moved or copied: its checkpoints' paths name the new place
            checkpoint["callbacks"] = _replace_prefix(checkpoint.get("callbacks") or {}, str(stored_dir),
                                                      self.output_dir)
        for state in (checkpoint.get("callbacks") or {}).values():
            best = state.get("best_model_path") if isinstance(state, dict) else None
            if best and not Path(best).is_file():
                # a checkpoint continued in another folder: the best is chosen anew among this folder's
                log.warning("the best checkpoint %s is not in this run folder; the best is chosen again from "
                            "the validations of this folder", best)
                for key in ("best_k_models", "kth_best_model_path", "kth_value", "last_model_path"):
                    state.pop(key, None)  # Lightning's defaults: nothing chosen yet
                state.update(best_model_path="", best_model_score=None)
        if self.fitting and isinstance(trainer.datamodule, SequenceDataModule):
            epoch, batches = data_position(checkpoint)
            trainer.datamodule.resume_at(epoch, batches, trainer.world_size)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng") or []
        if not states or not self.fitting:
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if len(states) != (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1):
            log.warning("the checkpoint's RNG states are from %d processes, not this run's; restoring rank 0's",
                        len(states))
            rank = 0
        _set_rng_state(states[rank])
        self.restored = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """DDP: Lightning seeds every rank alike (same weights, same sampler seed); from here on
        each rank draws its own posterior noise, as one process would for the whole batch."""
        if not self.restored and trainer.world_size > 1 and trainer.global_rank > 0:
            seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) + 104_729 * trainer.global_rank
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        self.restored = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flush_csv(trainer.loggers)


# ---------------------------------------------------------------------------- CSV history
def _before(row: dict[str, str], point: ResumePoint) -> bool:
    """Whether a CSV row was logged up to the checkpoint (so a resumed run will not log it again)."""
    try:
        step = int(float(row.get("step") or 0))
        epoch = int(float(row["epoch"])) if row.get("epoch") else None
    except ValueError:
        return False
    if epoch is None:  # logged outside an epoch (e.g. the learning rate at an epoch's start)
        return step < point.global_step
    return epoch < point.epoch or (epoch == point.epoch and step <= point.global_step)


def keep_csv_history(loggers: list[Logger], point: ResumePoint) -> None:
    """Carry the rows logged before the checkpoint into the resumed run's metrics.csv.

    Lightning's CSV logger deletes an existing metrics.csv when it starts; rows from after
    the checkpoint are dropped because the resumed run logs them again (or, like the summary of
    an epoch cut short by the update cap, never logs them). The checkpoint says how many rows
    came before it; older checkpoints are read by step and epoch."""
    for lg in loggers:
        if not isinstance(lg, CSVLogger):
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        rows = read_csv_rows(path)
        rows = rows[:point.csv_rows] if point.csv_rows is not None else [r for r in rows if _before(r, point)]
        writer = lg.experiment  # creating the writer deletes the old file
        if not rows or not hasattr(writer, "metrics_keys"):
            continue
        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=keys)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = keys
