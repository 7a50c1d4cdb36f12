"""Builds runs from composed configs and executes them; train.py and eval.py are thin
wrappers around ``train`` and ``evaluate`` so tests can call them in-process."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.lit import SequenceLitModule

log = logging.getLogger(__name__)

CONFIG_KEY = "zf_config"


class StoreConfig(Callback):
    """Puts the resolved run configuration into every checkpoint, so eval.py and resumes
    can rebuild exactly the model that was trained."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and lg.experiment is not None:
                checkpoint["wandb_run_id"] = lg.version


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every interpolation resolved (the hydra node excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


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


def _job_identity(cfg: DictConfig) -> dict[str, Any]:
    """W&B name/group/tags from the job's overrides, so the dashboard can group by them."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    name = hc.job.override_dirname or "default"
    identity: dict[str, Any] = {"name": name}
    if str(hc.mode) == "RunMode.MULTIRUN":
        identity["group"] = Path(hc.sweep.dir).name
    identity["tags"] = list(cfg.get("tags") or []) + [o for o in hc.overrides.task if "=" in o and len(o) < 64]
    return identity


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers: list[Logger] = []
    identity = _job_identity(cfg)
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        extra: dict[str, Any] = {}
        if "WandbLogger" in lg_cfg._target_:
            extra = {k: v for k, v in identity.items() if lg_cfg.get(k) in (None, [], ())}
            if identity.get("tags"):
                extra["tags"] = identity["tags"]
            extra["config"] = resolved_config(cfg)
        # built by hand, not by instantiate(): the W&B `config` kwarg would clash with
        # instantiate's own argument, and its `_target_` entries must not be instantiated
        params = OmegaConf.to_container(lg_cfg, resolve=True)
        assert isinstance(params, dict)
        logger_cls = get_class(str(params.pop("_target_")))
        loggers.append(logger_cls(**(params | extra)))
    return loggers


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks: list[Callback] = [StoreConfig(resolved_config(cfg))]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(instantiate(cb_cfg))
    return callbacks


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)


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
    if n <= 0 or not hasattr(lit.model, "generate"):
        return []
    L.seed_everything(int(cfg.seed), verbose=False)
    steps = int(cfg.samples.steps or dm.sample_length())
    lit.eval()
    samples = lit.model.generate(n, steps, first_input=dm.sample_first_input(n), use_mean=bool(cfg.samples.use_mean))
    return dm.write_samples(samples.cpu(), directory, prefix="prior")


def close_loggers(failed: bool) -> None:
    """Finish the W&B run of this job (failed ones too) so the next multirun job gets its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a requirement
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write metrics.json, samples and the resolved config.

    Returns the metrics dict (test metrics plus the optimized validation metric).
    """
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = True
    try:
        L.seed_everything(int(cfg.seed), workers=True)
        OmegaConf.save(OmegaConf.create(resolved_config(cfg)), out_dir / "config_resolved.yaml")
        dm = build_datamodule(cfg)
        lit = build_module(cfg, dm)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg), callbacks=build_callbacks(cfg))
        trainer.fit(lit, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics: dict[str, float] = {}
        monitored = _finite({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        metrics.update(monitored)
        ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
        if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
            metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
        if cfg.get("test", True):
            metrics.update(split_metrics(trainer, lit, dm, int(cfg.seed), "test", ckpt_path=best))
            metrics["test/checkpoint"] = best or "last weights"  # type: ignore[assignment]
            metrics.update(run_analyses(cfg, lit, dm, "test"))
        write_samples(cfg, lit, dm, out_dir / "samples")
        write_json(out_dir / "metrics.json", metrics)
        failed = False
        return metrics
    finally:
        close_loggers(failed)
