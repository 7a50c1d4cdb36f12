"""Entry point of a DDP worker process: ``python -m zf_lightning.runs.ddp_worker <config.yaml>``
trains the job whose resolved config rank 0 wrote (see ``zf_lightning.runs.ddp``)."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from zf_lightning.runs.pipeline import train


def main(argv: list[str]) -> int:
    """Entry of a DDP worker: train the job whose resolved config is at ``argv[0]``."""
    if len(argv) != 1:
        print("usage: python -m zf_lightning.runs.ddp_worker <worker config.yaml>", file=sys.stderr)
        return 2
    train(OmegaConf.load(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
