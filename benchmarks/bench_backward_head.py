"""What Z-Forcing's backward head costs a study's update when no loss reads it, in one process.

With ``lit.bwd_weight=0`` (every committed study) the objective switches the head off
(``HasBackwardCost``): it is a product from the backward states as wide as the inputs' parameters
(5,000 logits a word on text), and its part of the gradient, all zeros, went through the backward
products too. For a study config this times the bare step (objective, backward, gradient-norm
clip, Adam) of two modules with the same weights on the same batches, round-robin so that the
machine's load hits both alike: ``off`` as the objective builds it, ``on`` with the head forced
back on. The ratio off / on is the median of the per-round ratios; the JSON also says whether the
two losses agree.

    python benchmarks/bench_backward_head.py --config "study=text_ablation ablation=aux" --json
    python benchmarks/bench_backward_head.py --config "study=mnist_ablation ablation=kla_aux" --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_update import FSDD_STUDY, STUDY_JOB, BareStep  # noqa: E402

from zf_lightning.runs.pipeline import build_datamodule, compose_config, set_threads  # noqa: E402
from zf_lightning.types import HasBackwardCost  # noqa: E402


def bench(overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cfg = compose_config("train", [f"paths.output_dir={tempfile.mkdtemp(prefix='bench_bwd_')}", *STUDY_JOB,
                                   *overrides])
    set_threads(cfg)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    off, on = BareStep(cfg, dm), BareStep(cfg, dm)
    if not isinstance(on.lit.model, HasBackwardCost):
        raise SystemExit(f"{type(on.lit.model).__name__} has no backward head to switch")
    if off.lit.model.backward_cost:
        raise SystemExit("this config counts the bwd cost (lit.bwd_weight > 0): the head is needed, nothing to time")
    on.lit.model.backward_cost = True
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    update = 3000  # past every ramp: the weights the study trains with for most of its updates
    with torch.no_grad():
        torch.manual_seed(0)
        loss_off, _ = off.lit.objective(batches[0], off.lit.weights(update))
        torch.manual_seed(0)
        loss_on, _ = on.lit.objective(batches[0], on.lit.weights(update))
    for i in range(args.warmup):
        for step in (off, on):
            step(batches[i % len(batches)], update)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for name, step in (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off)):
            start = time.perf_counter()
            for i in range(args.steps):
                step(batches[(r * args.steps + i) % len(batches)], update)
            times[name].append((time.perf_counter() - start) / args.steps)
    ratios = [a / b for a, b in zip(times["off"], times["on"], strict=True)]
    return {
        "overrides": " ".join(overrides),
        "torch_threads": torch.get_num_threads(),
        "batch_size": int(batches[0].inputs.shape[0]),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "off_s": statistics.median(times["off"]),
        "on_s": statistics.median(times["on"]),
        "off_over_on": statistics.median(ratios),
        "per_round_off_over_on": ratios,
        "same_loss": bool(torch.allclose(loss_off, loss_on, rtol=1e-6, atol=0.0)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=FSDD_STUDY, help="Hydra overrides, as one string")
    parser.add_argument("--rounds", type=int, default=10, help="rounds, each timing both modules")
    parser.add_argument("--steps", type=int, default=5, help="steps per module per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="training batches cycled through")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    result = {
        "meta": {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "torch": torch.__version__},
        "step": bench(shlex.split(args.config), args),
    }
    r = result["step"]
    summary = (f"step with the head off {1e3 * r['off_s']:.1f} ms, on {1e3 * r['on_s']:.1f} ms, "
               f"off / on {r['off_over_on']:.3f} (same loss: {r['same_loss']})")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    return result


if __name__ == "__main__":
    main()
