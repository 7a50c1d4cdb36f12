"""Is the data loader ever the bottleneck? Training steps per second fed by the real loader
versus the same training fed the same batches from memory.

For each configuration (Hydra overrides of ``zf_lightning/conf/train.yaml``, as ``train.py`` takes them)
this builds the data module and the LightningModule exactly as training does, then runs
``Trainer.fit`` twice per round for ``--steps`` updates:

* ``real``: batches from the data module's train loader (reading, framing, collating,
  shuffling, epoch boundaries: everything training pays for);
* ``in_memory``: the very batches the real run consumed, in the same order and with the same
  epoch boundaries, replayed from a list (same shapes, same compute, no loading).

Validation, checkpoints, loggers and the progress bar are off in both, so the difference is
the loader. Steps per second are timed from batch start to batch start, after ``--warmup``
steps; each round runs real then in-memory, and the reported ratio is the median over rounds
of real / in-memory (the two speeds are medians of their own). The recorded batches are kept
as CPU copies, so on an accelerator the replay pays the same host-to-device copy. The goal
is real >= 95 % of in-memory.

    python benchmarks/bench_loader.py                                   # the default MNIST run
    python benchmarks/bench_loader.py --json \\
        --config "" \\
        --config "data=audio_folder data.root=../shared/data/fsdd data.sample_rate=8000" \\
        --config "data=sentences data.root=../shared/data/rt-polarity"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zf_lightning.runs.pipeline import build_datamodule, build_module, compose_config, set_threads  # noqa: E402
from zf_lightning.types import SequenceBatch  # noqa: E402


class BatchClock(L.Callback):
    """Wall-clock time at the start of every training batch, and the batches themselves (on the CPU)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.batches: list[SequenceBatch] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self.starts.append(time.perf_counter())
        self.batches.append(batch.to(torch.device("cpu")))


class Replay:
    """Recorded batches served from memory, epoch by epoch as the real loader served them.

    A cursor advances only as batches are consumed (Lightning also calls ``iter`` once just to
    check that the loader is iterable).
    """

    def __init__(self, batches: list[SequenceBatch], epoch_length: int) -> None:
        self.batches, self.epoch_length, self.position = batches, epoch_length, 0

    def __len__(self) -> int:
        return self.epoch_length

    def __iter__(self) -> Iterator[SequenceBatch]:
        for index in range(self.epoch_length):
            if self.position == len(self.batches):
                if index == 0:  # an empty epoch would loop forever: training asked for more than was recorded
                    raise RuntimeError(f"replay ran out of its {len(self.batches)} recorded batches")
                return
            self.position += 1
            yield self.batches[self.position - 1]


def compose_train(overrides: list[str]) -> DictConfig:
    """The training config for ``overrides``; outputs (none are written with loggers and checkpoints off)
    would go to a temporary folder, since no Hydra run sets its output directory here."""
    scratch = tempfile.mkdtemp(prefix="bench_loader_")
    return compose_config("train", [f"paths.output_dir={scratch}", *overrides])


def timed_fit(
    cfg: DictConfig, loader: Replay | None, dm: Any, steps: int, warmup: int
) -> tuple[float, list[SequenceBatch]]:
    """Updates per second of one ``Trainer.fit`` on ``loader`` (None: the data module's own), and
    the batches it trained on."""
    L.seed_everything(int(cfg.seed), verbose=False)
    lit = build_module(cfg, dm)
    clock = BatchClock()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[clock],
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=None,
        check_val_every_n_epoch=None,
    )
    if loader is None:
        trainer.fit(lit, datamodule=dm)
    else:
        trainer.fit(lit, train_dataloaders=loader)
    times = clock.starts[warmup:]
    if len(times) < 2:
        raise RuntimeError(f"only {len(clock.starts)} steps ran; raise --steps above --warmup + 1")
    return (len(times) - 1) / (times[-1] - times[0]), clock.batches


def bench_config(overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cfg = compose_train(overrides)
    set_threads(cfg)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    epoch_length = len(dm.train_dataloader())
    real, in_memory, same_batches = [], [], []
    for _ in range(args.rounds):
        speed, batches = timed_fit(cfg, None, dm, args.steps, args.warmup)
        real.append(speed)
        speed, replayed = timed_fit(cfg, Replay(batches, epoch_length), dm, args.steps, args.warmup)
        in_memory.append(speed)
        same_batches.append(
            len(replayed) == len(batches) == args.steps
            and all(torch.equal(a.inputs, b.inputs) for a, b in zip(replayed, batches, strict=True))
        )
    ratio = statistics.median(r / s for r, s in zip(real, in_memory, strict=True))
    steps_shape = [int(b.inputs.shape[1]) for b in batches]
    return {
        "overrides": " ".join(overrides),
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "batch_shape": list(batches[0].inputs.shape),
        "mean_steps_per_batch": sum(steps_shape) / len(steps_shape),
        "num_workers": int(cfg.data.get("num_workers", 0)),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batches_per_epoch": epoch_length,
        "rounds": args.rounds,
        "replayed_the_same_batches": all(same_batches),
        "real_steps_per_s": statistics.median(real),
        "in_memory_steps_per_s": statistics.median(in_memory),
        "real_over_in_memory": ratio,
        "goal_met": ratio >= 0.95,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", action="append", default=None,
        help="Hydra overrides for one configuration, as one string (repeatable; default: the default run)",
    )
    parser.add_argument("--steps", type=int, default=120, help="updates per fit")
    parser.add_argument("--warmup", type=int, default=10, help="updates not timed at the start of each fit")
    parser.add_argument("--rounds", type=int, default=3, help="(real, in-memory) pairs; medians reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 2:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by at least 2")
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one "Trainer.fit stopped" per fit
    warnings.filterwarnings("ignore", module="lightning")
    configs = [shlex.split(c) for c in (args.config or [""])]
    results = {"meta": {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "torch": torch.__version__}}
    for overrides in configs:
        r = bench_config(overrides, args)
        results[r["overrides"] or "default"] = r
        line = (
            f"[{r['overrides'] or 'default'}] {r['data']} batch {r['batch_shape']}: "
            f"real {r['real_steps_per_s']:.2f} steps/s, in memory {r['in_memory_steps_per_s']:.2f} steps/s, "
            f"real/in-memory {r['real_over_in_memory']:.3f} (goal >= 0.95)"
        )
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)  # each result as soon as it exists
    if args.json:
        print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
