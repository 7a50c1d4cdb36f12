"""Where the FSDD training step's CPU time goes by kind of operation, against the floor's (one-off
``torch.profiler`` runs, one thread): products (GEMMs outside fused kernels), the fused LSTM layers,
copies and reorders, the C++ step loops' own time, the optimizer, and all other (mostly pointwise)
operations. Profiling adds a fixed cost to every operation, so the many small ones read high; use it
for the make-up of a gap, and ``bench_step.py`` / ``bench_versions.py`` for the ratios.

    python benchmarks/profile_groups.py --steps 20 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_step as bs  # noqa: E402

PRODUCTS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "zf_native::matmul_into"}
COPIES = {"aten::copy_", "aten::cat", "aten::clone", "aten::index_select", "aten::gather", "aten::scatter_add_"}


def group(name: str) -> str:
    if name in PRODUCTS:
        return "products"
    if "mkldnn_rnn" in name:
        return "fused_lstm"
    if name.startswith("zf_native::") and name.endswith("_loop"):
        return "cpp_loops_own"
    if name in COPIES:
        return "copies"
    if "Optimizer" in name:
        return "optimizer"
    return "pointwise_and_other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = bs.FSDD
    batch = bs.make_batch(sizes, torch.device("cpu"))
    out: dict[str, object] = {
        "meta": {
            "steps": args.steps,
            "torch": torch.__version__,
            "sizes": "fsdd",
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(sys.argv),
        }
    }
    for which in ("step", "floor"):
        if which == "floor":
            model: torch.nn.Module = bs.FusedFloor(sizes)
            update = bs.train_step_fn(model, lambda m=model: m(batch))
        else:
            model = bs.make_model(sizes)
            update = bs.train_step_fn(model, lambda m=model: bs.zforcing_loss(m(batch), batch.mask))
        for _ in range(10):
            update()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                update()
        ms: collections.Counter[str] = collections.Counter()
        for event in prof.key_averages():
            ms[group(event.key)] += event.self_cpu_time_total / args.steps / 1000
        out[which] = {
            "ms_per_step": {k: round(v, 2) for k, v in ms.most_common()},
            "total_ms": round(sum(ms.values()), 2),
        }
    print(json.dumps(out, indent=1) if args.json else out)


if __name__ == "__main__":
    main()
