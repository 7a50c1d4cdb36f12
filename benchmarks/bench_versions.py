"""The training step of this tree against an earlier commit's, and the floor, in one process.

Timings of two trees taken in two processes on a shared machine differ by whatever the load did
between them; this times both steps round-robin in one process (with ``bench_step.py``'s floor),
so the per-round (paired) ratios compare. The baseline is ``git archive <rev> zf_lightning``
unpacked into a temporary directory as the package ``zf_lightning_baseline`` (its imports
rewritten, its C++ extension built under its own op namespace); both models get the same
weights, batch and noise, so the JSON also says whether the two trees' losses and gradients are
bit for bit the same.

    python benchmarks/bench_versions.py --baseline c1ebed4 --repeats 40 --json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_versions.py --baseline c1ebed4 --sizes timit --repeats 8 \
        --warmup 1 --json
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_step import (  # noqa: E402
    FSDD,
    TIMIT,
    FusedFloor,
    load_average,
    make_batch,
    make_model,
    paired_ratio,
    round_robin,
    train_step_fn,
    zforcing_loss,
)

BASELINE = "zf_lightning_baseline"


def import_baseline(rev: str, into: Path) -> object:
    """The package at ``rev`` importable as ``zf_lightning_baseline`` (its model module returned)."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "zf_lightning"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    pkg = into / BASELINE
    (into / "zf_lightning").rename(pkg)
    for path in [*pkg.rglob("*.py"), *pkg.rglob("*.cpp")]:
        # its own package name, and its own op namespace for its C++ extension (two libraries
        # cannot register the same one)
        path.write_text(
            path.read_text()
            .replace("zf_lightning.", f"{BASELINE}.")
            .replace("from zf_lightning import", f"from {BASELINE} import")
            .replace("zf_native", "zf_native_baseline")
        )
    sys.path.insert(0, str(into))
    import importlib

    return importlib.import_module(f"{BASELINE}.models.zforcing.model")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="c1ebed4", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--adam",
        action="store_true",
        help="also time this tree and the floor with Adam(foreach=True) and Adam(fused=True)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--sizes",
        choices=["fsdd", "timit"],
        default="fsdd",
        help="bench_step.py's sizes: the FSDD studies' (one thread) or the paper's TIMIT ones",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the sizes' own)")
    args = parser.parse_args(argv)
    sizes = {"fsdd": FSDD, "timit": TIMIT}[args.sizes]
    threads = args.threads or sizes.threads
    torch.set_num_threads(threads)
    batch = make_batch(sizes, torch.device("cpu"))
    noise = torch.randn(sizes.batch, sizes.steps, sizes.z_dim, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        old_module = import_baseline(args.baseline, Path(tmp))
        torch.manual_seed(0)
        new = make_model(sizes, native_loop=True)
        old_heads = sys.modules[f"{BASELINE}.models.heads"]
        spec = new.spec
        old = old_module.ZForcing(
            spec,
            old_heads.GaussianHead,
            emb_dim=sizes.emb_dim,
            rnn_dim=sizes.rnn_dim,  # type: ignore[attr-defined]
            z_dim=sizes.z_dim,
            mlp_dim=sizes.mlp_dim,
            native_loop=True,
        )
        old.load_state_dict(new.state_dict())
        floor = FusedFloor(sizes)

        def loss(model: nn.Module) -> Tensor:
            return zforcing_loss(model(batch, noise), batch.mask)

        # the same weights, batch and noise: are loss and gradients bit for bit the same?
        grads = []
        for model in (old, new):
            value = loss(model)
            grads.append((value.detach(), torch.autograd.grad(value, list(model.parameters()))))
        same_loss = bool(torch.equal(grads[0][0], grads[1][0]))
        same_grads = all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))
        max_grad_diff = max(float((a - b).abs().max()) for a, b in zip(grads[0][1], grads[1][1], strict=True))

        adam_check = {}
        if args.adam:  # parameters after three updates from the same start: the for-loop Adam against the others
            after = {}
            for kind in ("for_loop", "foreach", "fused"):
                model = copy.deepcopy(new)
                update = train_step_fn(model, lambda m=model: loss(m), **({} if kind == "for_loop" else {kind: True}))
                for _ in range(3):
                    update()
                after[kind] = [p.detach().clone() for p in model.parameters()]
            for kind in ("foreach", "fused"):
                pairs = list(zip(after["for_loop"], after[kind], strict=True))
                adam_check[f"adam_{kind}_same_params"] = all(torch.equal(a, b) for a, b in pairs)
                adam_check[f"adam_{kind}_max_param_diff"] = max(float((a - b).abs().max()) for a, b in pairs)

        steps: dict[str, Callable[[], None]] = {
            "baseline": train_step_fn(old, lambda: loss(old)),
            "new": train_step_fn(new, lambda: loss(new)),
        }
        if args.adam:
            for kind in ("foreach", "fused"):
                model = copy.deepcopy(new)
                steps[f"new_{kind}"] = train_step_fn(model, lambda m=model: loss(m), **{kind: True})
        steps["floor"] = train_step_fn(floor, lambda: floor(batch))
        if args.adam:
            for kind in ("foreach", "fused"):
                model = copy.deepcopy(floor)
                steps[f"floor_{kind}"] = train_step_fn(model, lambda m=model: m(batch), **{kind: True})
        load_before = load_average()
        times = round_robin(steps, args.repeats, args.warmup, torch.device("cpu"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, object] = {
        "meta": {
            "baseline": args.baseline,
            "repeats": args.repeats,
            "threads": threads,
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "command": " ".join(sys.argv),
            "sizes": args.sizes,
        },
        "median_ms": {name: 1e3 * t for name, t in medians.items()},
        "same_loss": same_loss,
        "same_grads": same_grads,
        "max_grad_abs_diff": max_grad_diff,
        **adam_check,
    }
    for name in times:
        if not name.startswith("floor"):
            out[f"paired_{name}_over_floor"] = paired_ratio(times[name], times["floor"])
        if name.startswith("new"):
            out[f"paired_{name}_over_baseline"] = paired_ratio(times[name], times["baseline"])
    for kind in ("foreach", "fused"):
        if f"new_{kind}" in times:  # both with the same optimizer
            out[f"paired_new_{kind}_over_floor_{kind}"] = paired_ratio(times[f"new_{kind}"], times[f"floor_{kind}"])
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for key, value in out.items():
            print(key, value)
    return out


if __name__ == "__main__":
    main()
