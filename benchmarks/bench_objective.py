"""What the LightningModule adds to a training step around the model: ATen operations and time.

Three steps on one FSDD-sized batch, the same weights, round-robin in one process (one thread):

* ``model``: ``bench_step.py``'s step, the terms summed straight into the loss;
* ``objective``: the module's ``objective`` (per-sequence masked sums of every term, the weighted
  loss), then backward, clip and Adam;
* ``training``: ``objective`` plus what ``training_step`` adds on an update whose metrics the
  loggers do not write (the finiteness check and the epoch sums), as a study runs 9 updates in 10.

The module is built from the FSDD study's config (``study=common/fsdd``), its data module's
spec replaced by the FSDD shape so no data is read.

    python benchmarks/bench_objective.py --repeats 60 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_step import FSDD, load_average, make_batch, paired_ratio, round_robin, zforcing_loss  # noqa: E402
from benchmarks.profile_step import CountOps  # noqa: E402
from zf_lightning.lit.module import SequenceLitModule  # noqa: E402
from zf_lightning.runs.pipeline import compose_config  # noqa: E402
from zf_lightning.types import DataSpec  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = compose_config("train", ["study=common/fsdd", "paths.output_dir=unused"])
    spec = DataSpec("real", FSDD.dim, "utterance", FSDD.dim)
    model = instantiate(cfg.model, spec=spec, _convert_="object")
    lit: SequenceLitModule = instantiate(cfg.lit, model=model, spec=spec, optimizer=instantiate(cfg.optim.optimizer),
                                         scheduler=None, _convert_="object")
    lit.train()
    batch = make_batch(FSDD, torch.device("cpu"))
    params = [p for p in lit.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optim.optimizer)(params)
    clip = float(cfg.trainer.gradient_clip_val)
    weights = lit.weights(10**9)

    def update(loss_fn: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
        return run

    def training_loss() -> Tensor:
        loss, sums = lit.objective(batch, weights)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")
        lit._accumulate("train", batch, sums)
        return loss

    steps = {
        "model": update(lambda: zforcing_loss(model(batch), batch.mask)),
        "objective": update(lambda: lit.objective(batch, weights)[0]),
        "training": update(training_loss),
    }
    ops = {}
    for name, fn in steps.items():
        with CountOps() as count:
            fn()
        ops[name] = sum(count.ops.values())
    load_before = load_average()
    times = round_robin(steps, args.repeats, args.warmup, torch.device("cpu"))
    out: dict[str, object] = {
        "meta": {"repeats": args.repeats, "threads": 1, "torch": torch.__version__, "load_average_before": load_before,
                 "load_average_after": load_average(), "command": " ".join(sys.argv),
                 "optimizer": str(cfg.optim.optimizer._target_)},
        "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "aten_ops": ops,
        "paired_objective_over_model": paired_ratio(times["objective"], times["model"]),
        "paired_training_over_model": paired_ratio(times["training"], times["model"]),
    }
    print(json.dumps(out, indent=1) if args.json else out)
    return out


if __name__ == "__main__":
    main()
