"""Mixed precision (issue 13, item 7): under bf16 autocast on the CPU (what
``trainer.precision=bf16-mixed`` runs) every model's forward and backward pass works, the
hand-written recurrences keep their state in fp32, the terms stay within 2 % of fp32, and a
short bf16-mixed run lowers the loss."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from tests.conftest import TINY
from tests.helpers import HEADS, make_batch, make_model
from tests.models.test_baselines import MODELS, build
from zf_lightning.models import LRU, Transformer
from zf_lightning.runs.pipeline import train
from zf_lightning.types import DataSpec, LatentVariableModel, SequenceBatch, StepTerms

TERMS = ("nll", "kl", "aux", "bwd")
# bf16 keeps 8 significant bits (relative rounding 2^-9 per value); summed terms of these tiny
# models measured within 0.4 % of fp32, the bound leaves room for other seeds and shapes
TOLERANCE = 2e-2

def spec_of(kind: str, dim: int = 5) -> DataSpec:
    return DataSpec(kind, dim, "word" if kind == "tokens" else "sequence", 1 if kind == "tokens" else dim)  # type: ignore[arg-type]


BUILDERS: dict[str, Callable[[str], nn.Module]] = {
    "zforcing": lambda kind: make_model(kind, rnn_dim=16, z_dim=4, mlp_dim=8),
    "zforcing_cln": lambda kind: make_model(kind, rnn_dim=16, z_dim=4, mlp_dim=8, cond_layer_norm=True),
    "lru": lambda kind: LRU(spec_of(kind), HEADS[kind], d_model=8, layers=2),
    "transformer": lambda kind: Transformer(spec_of(kind), HEADS[kind], d_model=8, layers=2, heads=2),
} | {name: (lambda kind, name=name: build(name, kind)) for name in MODELS}


def terms_and_grads(model: nn.Module, batch: SequenceBatch, noise: torch.Tensor | None,
                    bf16: bool) -> tuple[StepTerms, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        terms = model(batch) if noise is None else model(batch, noise)
        loss = sum(getattr(terms, k).float().sum() for k in TERMS)
    loss.backward()
    return terms, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["real", "tokens"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_bf16_autocast_terms_match_fp32_within_tolerance(name: str, kind: str) -> None:
    model = BUILDERS[name](kind)
    batch = make_batch(kind, B=4, T=12)
    noise = None
    if isinstance(model, LatentVariableModel):
        noise = torch.randn(*batch.mask.shape, model.z_dim, generator=torch.Generator().manual_seed(1))
    reference, ref_grads = terms_and_grads(model, batch, noise, bf16=False)
    terms, grads = terms_and_grads(model, batch, noise, bf16=True)
    for key in TERMS:
        ref, got = getattr(reference, key).sum().item(), getattr(terms, key).float().sum().item()
        assert got == pytest.approx(ref, rel=TOLERANCE, abs=1e-3), key
    assert grads.keys() == ref_grads.keys()
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_hand_written_recurrences_keep_their_state_in_fp32() -> None:
    for cln in (False, True):
        model = make_model("real", cond_layer_norm=cln)
        batch = make_batch("real")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run = model.infer(batch)
        assert run.h.dtype == run.z.dtype == torch.float32, cln


def test_a_bf16_mixed_run_lowers_the_loss(compose_train: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_train("trainer.precision=bf16-mixed", "trainer.max_steps=40", "trainer.max_epochs=1",
                        "trainer.log_every_n_steps=1", "optim.optimizer.lr=3e-3", "samples.num=0",
                        "trainer.limit_test_batches=1")
    metrics = train(cfg)
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as fh:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")]
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"bf16-mixed training did not lower the loss: {first:.1f} -> {last:.1f}"
    assert torch.isfinite(torch.tensor(metrics["test/neg_elbo"]))


@pytest.mark.parametrize("model", ["rnn", "vrnn", "srnn", "zforcing model.cond_layer_norm=true"])
def test_every_model_trains_under_bf16_mixed(model: str, compose_train: Callable[..., DictConfig]) -> None:
    name, *extra = model.split()
    sizes = ["model.emb_dim=8", "model.rnn_dim=16"] + ([] if name == "rnn" else ["model.z_dim=4", "model.mlp_dim=8"])
    not_model = [o for o in TINY if not o.startswith("model.")]
    cfg = compose_train(*not_model, f"model={name}", *sizes, *extra, "trainer.precision=bf16-mixed",
                        "trainer.max_steps=3", "trainer.val_check_interval=3", "test=false", "samples.num=0",
                        tiny=False)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/neg_elbo"]))
