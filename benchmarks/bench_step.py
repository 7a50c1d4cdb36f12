"""Side-by-side training-step timings for Z-Forcing, in one process.

Three training steps (forward, backward, gradient-norm clip, Adam), each the median of
``--repeats`` runs:

* ``reference``: ``reference_forward``, the readable step-by-step implementation (every MLP
  and the output layer inside the Python loop, as in the authors' code);
* ``fast``: ``ZForcing.forward`` with its step loops in Python (``native_loop=False``);
* ``native``: the same with the step loops in C++ (``native_loop=True``, the extension built
  before timing; ``build_s`` is that build, cold when the extension cache is empty);
* ``floor``: a deterministic model of the same sizes built from one fused backward
  ``nn.LSTM`` and one fused forward ``nn.LSTM`` with the same output layer on each (as the
  model's output and backward heads): what a latent-free model costs, so ``fast / floor``
  says what the latents cost on top of it;
* ``floor_onednn`` (``--onednn-floor``): the same floor with its embedding and heads' products
  through oneDNN, as the native step forms its large products (``zf_lightning.models.products``),
  so that ``native / floor_onednn`` compares the two with the same product kernels.

The variants are timed round-robin (reference, fast, native, floor, reference, ...), so load from other
processes on a shared machine spreads over all of them instead of biasing one; the JSON also
gives per-round (paired) ratios and the load averages before and after. The OpenMP runtime is
left as training gets it; on a CPU shared with other busy jobs, ``OMP_WAIT_POLICY=PASSIVE``
keeps waiting threads from spinning on the cores their partners need (there the default
multiplied step times by 2-4, most for the variant with the most small operations), while on
a quiet machine spinning is faster. Also reported:
evaluation throughput of the importance-sampled bound (``zf_lightning.evaluation.estimators.log_weights``
with K samples), in sequences per second.

    python benchmarks/bench_step.py                      # TIMIT and MNIST sizes, 2 threads
    python benchmarks/bench_step.py --sizes timit --repeats 30 --json
    python benchmarks/bench_step.py --sizes fsdd --threads 1 --json   # the FSDD studies' sizes
    python benchmarks/bench_step.py --device cuda --json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zf_lightning.evaluation.estimators import log_weights  # noqa: E402
from zf_lightning.models.heads import BernoulliHead, GaussianHead, OutputHead  # noqa: E402
from zf_lightning.models.products import linear  # noqa: E402
from zf_lightning.models.zforcing.model import ZForcing  # noqa: E402
from zf_lightning.models.zforcing.native import native_loops  # noqa: E402
from zf_lightning.models.zforcing.reference import reference_forward  # noqa: E402
from zf_lightning.runs.pipeline import compose_config  # noqa: E402
from zf_lightning.types import DataSpec, SequenceBatch, StepTerms  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """One benchmark setting: model sizes, batch shape and data kind."""

    name: str
    emb_dim: int
    rnn_dim: int
    z_dim: int
    mlp_dim: int
    batch: int
    steps: int
    dim: int
    kind: str  # "real" (Gaussian head) or "binary" (Bernoulli head)
    threads: int  # torch intra-op threads when --threads is not given: as runs at these sizes use


TIMIT = Sizes(
    "timit", emb_dim=512, rnn_dim=1024, z_dim=256, mlp_dim=512, batch=32, steps=40, dim=200, kind="real", threads=2
)
# the committed FSDD studies (study/common/fsdd.yaml): zf_lightning/conf/model/zforcing.yaml's CPU sizes, batch 32,
# ~30 frames of 200 samples at 8 kHz, one thread per run
FSDD = Sizes("fsdd", emb_dim=64, rnn_dim=128, z_dim=32, mlp_dim=64, batch=32, steps=30, dim=200, kind="real", threads=1)


def mnist_sizes() -> Sizes:
    """The repo's default MNIST run: model sizes and data shape from the composed default config."""
    cfg = compose_config("train", ["paths.output_dir=unused"])
    model, data = cfg.model, cfg.data
    side = data["downsample"] or 28
    per_step = data["pixels_per_step"]
    return Sizes(
        "mnist",
        emb_dim=model["emb_dim"],
        rnn_dim=model["rnn_dim"],
        z_dim=model["z_dim"],
        mlp_dim=model["mlp_dim"],
        batch=data["batch_size"],
        steps=side * side // per_step,
        dim=per_step,
        kind="binary",
        threads=2,
    )


def make_batch(sizes: Sizes, device: torch.device, seed: int = 0) -> SequenceBatch:
    """Full-length synthetic batch: Gaussian frames or Bernoulli(1/2) pixels."""
    g = torch.Generator().manual_seed(seed)
    shape = (sizes.batch, sizes.steps, sizes.dim)
    if sizes.kind == "real":
        x, y = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    else:
        x, y = (torch.rand(shape, generator=g) > 0.5).float(), (torch.rand(shape, generator=g) > 0.5).float()
    return SequenceBatch(x, y, torch.ones(sizes.batch, sizes.steps)).to(device)


def head_class(sizes: Sizes) -> type[OutputHead]:
    return GaussianHead if sizes.kind == "real" else BernoulliHead


def make_model(sizes: Sizes, **options: object) -> ZForcing:
    spec = DataSpec(sizes.kind, sizes.dim, "sequence", sizes.dim)  # type: ignore[arg-type]
    return ZForcing(
        spec,
        head_class(sizes),
        emb_dim=sizes.emb_dim,
        rnn_dim=sizes.rnn_dim,
        z_dim=sizes.z_dim,
        mlp_dim=sizes.mlp_dim,
        **options,  # type: ignore[arg-type]
    )


class FusedFloor(nn.Module):
    """Deterministic lower bound: embedding, a fused backward and a fused forward LSTM, a head on each."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.embedding = nn.Linear(sizes.dim, sizes.emb_dim)
        self.backward_rnn = nn.LSTM(sizes.emb_dim, sizes.rnn_dim, batch_first=True)
        self.forward_rnn = nn.LSTM(sizes.emb_dim, sizes.rnn_dim, batch_first=True)
        self.output_head = head_class(sizes)(sizes.rnn_dim, sizes.dim)
        self.backward_head = head_class(sizes)(sizes.rnn_dim, sizes.dim)

    def forward(self, batch: SequenceBatch) -> Tensor:
        b, _ = self.backward_rnn(self.embedding(batch.targets).flip(1))
        h, _ = self.forward_rnn(self.embedding(batch.inputs))
        nll = self.output_head.nll(self.output_head(h), batch.targets)
        bwd = self.backward_head.nll(self.backward_head(b.flip(1)), batch.inputs)
        return ((nll + bwd) * batch.mask).sum(1).mean()


class OnednnFloor(FusedFloor):
    """``FusedFloor`` with its embedding and heads' products by ``products.linear`` (oneDNN for large
    float32 products, as the Z-Forcing step forms its own) instead of ``nn.Linear`` (MKL): the floor
    as fast as the same product kernels make it, so that ``native / floor_onednn`` does not count the
    step's faster products against a floor that could use them too."""

    def forward(self, batch: SequenceBatch) -> Tensor:
        def lin(layer: nn.Linear, x: Tensor) -> Tensor:
            return linear(x, layer.weight, layer.bias)

        b, _ = self.backward_rnn(lin(self.embedding, batch.targets).flip(1))
        h, _ = self.forward_rnn(lin(self.embedding, batch.inputs))
        nll = self.output_head.nll(lin(self.output_head.proj, h), batch.targets)
        bwd = self.backward_head.nll(lin(self.backward_head.proj, b.flip(1)), batch.inputs)
        return ((nll + bwd) * batch.mask).sum(1).mean()


def zforcing_loss(terms: StepTerms, mask: Tensor) -> Tensor:
    """Mean over sequences of sum_t mask (nll + kl + aux + bwd): every weight 1, every path trained."""
    return ((terms.nll + terms.kl + terms.aux + terms.bwd) * mask).sum(1).mean()


def train_step_fn(model: nn.Module, loss_fn: Callable[[], Tensor], **adam: object) -> Callable[[], None]:
    """One update as training does it (optim=adam, trainer=default): zero grads, forward, backward,
    clip the gradient norm at 100, Adam step (lr 1e-3, eps 1e-5; ``adam``: e.g. ``fused=True``)."""
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, eps=1e-5, **adam)  # type: ignore[arg-type]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        nn.utils.clip_grad_norm_(params, 100.0)
        optimizer.step()

    return step


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def round_robin(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times, calls interleaved so that load drift
    hits all alike (round r of every function ran back to back)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r]: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def bench_size(sizes: Sizes, args: argparse.Namespace, device: torch.device) -> dict[str, float | int | str]:
    threads = sizes.threads if args.threads is None else args.threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = make_batch(sizes, device)
    noise = torch.randn(sizes.batch, sizes.steps, sizes.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    base = make_model(sizes, native_loop=False).to(device)
    ref_model, fast_model = copy.deepcopy(base), copy.deepcopy(base)
    floor = FusedFloor(sizes).to(device)
    steps: dict[str, Callable[[], None]] = {
        "reference": train_step_fn(
            ref_model, lambda: zforcing_loss(reference_forward(ref_model, batch, noise), batch.mask)
        ),
        "fast": train_step_fn(fast_model, lambda: zforcing_loss(fast_model(batch, noise), batch.mask)),
    }
    build_s = None
    if not args.no_native and device.type == "cpu":
        start = time.perf_counter()
        if native_loops() is None:
            raise SystemExit("the native loop did not build (see the log line above); --no-native skips it")
        build_s = time.perf_counter() - start  # building, or loading the cached build
        native_model = make_model(sizes, native_loop=True).to(device)
        native_model.load_state_dict(base.state_dict())
        steps["native"] = train_step_fn(native_model, lambda: zforcing_loss(native_model(batch, noise), batch.mask))
    steps["floor"] = train_step_fn(floor, lambda: floor(batch))
    if args.onednn_floor and "native" in steps:
        floor_onednn = OnednnFloor(sizes).to(device)
        floor_onednn.load_state_dict(floor.state_dict())
        steps["floor_onednn"] = train_step_fn(floor_onednn, lambda: floor_onednn(batch))
    compile_s = None
    if args.compile_step:
        compiled = make_model(sizes, compile_step=True).to(device)
        compiled.load_state_dict(base.state_dict())
        steps["compiled"] = train_step_fn(compiled, lambda: zforcing_loss(compiled(batch, noise), batch.mask))
        compile_s = timed(steps["compiled"], device)  # the first step compiles (or loads the compile cache)
    times = round_robin(steps, args.repeats, args.warmup, device)
    medians = {name: statistics.median(t) for name, t in times.items()}

    out: dict[str, float | int | str] = {f"{name}_s": t for name, t in medians.items()}
    out["reference_over_fast"] = medians["reference"] / medians["fast"]
    out["fast_over_floor"] = medians["fast"] / medians["floor"]
    out["reference_over_floor"] = medians["reference"] / medians["floor"]
    out["paired_reference_over_fast"] = paired_ratio(times["reference"], times["fast"])
    out["paired_fast_over_floor"] = paired_ratio(times["fast"], times["floor"])
    if "native" in times:
        out["build_s"] = build_s  # type: ignore[assignment]
        out["native_over_floor"] = medians["native"] / medians["floor"]
        out["reference_over_native"] = medians["reference"] / medians["native"]
        out["paired_native_over_floor"] = paired_ratio(times["native"], times["floor"])
        out["paired_native_over_fast"] = paired_ratio(times["native"], times["fast"])
        out["paired_reference_over_native"] = paired_ratio(times["reference"], times["native"])
    if "floor_onednn" in times:
        out["paired_native_over_floor_onednn"] = paired_ratio(times["native"], times["floor_onednn"])
        out["paired_floor_onednn_over_floor"] = paired_ratio(times["floor_onednn"], times["floor"])
    if compile_s is not None:
        out["compile_s"] = compile_s
        out["compiled_over_floor"] = medians["compiled"] / medians["floor"]
        out["paired_compiled_over_floor"] = paired_ratio(times["compiled"], times["floor"])
        out["paired_compiled_over_fast"] = paired_ratio(times["compiled"], times["fast"])

    # evaluation: K-sample importance-sampled bound, no gradients
    k = args.eval_samples
    eval_batch = make_batch(sizes, device, seed=2)
    evals = {"eval": fast_model} | ({"eval_native": native_model} if "native" in times else {})
    eval_times = round_robin(
        {name: (lambda m=m: log_weights(m, eval_batch, k, chunk_size=args.eval_chunk)) for name, m in evals.items()},
        max(3, args.repeats // 3),
        1,
        device,
    )
    out["threads"] = threads
    out["eval_samples"] = k
    for name, t in eval_times.items():
        out[f"{name}_s"] = statistics.median(t)
        out[f"{name}_seq_per_s"] = sizes.batch / statistics.median(t)
    out["sizes"] = (
        f"B={sizes.batch} T={sizes.steps} D={sizes.dim} ({sizes.kind}) emb={sizes.emb_dim} "
        f"H={sizes.rnn_dim} z={sizes.z_dim} mlp={sizes.mlp_dim}"
    )
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} logical CPUs)"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other jobs on a shared machine show up here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (CPU; default: fsdd 1, timit and mnist 2)"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", default="timit,mnist", help="comma-separated: timit, mnist, fsdd")
    parser.add_argument("--eval-samples", type=int, default=10, help="K of the importance-sampled bound")
    parser.add_argument("--eval-chunk", type=int, default=None, help="samples per forward pass in evaluation")
    parser.add_argument("--compile-step", action="store_true", help="also time the optional compiled step")
    parser.add_argument("--no-native", action="store_true", help="do not time the C++ step loops")
    parser.add_argument(
        "--onednn-floor",
        action="store_true",
        help="also time the floor with its products through oneDNN, as the native step's (OnednnFloor)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but torch.cuda.is_available() is False")
        # full fp32 everywhere: cuDNN (the floor's LSTM) would otherwise use TF32, matmuls not
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    table = {"timit": TIMIT, "mnist": mnist_sizes(), "fsdd": FSDD}
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(table)}")

    result: dict[str, object] = {
        "meta": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "threads": args.threads,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_before": load_average(),
            "command": " ".join(sys.argv),
        }
    }
    for name in names:
        result[name] = bench_size(table[name], args, device)
        if not args.json:
            r = result[name]
            print(f"[{name}] {r['sizes']}")
            for key in ("reference", "fast", "native", "floor", "compiled"):
                if f"{key}_s" in r:
                    print(f"  {key:>9}: {1e3 * r[f'{key}_s']:9.1f} ms/step")
            print(
                f"  reference / fast  = {r['reference_over_fast']:.2f}x   ("
                f"paired per round {r['paired_reference_over_fast']:.2f}x)"
            )
            print(
                f"  fast / floor      = {r['fast_over_floor']:.2f}x   ("
                f"paired per round {r['paired_fast_over_floor']:.2f}x)"
            )
            if "native_over_floor" in r:
                print(
                    f"  native / floor    = {r['native_over_floor']:.2f}x   ("
                    f"paired per round {r['paired_native_over_floor']:.2f}x)"
                )
            print(f"  reference / floor = {r['reference_over_floor']:.2f}x")
            for name in ("eval", "eval_native"):
                if f"{name}_s" in r:
                    print(f"  {name} (IWAE K={r['eval_samples']}): {r[f'{name}_seq_per_s']:.1f} sequences/s")
    result["meta"]["load_average_after"] = load_average()  # type: ignore[index]
    if args.json:
        print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
