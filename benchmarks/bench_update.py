"""How much of a training update is the model step? A study's ``Trainer.fit`` against the bare step
on the very same batches, in one process.

For a configuration (Hydra overrides of ``zf_lightning/conf/train.yaml``, as ``train.py`` takes them; default:
the FSDD studies' budget, ``study=common/fsdd``) each round runs, for ``--steps`` updates:

* ``update``: ``Trainer.fit`` as a study job runs it: the data module's loader, the config's
  trainer (clip, validation interval), callbacks (checkpoints, early stopping, learning-rate
  monitor) and the CSV logger, with validation and checkpointing amortized over the updates,
  and no progress bar (``study/common/base.yaml`` turns it off for every study job; the
  config can turn it back on with ``trainer.enable_progress_bar=true``);
* ``step``: the bare model step on the batches that fit trained on, in the same order: the
  module's objective, backward, gradient-norm clip and the config's optimizer, nothing else.

Both are timed from the start of update ``--warmup`` to the end; the ratio is the median over
rounds of update / step per update (goal: <= 1.2, a study update mostly the step).

On a loaded machine the two halves of a round see different loads (they run seconds apart), so
each round also runs the pair interleaved (``interleaved_*``): a second fit in which, just before
each of its updates, a second module (same seed, same optimizer) takes the bare step on the same
batch, timed apart and left out of the update's time, so both share every moment's load. The
second module's step goes through the machine's caches beside the fit's, which the separate
halves do not.

    python benchmarks/bench_update.py --json
    python benchmarks/bench_update.py --config "study=common/fsdd data.root=../shared/data/fsdd" --steps 500
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
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zf_lightning.lit.module import SequenceLitModule  # noqa: E402
from zf_lightning.runs.loggers import build_loggers  # noqa: E402
from zf_lightning.runs.pipeline import (  # noqa: E402
    build_callbacks,
    build_datamodule,
    build_module,
    compose_config,
    set_threads,
)
from zf_lightning.types import SequenceBatch  # noqa: E402

FSDD_STUDY = f"study=common/fsdd data.root={ROOT.parent / 'shared' / 'data' / 'fsdd'}"
# what study/common/base.yaml sets for every study job's trainer, applied before the config's overrides
STUDY_JOB = ["trainer.enable_progress_bar=false"]


class BareStep:
    """The bare step of a module of its own: objective, backward, gradient-norm clip, optimizer."""

    def __init__(self, cfg: DictConfig, dm: Any) -> None:
        L.seed_everything(int(cfg.seed), verbose=False)
        self.lit: SequenceLitModule = build_module(cfg, dm)
        self.lit.train()
        self.params = [p for p in self.lit.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg.optim.optimizer)(self.params)
        self.clip = float(cfg.trainer.gradient_clip_val or 0.0)

    def __call__(self, batch: SequenceBatch, i: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.lit.objective(batch, self.lit.weights(i))
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()


class UpdateClock(L.Callback):
    """Start time of every training batch, the end of training, and the batches (CPU copies).

    With ``step``: first that bare step on the batch (its own RNG stream, so the fit draws what it
    would alone), its time in ``step_times``; the callback's whole time goes to ``skipped``."""

    def __init__(self, step: BareStep | None = None) -> None:
        self.starts: list[float] = []
        self.end = 0.0
        self.batches: list[SequenceBatch] = []
        self.step = step
        self.step_times: list[float] = []
        self.skipped: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        entered = time.perf_counter()
        cpu_batch = batch.to(torch.device("cpu"))
        if self.step is not None:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                torch.manual_seed(len(self.starts))
                start = time.perf_counter()
                self.step(cpu_batch, len(self.starts))
                self.step_times.append(time.perf_counter() - start)
        else:
            self.batches.append(cpu_batch)
        self.starts.append(time.perf_counter())
        self.skipped.append(self.starts[-1] - entered)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()


def timed_updates(cfg: DictConfig, dm: Any, steps: int, warmup: int) -> tuple[float, list[SequenceBatch]]:
    """Seconds per update of one study-like ``Trainer.fit`` (after ``warmup`` updates), and its batches."""
    L.seed_everything(int(cfg.seed), verbose=False)
    lit = build_module(cfg, dm)
    clock = UpdateClock()
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=build_loggers(cfg), callbacks=[*build_callbacks(cfg), clock], max_steps=steps
    )
    trainer.fit(lit, datamodule=dm)
    if len(clock.starts) <= warmup:
        raise RuntimeError(f"only {len(clock.starts)} updates ran; raise --steps above --warmup")
    return (clock.end - clock.starts[warmup]) / (len(clock.starts) - warmup), clock.batches


def timed_interleaved(cfg: DictConfig, dm: Any, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds per update of a study-like ``Trainer.fit`` and per bare step of a second module on
    each of its batches just before the update (after ``warmup`` updates; the callback's time left
    out of the update's)."""
    clock = UpdateClock(BareStep(cfg, dm))
    L.seed_everything(int(cfg.seed), verbose=False)
    lit = build_module(cfg, dm)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=build_loggers(cfg), callbacks=[*build_callbacks(cfg), clock], max_steps=steps
    )
    trainer.fit(lit, datamodule=dm)
    n = len(clock.starts) - warmup
    if n <= 0:
        raise RuntimeError(f"only {len(clock.starts)} updates ran; raise --steps above --warmup")
    update = clock.end - clock.starts[warmup] - sum(clock.skipped[warmup + 1:])
    return update / n, sum(clock.step_times[warmup:]) / n


def timed_steps(cfg: DictConfig, dm: Any, batches: list[SequenceBatch], warmup: int) -> float:
    """Seconds per bare step (objective, backward, clip, optimizer) over ``batches``, after ``warmup``."""
    L.seed_everything(int(cfg.seed), verbose=False)
    lit: SequenceLitModule = build_module(cfg, dm)
    lit.train()
    params = [p for p in lit.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optim.optimizer)(params)
    clip = float(cfg.trainer.gradient_clip_val or 0.0)
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = lit.objective(batch, lit.weights(i))
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def bench_config(overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    scratch = tempfile.mkdtemp(prefix="bench_update_")
    cfg = compose_config("train", [f"paths.output_dir={scratch}", "logger=csv", *STUDY_JOB, *overrides])
    set_threads(cfg)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    updates, steps, paired = [], [], []
    for _ in range(args.rounds):
        per_update, batches = timed_updates(cfg, dm, args.steps, args.warmup)
        updates.append(per_update)
        steps.append(timed_steps(cfg, dm, batches, args.warmup))
        paired.append(timed_interleaved(cfg, dm, args.steps, args.warmup))
    lengths = [int(b.inputs.shape[1]) for b in batches]
    return {
        "overrides": " ".join(overrides),
        "study_job_overrides": " ".join(STUDY_JOB),
        "progress_bar": bool(cfg.trainer.enable_progress_bar),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "val_check_interval": cfg.trainer.val_check_interval,
        "batch_size": int(batches[0].inputs.shape[0]),
        "mean_frames_per_batch": sum(lengths) / len(lengths),
        "update_s": statistics.median(updates),
        "step_s": statistics.median(steps),
        "update_over_step": statistics.median(u / s for u, s in zip(updates, steps, strict=True)),
        "per_round_update_s": updates,
        "per_round_step_s": steps,
        "interleaved_update_s": statistics.median(u for u, _ in paired),
        "interleaved_step_s": statistics.median(s for _, s in paired),
        "interleaved_update_over_step": statistics.median(u / s for u, s in paired),
        "per_round_interleaved_update_s": [u for u, _ in paired],
        "per_round_interleaved_step_s": [s for _, s in paired],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=FSDD_STUDY, help="Hydra overrides, as one string")
    parser.add_argument("--steps", type=int, default=500, help="updates per round (validation amortized over them)")
    parser.add_argument("--warmup", type=int, default=10, help="updates not timed at the start of each round")
    parser.add_argument("--rounds", type=int, default=3, help="(update, step) pairs; medians reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    result = {
        "meta": {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "torch": torch.__version__},
        "update": bench_config(shlex.split(args.config), args),
    }
    r = result["update"]
    summary = (
        f"update {1e3 * r['update_s']:.1f} ms, step {1e3 * r['step_s']:.1f} ms, "
        f"update / step {r['update_over_step']:.3f}; interleaved: update {1e3 * r['interleaved_update_s']:.1f} ms, "
        f"step {1e3 * r['interleaved_step_s']:.1f} ms, update / step {r['interleaved_update_over_step']:.3f} "
        "(goal <= 1.2)"
    )
    emit(result, summary, args.json, args.out)
    return result


def emit(result: dict[str, Any], summary: str, as_json: bool, out: Path | None) -> None:
    """The summary line (to stderr when the JSON goes to stdout), the JSON to ``out`` and / or stdout."""
    print(summary, file=sys.stderr if as_json else sys.stdout, flush=True)
    text = json.dumps(result, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    if as_json:
        print(text)


if __name__ == "__main__":
    main()
