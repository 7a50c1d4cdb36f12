"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file.ckpt> [split=test|val] [eval.iwae_samples=100]``.

The model, data and objective are rebuilt from the config stored in the checkpoint. Writes
metrics.json (the test loop's ELBO terms, IWAE-K bounds, data references such as the
LGSSM's exact NLL), prior samples and, with ``eval.export_latents=true``, posterior latents.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from zf_lightning.conf import CONFIG_PATH
from zf_lightning.runs.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
