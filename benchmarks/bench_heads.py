"""What the layout of Z-Forcing's heads costs a study's step, paired in one process.

Two changes to the heads, each timed against the layout before them on the same batches:

* the backward head off where no loss reads it (``lit.bwd_weight=0``, every committed study;
  ``HasBackwardCost``): it was a product from the backward states as wide as the inputs'
  parameters, and its all-zero gradient went through that product's backward too;
* an output head wider than ``OWN_PRODUCT_HEAD_WIDTH`` (a vocabulary) in a product of its own
  instead of a slice of the product over all states, which the loss copied and whose gradient was
  copied into the shared buffer.

For a study config this builds three modules with the same weights and times their bare steps
(objective, backward, gradient-norm clip, Adam) round-robin, so the machine's load hits all alike:
``now`` (both changes), ``shared`` (the head off, the output head in the shared product) and
``before`` (the head on, the shared product). Ratios are medians of per-round ratios; the JSON
also says whether the three losses agree.

    python benchmarks/bench_heads.py --config "study=text_ablation ablation=aux" --json
    python benchmarks/bench_heads.py --config "study=mnist_ablation ablation=kla_aux" --json
"""

from __future__ import annotations

import argparse
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

from bench_update import FSDD_STUDY, STUDY_JOB, BareStep, emit  # noqa: E402

from zf_lightning.models.zforcing import model as zforcing_model  # noqa: E402
from zf_lightning.runs.pipeline import build_datamodule, compose_config, set_threads  # noqa: E402
from zf_lightning.types import HasBackwardCost  # noqa: E402

OWN_WIDTH = zforcing_model.OWN_PRODUCT_HEAD_WIDTH
SHARED = 1 << 62  # no head is this wide: every output head a slice of the shared product
VARIANTS = ("now", "shared", "before")
UPDATE = 3000  # past every ramp: the weights a study trains with for most of its updates


def bench(overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cfg = compose_config("train", [f"paths.output_dir={tempfile.mkdtemp(prefix='bench_heads_')}", *STUDY_JOB,
                                   *overrides])
    set_threads(cfg)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    steps = {name: BareStep(cfg, dm) for name in VARIANTS}
    model = steps["before"].lit.model
    if not isinstance(model, HasBackwardCost):
        raise SystemExit(f"{type(model).__name__} has no heads of Z-Forcing's to lay out")
    if model.backward_cost:
        raise SystemExit("this config counts the bwd cost (lit.bwd_weight > 0): the head is needed, nothing to time")
    model.backward_cost = True
    widths = {"now": OWN_WIDTH, "shared": SHARED, "before": SHARED}

    def run(name: str, batch: Any) -> None:
        zforcing_model.OWN_PRODUCT_HEAD_WIDTH = widths[name]
        steps[name](batch, UPDATE)

    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    losses = {}
    with torch.no_grad():
        for name in VARIANTS:
            zforcing_model.OWN_PRODUCT_HEAD_WIDTH = widths[name]
            torch.manual_seed(0)
            losses[name] = steps[name].lit.objective(batches[0], steps[name].lit.weights(UPDATE))[0]
    for i in range(args.warmup):
        for name in VARIANTS:
            run(name, batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS[r % 3:] + VARIANTS[: r % 3]:  # each variant first in turn
            start = time.perf_counter()
            for i in range(args.steps):
                run(name, batches[(r * args.steps + i) % len(batches)])
            times[name].append((time.perf_counter() - start) / args.steps)
    zforcing_model.OWN_PRODUCT_HEAD_WIDTH = OWN_WIDTH
    ratios = {
        f"{a}_over_before": [x / y for x, y in zip(times[a], times["before"], strict=True)] for a in ("now", "shared")
    }
    return {
        "overrides": " ".join(overrides),
        "torch_threads": torch.get_num_threads(),
        "batch_size": int(batches[0].inputs.shape[0]),
        "output_head_width": int(model.output_head.proj.out_features),
        "own_product_head_width": OWN_WIDTH,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        **{f"{name}_s": statistics.median(times[name]) for name in VARIANTS},
        **{key: statistics.median(values) for key, values in ratios.items()},
        **{f"per_round_{key}": values for key, values in ratios.items()},
        "same_loss": all(bool(torch.allclose(losses[n], losses["before"], rtol=1e-6, atol=0.0)) for n in VARIANTS),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=FSDD_STUDY, help="Hydra overrides, as one string")
    parser.add_argument("--rounds", type=int, default=12, help="rounds, each timing every variant")
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
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
    summary = (f"step now {1e3 * r['now_s']:.1f} ms, shared product {1e3 * r['shared_s']:.1f} ms, before "
               f"{1e3 * r['before_s']:.1f} ms; now / before {r['now_over_before']:.3f}, shared / before "
               f"{r['shared_over_before']:.3f} (same loss: {r['same_loss']})")
    emit(result, summary, args.json, args.out)
    return result


if __name__ == "__main__":
    main()
