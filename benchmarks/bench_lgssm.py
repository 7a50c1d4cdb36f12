"""LGSSM likelihood benchmark: how close do Z-Forcing's bounds get to the exact likelihood?

Trains Z-Forcing (by default ``ablation=plain`` and ``ablation=aux``) on ``data=lgssm``
through the same pipeline as train.py, in-process, then scores the best checkpoint with
eval.py's ``evaluate``: the test loop's ELBO, IWAE-K for several K, and the LGSSM's exact
log-likelihood from the Kalman filter. All numbers are nats per sequence, as
log-likelihoods (higher is better); ``gap`` is exact - IWAE_Kmax, paired per sequence,
with its standard error. The goal: IWAE within 1 nat per sequence of the exact NLL.

    python benchmarks/bench_lgssm.py                   # ~2 min per model on 1 shared CPU thread
    python benchmarks/bench_lgssm.py --steps 3000 --iwae 1 10 100 1000 --json out.json
    python benchmarks/bench_lgssm.py --ablations plain --extra data.seq_len=10 model.z_dim=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from zf_lightning.runs.evaluate import evaluate, iwae_sample_counts  # noqa: E402
from zf_lightning.runs.pipeline import compose_config, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ablations", nargs="+", default=["plain", "aux"], help="ablation options to train")
    p.add_argument("--steps", type=int, default=600, help="optimizer updates per model (the training budget)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--emb-dim", type=int, default=16)
    p.add_argument("--rnn-dim", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=4)
    p.add_argument("--mlp-dim", type=int, default=32)
    p.add_argument("--aux-weight", type=float, default=None, help="constant aux weight (default: the config's)")
    p.add_argument("--iwae", type=int, nargs="+", default=[1, 10, 100], help="sample counts K")
    p.add_argument("--chunk-size", type=int, default=100, help="posterior paths per sequence per forward pass")
    p.add_argument("--val-every", type=int, default=100, help="validate (and checkpoint) every N updates")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU is often shared)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--extra", nargs="*", default=[], help="more train.py overrides, e.g. data.seq_len=10")
    return p.parse_args(argv)


def train_overrides(args: argparse.Namespace, ablation: str, out: Path) -> list[str]:
    overrides = [
        f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}", "data=lgssm", "model=zforcing",
        f"ablation={ablation}", "logger=csv", "samples.num=0", f"seed={args.seed}",
        f"data.batch_size={args.batch_size}", "data.eval_batch_size=100",
        f"model.emb_dim={args.emb_dim}", f"model.rnn_dim={args.rnn_dim}", f"model.z_dim={args.z_dim}",
        f"model.mlp_dim={args.mlp_dim}", f"optim.optimizer.lr={args.lr}",
        f"trainer.accelerator={args.accelerator}", f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
        f"trainer.val_check_interval={args.val_every}", "trainer.check_val_every_n_epoch=null",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50",
    ]
    if args.aux_weight is not None:
        overrides += [f"schedule.aux_start={args.aux_weight}", f"schedule.aux_end={args.aux_weight}"]
    return overrides + list(args.extra)


def run_one(args: argparse.Namespace, ablation: str, root: Path, ks: list[int]) -> dict[str, Any]:
    """Train one ablation, evaluate its best checkpoint; the numbers the report prints."""
    started = time.perf_counter()
    trained = train(compose_config("train", train_overrides(args, ablation, root / ablation / "train")))
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(compose_config("eval", [
        f"ckpt_path={trained['test/checkpoint']}", f"paths.output_dir={root / ablation / 'eval'}",
        f"seed={args.seed}", f"accelerator={args.accelerator}", "samples.num=0",
        f"eval.iwae_samples=[{','.join(map(str, ks))}]", f"eval.chunk_size={args.chunk_size}",
    ]))
    row: dict[str, Any] = {
        "ablation": ablation, "steps": args.steps, "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - started, 1),
        "elbo": metrics["test/elbo"], "elbo_se": metrics["test/elbo_se"], "kl": metrics["test/kl"],
        "exact": -metrics["test/exact_nll"],
    }
    for k in ks:
        row[f"iwae_{k}"] = metrics[f"test/iwae_{k}"]
    row["gap"] = metrics[f"test/iwae_{ks[-1]}_gap"]
    row["gap_se"] = metrics[f"test/iwae_{ks[-1]}_gap_se"]
    row["elbo_gap"] = row["exact"] - row["elbo"]
    return row


def table(rows: list[dict[str, Any]], ks: list[int]) -> str:
    """Markdown table, nats per test sequence (log-likelihoods: higher is better)."""
    head = ["ablation", "updates", "KL", "ELBO", *(f"IWAE-{k}" for k in ks), "exact log p(x)",
            f"exact - IWAE-{ks[-1]}", "exact - ELBO", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["ablation"], str(r["steps"]), f"{r['kl']:.2f}", f"{r['elbo']:.2f}",
                 *(f"{r[f'iwae_{k}']:.2f}" for k in ks), f"{r['exact']:.2f}",
                 f"{r['gap']:.2f} ± {r['gap_se']:.2f}", f"{r['elbo_gap']:.2f}", f"{r['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    ks = iwae_sample_counts(args.iwae)
    with tempfile.TemporaryDirectory(prefix="bench_lgssm_") as tmp:
        root = args.out or Path(tmp)
        rows = [run_one(args, ablation, root, ks) for ablation in args.ablations]
    print(f"\nLGSSM test split, nats per sequence (torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.steps} updates, batch {args.batch_size}, lr {args.lr}, rnn {args.rnn_dim}, z {args.z_dim})")
    print(table(rows, ks))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
