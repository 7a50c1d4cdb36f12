"""Evaluation of a trained checkpoint: rebuild the run from the config stored in it and
score a split (eval.py is a thin wrapper around ``evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.pipeline import (
    CONFIG_KEY,
    build_datamodule,
    build_module,
    run_analyses,
    split_metrics,
    write_json,
    write_samples,
)


def load_checkpoint_config(ckpt_path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """The resolved config stored in a checkpoint, and the checkpoint itself."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file written by train.py)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path} has no stored config ('{CONFIG_KEY}'); only checkpoints written by train.py load")
    return OmegaConf.create(checkpoint[CONFIG_KEY]), checkpoint


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild a trained model from its checkpoint's config and evaluate one split."""
    out_dir = Path(cfg.paths.output_dir)
    run_cfg, checkpoint = load_checkpoint_config(cfg.ckpt_path)
    if cfg.get("data_overrides"):
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    dm = build_datamodule(run_cfg)
    lit = build_module(run_cfg, dm)
    lit.load_state_dict(checkpoint["state_dict"])
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    metrics = split_metrics(trainer, lit, dm, int(cfg.seed), str(cfg.split))
    with open_dict(run_cfg):
        run_cfg.seed = cfg.seed
    metrics.update(run_analyses(run_cfg, lit, dm, str(cfg.split)))
    metrics["checkpoint"] = str(cfg.ckpt_path)  # type: ignore[assignment]
    with open_dict(run_cfg):
        run_cfg.samples = cfg.samples
    write_samples(run_cfg, lit, dm, out_dir / "samples")
    write_json(out_dir / "metrics.json", metrics)
    return metrics
