"""Builds runs from composed configs and executes them; train.py and eval.py are thin
wrappers around ``train`` and ``evaluate`` so tests can call them in-process.

One job = one output folder holding the resolved config, status.json, metrics.json, CSV
metrics, checkpoints (each with the resolved config, RNG state and W&B run id) and the W&B
run directory. Checkpoint contents, resuming, loggers, job status and DDP have their own modules in this package.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.conf import CONF_MODULE
from zf_lightning.data.base import SequenceDataModule
from zf_lightning.evaluation.probes import AnalysisResult
from zf_lightning.lit import SequenceLitModule
from zf_lightning.runs.checkpoint import (
    AtomicCheckpointIO,
    LastCheckpoint,
    StoreConfig,
    config_targets,
    resolved_config,
)
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.ddp import JobDDPStrategy, distributed_job
from zf_lightning.runs.guard import RunLock, check_config, check_writable, holds_run, sync_learning_rate
from zf_lightning.runs.hydra_job import JobLog, record_job
from zf_lightning.runs.loggers import build_loggers, close_loggers, log_samples, log_tables
from zf_lightning.runs.policy import failure_value, global_rank, threads_per_job
from zf_lightning.runs.resume import (
    ResumePoint,
    ResumeState,
    completed_run,
    keep_csv_history,
    resume_from,
)
from zf_lightning.runs.status import JobStatus, write_json
from zf_lightning.runs.stopping import DivergenceWatch, checkpoint_step, stop_reason
from zf_lightning.types import CanGenerate

log = logging.getLogger(__name__)


def compose_config(name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """``zf_lightning/conf/<name>.yaml`` with ``overrides``, composed in-process (benchmarks and tests; no Hydra
    run, so interpolations of ``hydra:`` need ``paths.output_dir`` set in the overrides)."""
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=return_hydra_config)


# data config keys that say where the data lives (what to override when it has moved)
DATA_LOCATION_KEYS = ("root", "files", "data_dir", "path")


def build_datamodule(cfg: DictConfig, moved_hint: str | None = None) -> SequenceDataModule:
    """The data module of ``cfg.data``. ``moved_hint``: how the command that failed to find the data
    points a stored config at a new place (``data.root=<folder>``), added to a not-found error."""
    try:
        dm = instantiate(cfg.data)
    except Exception as err:
        missing = err if isinstance(err, FileNotFoundError) else err.__cause__
        if moved_hint is None or not isinstance(missing, FileNotFoundError):
            raise
        keys = [k for k in DATA_LOCATION_KEYS if k in (cfg.data or {})]
        stored = ", ".join(f"{k}={cfg.data[k]}" for k in keys) or "its stored settings"
        example = " ".join(moved_hint.format(key=k) for k in keys[:1]) or moved_hint.format(key="root")
        raise FileNotFoundError(
            f"{missing}\nThe data is not where the checkpoint's run found it ({stored}). If it has moved, "
            f"point the stored config at the new place: {example}"
        ) from err
    if not isinstance(dm, SequenceDataModule):
        raise TypeError(f"data._target_ must build a SequenceDataModule, got {type(dm).__name__}")
    return dm


def build_module(cfg: DictConfig, dm: SequenceDataModule) -> SequenceLitModule:
    """Model (from the data's spec) wrapped in the LightningModule that owns the objective."""
    spec = dm.spec
    # _convert_="object": Hydra would otherwise turn the DataSpec dataclass into a DictConfig
    model = instantiate(cfg.model, spec=spec, _convert_="object")
    scheduler = instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None
    return instantiate(
        cfg.lit, model=model, spec=spec, optimizer=instantiate(cfg.optim.optimizer), scheduler=scheduler,
        _convert_="object",
    )


def build_callbacks(cfg: DictConfig, resume: ResumePoint | None = None,
                    context: RunContext | None = None) -> list[Callback]:
    """Ours (stored config and group choices, RNG state, divergence watch) and the ``callbacks`` group's.

    A resumed run records the stored run's group choices, not the defaults of a resume command
    that names no groups."""
    choices = resume.choices if resume is not None and resume.choices else dict((context or RunContext()).choices)
    monitor = str(cfg.get("optimized_metric") or "val/neg_elbo")
    out_dir = Path(cfg.paths.output_dir)
    callbacks: list[Callback] = [StoreConfig(resolved_config(cfg), choices), ResumeState(out_dir),
                                 DivergenceWatch(monitor)]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callback = instantiate(cb_cfg)
            if isinstance(callback, ModelCheckpoint):
                callback.save_last = False  # last.ckpt is LastCheckpoint's (stored configs may still ask for it)
            callbacks.append(callback)
    return [*callbacks, LastCheckpoint(out_dir / "checkpoints")]  # after the best checkpoint is chosen


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        value = float(v.item() if isinstance(v, torch.Tensor) else v)
        out[k] = value if math.isfinite(value) else float("nan")
    return out


def split_metrics(trainer: L.Trainer, lit: SequenceLitModule, dm: SequenceDataModule, seed: int,
                  split: str = "test", ckpt_path: str | None = None) -> dict[str, float]:
    """Metrics of one split; seeded right before the pass so eval.py reproduces them exactly."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    L.seed_everything(seed, workers=True, verbose=False)
    run = trainer.test if split == "test" else trainer.validate
    results = run(lit, datamodule=dm, ckpt_path=ckpt_path, verbose=False)
    metrics = _finite(results[0] if results else {})
    metrics.update({k: v for k, v in dm.reference_metrics().items() if k.startswith(f"{split}/")})
    return metrics


def run_analyses(cfg: DictConfig, lit: SequenceLitModule, dm: SequenceDataModule, split: str) -> AnalysisResult:
    """Post-training analyses from the ``analyses`` group (e.g. active units, latent probes).

    Each entry is a ``_partial_`` callable ``(model, datamodule, split) -> {metric: value}``;
    the tables of those that return an ``AnalysisResult`` are gathered in ``.tables``.
    """
    metrics = AnalysisResult()
    for name, fn_cfg in (cfg.get("analyses") or {}).items():
        if fn_cfg is None:
            continue
        log.info("analysis %s on %s", name, split)
        L.seed_everything(int(cfg.seed), verbose=False)
        lit.eval()
        with torch.no_grad():
            result = instantiate(fn_cfg)(lit.model, dm, split)
        metrics.update(result)
        metrics.tables.update(getattr(result, "tables", {}))
    return metrics


def write_samples(cfg: DictConfig, lit: SequenceLitModule, dm: SequenceDataModule, directory: Path) -> list[Path]:
    """Draw ``samples.num`` sequences from the prior and render them in the data's format."""
    n = int(cfg.samples.num)
    if n <= 0 or dm.spec.labelled or not isinstance(lit.model, CanGenerate):  # labels are no samples
        return []
    L.seed_everything(int(cfg.seed), verbose=False)
    steps = int(cfg.samples.steps or dm.sample_length())
    lit.eval()
    samples = lit.model.generate(n, steps, first_input=dm.sample_first_input(n), use_mean=bool(cfg.samples.use_mean))
    return dm.write_samples(samples.cpu(), directory, prefix="prior")


def set_threads(cfg: DictConfig, context: RunContext | None = None) -> None:
    threads = threads_per_job(cfg, context)
    if threads is not None and threads != torch.get_num_threads():
        log.info("torch threads: %d", threads)
        torch.set_num_threads(threads)


def _prepare_workers(trainer: L.Trainer, cfg: DictConfig, out_dir: Path, strategies: list) -> None:
    """DDP: give the extra processes this job's resolved config (see zf_lightning.runs.ddp)."""
    strategy = trainer.strategy
    if not isinstance(strategy, JobDDPStrategy):
        return
    strategies.append(strategy)
    if global_rank() != 0:
        return
    worker_cfg = OmegaConf.create(resolved_config(cfg))
    with open_dict(worker_cfg):
        worker_cfg.auto_resume = False  # rank 0 decided where to resume from (ckpt_path)
        worker_cfg.continue_on_failure = False  # a worker that fails must stop the job
    path = out_dir / ".ddp" / "worker_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(worker_cfg, path)
    strategy.set_worker_config(path)


def _build(cfg: DictConfig, resume: ResumePoint | None) -> tuple[SequenceDataModule, SequenceLitModule]:
    """Seeded data module and LightningModule (before anything is written: a missing data folder or
    an impossible model fails here, leaving the run folder as it was)."""
    L.seed_everything(int(cfg.seed), workers=True)
    hint = None if resume is None else "python train.py ckpt_path=last hydra.run.dir=<run> data.{key}=<new place>"
    dm = build_datamodule(cfg, moved_hint=hint)
    dm.seed_order(int(cfg.seed))
    return dm, build_module(cfg, dm)


def _fit_and_test(cfg: DictConfig, out_dir: Path, resume: ResumePoint | None, strategies: list,
                  status: JobStatus, dm: SequenceDataModule, lit: SequenceLitModule,
                  context: RunContext) -> dict[str, float]:
    rank = global_rank()
    if rank == 0:
        OmegaConf.save(OmegaConf.create(resolved_config(cfg)), out_dir / "config_resolved.yaml")
    loggers = build_loggers(cfg, resume, context)
    extra: dict[str, Any] = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    callbacks = build_callbacks(cfg, resume, context)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, **extra)
    _prepare_workers(trainer, cfg, out_dir, strategies)
    if resume is not None and rank == 0:
        keep_csv_history(loggers, resume)
    wandb_ids = [lg.experiment.id for lg in loggers if isinstance(lg, WandbLogger) and rank == 0]
    if wandb_ids:
        status.update(wandb_run_id=wandb_ids[0])
    # weights_only: Lightning's own load of the checkpoint (already read through load_checkpoint) runs no code
    with warnings.catch_warnings():
        # the data module continues mid-epoch from the checkpoint's loop progress (ResumeState),
        # which Lightning cannot see: its warning that the loader is not resumable does not apply
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(lit, datamodule=dm, ckpt_path=str(resume.path) if resume is not None else None,
                    weights_only=True)
    watch = next((c for c in trainer.callbacks if isinstance(c, DivergenceWatch)), None)
    if watch is not None and rank == 0:
        status.update(**watch.report())
    metrics: dict[str, float] = {}
    monitored = _finite({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    metrics.update(monitored)
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    own_targets = config_targets(resolved_config(cfg))
    stopped = {"stop_reason": stop_reason(trainer), "updates": trainer.global_step,
               "best_step": checkpoint_step(best, own_targets)}
    log.info("training stopped: %s after %d updates (best checkpoint at update %s)", *stopped.values())
    status.update(**stopped)
    metrics |= {"stop_reason": stopped["stop_reason"], "train/updates": float(trainer.global_step)}  # type: ignore[dict-item]
    if stopped["best_step"] is not None:
        metrics["best/step"] = float(stopped["best_step"])
    if cfg.get("test", True):
        metrics.update(split_metrics(trainer, lit, dm, int(cfg.seed), "test", ckpt_path=best))
        metrics["test/checkpoint"] = best or "last weights"  # type: ignore[assignment]
        if rank == 0:
            analysed = run_analyses(cfg, lit, dm, "test")
            metrics.update(analysed)
            log_tables(loggers, analysed.tables, trainer.global_step)
    if rank == 0:
        log_samples(loggers, write_samples(cfg, lit, dm, out_dir / "samples"), trainer.global_step)
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def train(cfg: DictConfig, context: RunContext | None = None) -> dict[str, float]:
    """Fit, test the best checkpoint, write metrics.json, samples and the resolved config.

    Returns the metrics dict (test metrics plus the optimized validation metric). With
    ``continue_on_failure=true`` a failing job is recorded in status.json and returns the
    worst value of the optimized metric instead of raising, so a sweep goes on.

    Nothing is written into the run folder before the command is known to be able to run
    there: the folder is writable, no other live run holds it (``RunLock``), the checkpoint to
    resume is trusted and readable and matches the config, the settings are sound, the data
    and model build. A command refused then leaves a folder that holds a run untouched
    (a fresh folder records the failure in status.json, for sweeps). A folder whose run has
    completed is left as it is (its metrics are returned) unless the command raises the cap
    that ended it, which continues the run from its final state.
    """
    context = context or RunContext()
    out_dir = Path(cfg.paths.output_dir)
    composed = cfg
    rank = global_rank()
    status = JobStatus(out_dir, rank, context)
    lock = RunLock(out_dir)
    journal = JobLog()
    had_run = holds_run(out_dir)
    failed, started = True, False
    try:
        with distributed_job() as strategies:
            check_writable(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                lock.acquire()
            cfg, resume = resume_from(cfg, context)
            if (done := completed_run(out_dir, resume, cfg, context)) is not None:
                failed = False
                return done
            sync_learning_rate(cfg)
            check_config(cfg)
            set_threads(cfg, context)
            dm, lit = _build(cfg, resume)
            if rank == 0:
                record_job(out_dir, composed, context)
                journal.accept(out_dir, context)
            status.started(from_update=resume.global_step if resume is not None else 0)
            started = True
            if resume is not None:
                status.update(resumed_from=str(resume.path))
                if rank == 0:
                    resume.set_damaged_aside()
            status.update(torch_threads=torch.get_num_threads())
            metrics = _fit_and_test(cfg, out_dir, resume, strategies, status, dm, lit, context)
        failed = False
        status.completed()
        return metrics
    except BaseException as error:
        if started or rank > 0 or (lock.held and not had_run):
            if rank == 0:
                record_job(out_dir, composed, context)
                journal.accept(out_dir, context)
            if not started:
                status.started()
            status.failed(error)
        if isinstance(error, Exception) and rank == 0 and cfg.get("continue_on_failure", False):
            log.exception("job failed; continue_on_failure=true, so the sweep goes on")
            return {str(cfg.optimized_metric): failure_value(context), "failed": 1.0}
        raise
    finally:
        lock.release()
        close_loggers(failed)
        journal.close()
