"""Builds runs from composed configs and executes them; train.py and eval.py are thin
wrappers around ``train`` and ``evaluate`` so tests can call them in-process.

One job = one output folder holding the resolved config, status.json, metrics.json, CSV
metrics, checkpoints (each with the resolved config, RNG state and W&B run id) and the W&B
run directory. Checkpoint contents, resuming, loggers, job status and DDP have their own modules in this package.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.lit import SequenceLitModule
from zf_lightning.runs.checkpoint import StoreConfig, resolved_config
from zf_lightning.runs.ddp import JobDDPStrategy, distributed_job
from zf_lightning.runs.loggers import build_loggers, close_loggers, log_samples
from zf_lightning.runs.policy import failure_value, global_rank, threads_per_job
from zf_lightning.runs.resume import ResumePoint, ResumeState, hydra_choices, keep_csv_history, resume_from
from zf_lightning.runs.status import JobStatus, completed_metrics, write_json
from zf_lightning.runs.stopping import checkpoint_step, stop_reason
from zf_lightning.types import CanGenerate

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``, composed in-process (benchmarks and tests; no Hydra
    run, so interpolations of ``hydra:`` need ``paths.output_dir`` set in the overrides)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=return_hydra_config)


def build_datamodule(cfg: DictConfig) -> SequenceDataModule:
    dm = instantiate(cfg.data)
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


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks: list[Callback] = [StoreConfig(resolved_config(cfg), hydra_choices()), ResumeState()]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(instantiate(cb_cfg))
    return callbacks


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


def run_analyses(cfg: DictConfig, lit: SequenceLitModule, dm: SequenceDataModule, split: str) -> dict[str, float]:
    """Post-training analyses from the ``analysis`` group (e.g. active units, latent probes).

    Each entry is a ``_partial_`` callable ``(model, datamodule, split) -> {metric: value}``.
    """
    metrics: dict[str, float] = {}
    for name, fn_cfg in (cfg.get("analyses") or {}).items():
        if fn_cfg is None:
            continue
        log.info("analysis %s on %s", name, split)
        L.seed_everything(int(cfg.seed), verbose=False)
        lit.eval()
        with torch.no_grad():
            metrics.update(instantiate(fn_cfg)(lit.model, dm, split))
    return metrics


def write_samples(cfg: DictConfig, lit: SequenceLitModule, dm: SequenceDataModule, directory: Path) -> list[Path]:
    """Draw ``samples.num`` sequences from the prior and render them in the data's format."""
    n = int(cfg.samples.num)
    if n <= 0 or dm.spec.classes is not None or not isinstance(lit.model, CanGenerate):  # labels are no samples
        return []
    L.seed_everything(int(cfg.seed), verbose=False)
    steps = int(cfg.samples.steps or dm.sample_length())
    lit.eval()
    samples = lit.model.generate(n, steps, first_input=dm.sample_first_input(n), use_mean=bool(cfg.samples.use_mean))
    return dm.write_samples(samples.cpu(), directory, prefix="prior")


def set_threads(cfg: DictConfig) -> None:
    threads = threads_per_job(cfg)
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


def _fit_and_test(cfg: DictConfig, out_dir: Path, resume: ResumePoint | None, strategies: list,
                  status: JobStatus) -> dict[str, float]:
    rank = global_rank()
    L.seed_everything(int(cfg.seed), workers=True)
    if rank == 0:
        OmegaConf.save(OmegaConf.create(resolved_config(cfg)), out_dir / "config_resolved.yaml")
    dm = build_datamodule(cfg)
    lit = build_module(cfg, dm)
    loggers = build_loggers(cfg, resume)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=build_callbacks(cfg))
    _prepare_workers(trainer, cfg, out_dir, strategies)
    if resume is not None and rank == 0:
        keep_csv_history(loggers, resume)
    wandb_ids = [lg.experiment.id for lg in loggers if isinstance(lg, WandbLogger) and rank == 0]
    if wandb_ids:
        status.update(wandb_run_id=wandb_ids[0])
    trainer.fit(lit, datamodule=dm, ckpt_path=str(resume.path) if resume is not None else None)
    metrics: dict[str, float] = {}
    monitored = _finite({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    metrics.update(monitored)
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    stopped = {"stop_reason": stop_reason(trainer), "updates": trainer.global_step, "best_step": checkpoint_step(best)}
    log.info("training stopped: %s after %d updates (best checkpoint at update %s)", *stopped.values())
    status.update(**stopped)
    metrics |= {"stop_reason": stopped["stop_reason"], "train/updates": float(trainer.global_step)}  # type: ignore[dict-item]
    if stopped["best_step"] is not None:
        metrics["best/step"] = float(stopped["best_step"])
    if cfg.get("test", True):
        metrics.update(split_metrics(trainer, lit, dm, int(cfg.seed), "test", ckpt_path=best))
        metrics["test/checkpoint"] = best or "last weights"  # type: ignore[assignment]
        if rank == 0:
            metrics.update(run_analyses(cfg, lit, dm, "test"))
    if rank == 0:
        log_samples(loggers, write_samples(cfg, lit, dm, out_dir / "samples"), trainer.global_step)
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write metrics.json, samples and the resolved config.

    Returns the metrics dict (test metrics plus the optimized validation metric). With
    ``continue_on_failure=true`` a failing job is recorded in status.json and returns the
    worst value of the optimized metric instead of raising, so a sweep goes on.
    """
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_completed", False) and (done := completed_metrics(out_dir)) is not None:
        log.info("%s already holds a completed run (skip_completed=true): not run again", out_dir)
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = global_rank()
    status = JobStatus(out_dir, rank)
    status.started()
    failed = True
    try:
        with distributed_job() as strategies:
            cfg, resume = resume_from(cfg)
            if resume is not None:
                status.update(resumed_from=str(resume.path))
            set_threads(cfg)
            status.update(torch_threads=torch.get_num_threads())
            metrics = _fit_and_test(cfg, out_dir, resume, strategies, status)
        failed = False
        status.completed()
        return metrics
    except BaseException as error:
        status.failed(error)
        if isinstance(error, Exception) and rank == 0 and cfg.get("continue_on_failure", False):
            log.exception("job failed; continue_on_failure=true, so the sweep goes on")
            return {str(cfg.optimized_metric): failure_value(cfg), "failed": 1.0}
        raise
    finally:
        close_loggers(failed)
