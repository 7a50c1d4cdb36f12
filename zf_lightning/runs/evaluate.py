"""The eval.py job: rebuild a trained run from the config stored in its checkpoint, score a
split (the test loop's metrics, importance-sampled bounds, references from the data) and
run the configured analyses; what each number means is in ``zf_lightning.evaluation.bounds``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from zf_lightning.evaluation.bounds import importance_metrics, iwae_sample_counts, split_loader
from zf_lightning.evaluation.posterior import export_latents
from zf_lightning.runs.checkpoint import CONFIG_KEY, STATE_DICT_KEY, load_checkpoint
from zf_lightning.runs.guard import check_writable
from zf_lightning.runs.pipeline import build_datamodule, build_module, run_analyses, split_metrics, write_samples
from zf_lightning.runs.status import write_json

log = logging.getLogger(__name__)


def load_checkpoint_config(ckpt_path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """The resolved config stored in a checkpoint, and the checkpoint itself."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file written by train.py)")
    checkpoint = load_checkpoint(path)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path} has no stored config ('{CONFIG_KEY}'); only checkpoints written by train.py load")
    return OmegaConf.create(checkpoint[CONFIG_KEY]), checkpoint


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild a trained model from its checkpoint's config and evaluate one split.

    ``cfg.eval`` (zf_lightning/conf/eval.yaml): ``iwae_samples`` (K or a list of Ks; null/[] skips the
    importance-sampled bounds), ``chunk_size`` (paths per sequence per forward pass) and
    ``export_latents``. Everything is seeded by ``cfg.seed``.
    """
    out_dir = Path(cfg.paths.output_dir)
    split = str(cfg.split)
    seed = int(cfg.seed)
    check_writable(out_dir)
    run_cfg, checkpoint = load_checkpoint_config(cfg.ckpt_path)
    if cfg.get("data_overrides"):
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    moved_hint = f"python eval.py ckpt_path={cfg.ckpt_path} '+data_overrides.{{key}}=<new place>'"
    dm = build_datamodule(run_cfg, moved_hint=moved_hint)
    lit = build_module(run_cfg, dm)
    lit.load_state_dict(checkpoint[STATE_DICT_KEY])
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    metrics = split_metrics(trainer, lit, dm, seed, split)
    options = cfg.get("eval") or {}
    device = trainer.strategy.root_device
    sample_counts = iwae_sample_counts(options.get("iwae_samples"))
    if sample_counts:
        chunk = options.get("chunk_size")
        metrics.update(importance_metrics(lit.model, dm, split, sample_counts, None if chunk is None else int(chunk),
                                          seed, device))
    with open_dict(run_cfg):
        run_cfg.seed = cfg.seed
        if cfg.get("analyses"):
            run_cfg.analyses = OmegaConf.merge(run_cfg.get("analyses") or {}, cfg.analyses)
        # analyses that write files (e.g. resampled text) write into this eval run's folder,
        # not into the training run's folder recorded in the checkpoint
        for analysis in (run_cfg.get("analyses") or {}).values():
            if analysis is not None and "output_dir" in analysis:
                analysis.output_dir = str(out_dir)
    metrics.update(run_analyses(run_cfg, lit, dm, split))
    if options.get("export_latents"):
        written = export_latents(lit.model, split_loader(dm, split), out_dir / f"latents_{split}.npz", device)
        if written is not None:
            metrics[f"{split}/latents_file"] = str(written)  # type: ignore[assignment]
    lit.cpu()
    metrics["checkpoint"] = str(cfg.ckpt_path)  # type: ignore[assignment]
    with open_dict(run_cfg):
        run_cfg.samples = cfg.samples
    write_samples(run_cfg, lit, dm, out_dir / "samples")
    write_json(out_dir / "metrics.json", metrics)
    headline = [f"{split}/elbo", *(f"{split}/iwae_{k}" for k in sample_counts), f"{split}/exact_nll"]
    log.info("%s", ", ".join(f"{k}={metrics[k]:.4f}" for k in headline if k in metrics))
    return metrics
