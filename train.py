"""Train a model: ``python train.py [group=option ...] [key=value ...]`` (see README)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from zf_lightning.conf import CONFIG_PATH
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.pipeline import train


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg, RunContext.from_hydra())
    value = metrics.get(f"best/{cfg.optimized_metric}", metrics.get(cfg.optimized_metric))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
