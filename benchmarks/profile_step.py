"""Where a Z-Forcing training step's operations and time go, region by region, in one process.

The step (forward, backward, clip, Adam) is split into regions that each run on leaf copies of
their inputs, so each region's forward and backward can be counted and timed on its own:

* ``pre``: embedding, backward LSTM, the product from b_t, the gate pre-activations and the
  layouts the loop reads (forward and its backward);
* ``loop``: ``PlainRecurrence`` (the native or Python step loops) forward and backward;
* ``post``: from the loop's outputs to the loss: the heads, KL, aux cost, log-densities, masks;
* ``optim``: zero_grad, gradient-norm clip and the optimizer step;
* ``step``: the whole training step, as ``bench_step.py`` times it, and the ``floor`` model's.

Operations are counted as ATen calls (``TorchDispatchMode``: what each Python-level operation and
each autograd node's backward dispatches, the C++ loops' own calls included), forward and backward
apart, on a call after the first (the optimizers' state exists). Times are medians of
``--repeats`` rounds, the regions run round-robin so load hits all alike; on a loaded machine read
the ratios (``share``: a region's median over the step's).

    python benchmarks/profile_step.py --repeats 200 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fixed_cost import TINY  # noqa: E402
from benchmarks.bench_step import FSDD, FusedFloor, load_average, make_batch, make_model, zforcing_loss  # noqa: E402
from zf_lightning.models.products import linear, linear_feature_major  # noqa: E402
from zf_lightning.models.zforcing.model import ZForcing  # noqa: E402
from zf_lightning.models.zforcing.recurrence import plain_recurrence  # noqa: E402


class CountOps(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_(x.requires_grad or x.is_floating_point())


def regions(model: ZForcing, batch, noise: Tensor) -> dict[str, tuple[Callable[[], Tensor], Callable[[Tensor], None]]]:
    """Each region as (forward returning something to backward from, backward)."""
    first = model.posterior.first

    with torch.no_grad():
        states, z, q, b, bwd_params = model._posterior_pass(batch, noise, with_backward_head=True)
    post_in = [leaf(t) for t in (states, z, q, b, bwd_params)]

    def post_fwd() -> Tensor:
        return zforcing_loss(model._terms(batch, *post_in), batch.mask)

    # the loop's own inputs, as _loop_plain builds them
    emb = model.embedding(batch.inputs).detach()
    B, T, _ = emb.shape
    with torch.no_grad():
        from_b = linear(model.backward_states(batch), first.weight[:, model.rnn_dim :], first.bias)
    cell, second = model.cell, model.posterior.second
    with torch.no_grad():
        bias = cell.bias + cell.weight_iz @ model.z_map.bias
        gates_x = linear_feature_major(emb.transpose(0, 1).reshape(T * B, -1), cell.weight_ix, bias)
        pre = torch.cat([gates_x.view(-1, T, B), from_b.permute(2, 1, 0)], 0)
    loop_in = [
        leaf(pre),
        noise.permute(1, 2, 0).contiguous(),
        leaf(model._weight_from_h()),
        leaf(second.weight),
        leaf(second.bias),
        leaf(cell.weight_iz @ model.z_map.weight),
    ]
    act = model.posterior.act

    def loop_fwd() -> Tensor:
        hs, zz, qq = plain_recurrence(
            *loop_in, model._ops, act.slope, act.bound, model.posterior.clamp, model._native(loop_in[0])
        )
        return hs, zz, qq

    loop_grads = None

    def loop_bwd(out) -> None:  # type: ignore[no-untyped-def]
        nonlocal loop_grads
        if loop_grads is None:
            loop_grads = [torch.randn_like(o) for o in out]
        torch.autograd.backward(out, loop_grads)

    def pre_full() -> Tensor:
        # the whole forward up to the loop's inputs, with the loop replaced by its leaf outputs:
        # the pre-loop region's forward and backward
        emb = model.embedding(batch.inputs)
        b = model.backward_states(batch)
        weights = [model.backward_head.proj.weight, first.weight[:, model.rnn_dim :]]
        biases = [model.backward_head.proj.bias, first.bias]
        from_b = linear(b, torch.cat(weights), torch.cat(biases))
        bwdp, post_from_b = from_b.split([from_b.shape[-1] - first.out_features, first.out_features], dim=-1)
        w_iz = cell.weight_iz
        bias = cell.bias + w_iz @ model.z_map.bias
        gx = linear_feature_major(emb.transpose(0, 1).reshape(T * B, -1), cell.weight_ix, bias)
        pre = torch.cat([gx.view(-1, T, B), post_from_b.permute(2, 1, 0)], 0)
        n = noise.permute(1, 2, 0).contiguous()
        w = [model._weight_from_h(), w_iz @ model.z_map.weight]
        return [pre, bwdp, *w, n]

    pre_grads = None

    def pre_bwd(out) -> None:  # type: ignore[no-untyped-def]
        nonlocal pre_grads
        outs = [o for o in out if o.requires_grad]
        if pre_grads is None:
            pre_grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, pre_grads)

    return {
        "pre": (pre_full, pre_bwd),
        "loop": (loop_fwd, loop_bwd),
        "post": (post_fwd, lambda loss: loss.backward()),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="bench_fixed_cost.py's tiny sizes (30 steps, batch 1, widths 4): the fixed costs alone",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = TINY if args.tiny else FSDD
    batch = make_batch(sizes, torch.device("cpu"))
    noise = torch.randn(sizes.batch, sizes.steps, sizes.z_dim, generator=torch.Generator().manual_seed(1))
    model = make_model(sizes, native_loop=True)
    floor = FusedFloor(sizes)
    params = list(model.parameters())

    def adam(ps: list[nn.Parameter], **kw: object) -> torch.optim.Optimizer:
        return torch.optim.Adam(ps, lr=1e-3, eps=1e-5, **kw)  # type: ignore[arg-type]

    opts = {"adam": adam(params, foreach=False), "adam_foreach": adam(params, foreach=True)}
    fparams = list(floor.parameters())
    fopt = adam(fparams, foreach=False)

    def optim_fn(opt: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad(set_to_none=False)
            nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()

        return run

    for p in params:
        p.grad = torch.zeros_like(p)

    def step() -> None:
        opts["adam"].zero_grad(set_to_none=True)
        zforcing_loss(model(batch, noise), batch.mask).backward()
        nn.utils.clip_grad_norm_(params, 100.0)
        opts["adam"].step()

    def floor_step() -> None:
        fopt.zero_grad(set_to_none=True)
        floor(batch).backward()
        nn.utils.clip_grad_norm_(fparams, 100.0)
        fopt.step()

    parts = regions(model, batch, noise)
    fns: dict[str, Callable[[], None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, (fwd, bwd) in parts.items():
        fns[f"{name}_fwd"] = fwd  # type: ignore[assignment]
        fns[f"{name}_fwdbwd"] = lambda fwd=fwd, bwd=bwd: bwd(fwd())
        bwd(fwd())  # counted as run in a training loop, not on a first call
        with CountOps() as cf:
            out = fwd()
        with CountOps() as cb:
            bwd(out)
        counts[name] = {"forward": sum(cf.ops.values()), "backward": sum(cb.ops.values())}
        counts[name]["top_forward"] = dict(cf.ops.most_common(12))  # type: ignore[assignment]
        counts[name]["top_backward"] = dict(cb.ops.most_common(12))  # type: ignore[assignment]
    for name, opt in opts.items():
        fns[name] = optim_fn(opt)
        fns[name]()  # the optimizer's state exists from the second call on
        with CountOps() as c:
            fns[name]()
        counts[name] = {"total": sum(c.ops.values())}
    fns["step"] = step
    fns["floor"] = floor_step
    for name, fn in (("step", step), ("floor", floor_step)):
        fn()
        with CountOps() as c:
            fn()
        counts[name] = {"total": sum(c.ops.values())}
    load_before = load_average()
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    share = {k: statistics.median(a / b for a, b in zip(v, times["step"], strict=True)) for k, v in times.items()}
    out: dict[str, object] = {
        "meta": {
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "command": " ".join(sys.argv),
            "sizes": sizes.name,
        },
        "median_ms": {k: round(1e3 * v, 3) for k, v in med.items()},
        "paired_share_of_step": {k: round(v, 3) for k, v in share.items()},
        "aten_ops": counts,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k in fns:
            print(f"{k:>14}: {1e3 * med[k]:8.3f} ms  share {share[k]:.3f}")
        for k, v in counts.items():
            print(k, {kk: vv for kk, vv in v.items() if not kk.startswith("top")})
    return out


if __name__ == "__main__":
    main()
