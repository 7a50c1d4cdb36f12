"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file.ckpt> [split=test|val]``.

The model, data and objective are rebuilt from the config stored in the checkpoint.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from zf_lightning.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
