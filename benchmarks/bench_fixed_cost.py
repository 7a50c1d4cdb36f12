"""How much of the FSDD step is fixed per-operation cost, and how much grows with the sizes.

The step and the floor (``bench_step.py``) are timed round-robin in one process at the FSDD
studies' sizes and at tiny ones (the same 30 steps; batch 1, every width 4), where nothing but
the fixed cost of each operation (Python, dispatch, autograd, the loops' per-step calls) is left.
Subtracting the tiny step from the FSDD step leaves what grows with the sizes (products, passes
over the tensors, memory); ``sized_ratio`` compares that part of the step with the floor's.

    python benchmarks/bench_fixed_cost.py --repeats 60 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_step import (  # noqa: E402
    FSDD,
    FusedFloor,
    load_average,
    make_batch,
    make_model,
    round_robin,
    train_step_fn,
    zforcing_loss,
)

TINY = dataclasses.replace(FSDD, name="tiny", emb_dim=4, rnn_dim=4, z_dim=4, mlp_dim=4, batch=1, dim=4)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    steps = {}
    for sizes in (FSDD, TINY):
        batch = make_batch(sizes, torch.device("cpu"))
        noise = torch.randn(sizes.batch, sizes.steps, sizes.z_dim, generator=torch.Generator().manual_seed(1))
        model, floor = make_model(sizes, native_loop=True), FusedFloor(sizes)
        steps[f"step_{sizes.name}"] = train_step_fn(
            model, lambda m=model, b=batch, n=noise: zforcing_loss(m(b, n), b.mask)
        )
        steps[f"floor_{sizes.name}"] = train_step_fn(floor, lambda f=floor, b=batch: f(b))
    load_before = load_average()
    times = round_robin(steps, args.repeats, args.warmup, torch.device("cpu"))
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    sized = {kind: med[f"{kind}_fsdd"] - med[f"{kind}_tiny"] for kind in ("step", "floor")}
    out: dict[str, object] = {
        "meta": {"repeats": args.repeats, "threads": 1, "torch": torch.__version__, "load_average_before": load_before,
                 "load_average_after": load_average(), "command": " ".join(sys.argv),
                 "tiny": f"B={TINY.batch} T={TINY.steps} D={TINY.dim} emb=H=z=mlp=4"},
        "median_ms": med,
        "sized_ms": sized,
        "step_over_floor": med["step_fsdd"] / med["floor_fsdd"],
        "sized_ratio": sized["step"] / sized["floor"],
        "fixed_share_of_step": med["step_tiny"] / med["step_fsdd"],
    }
    print(json.dumps(out, indent=1) if args.json else out)
    return out


if __name__ == "__main__":
    main()
