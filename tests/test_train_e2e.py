"""End to end: Hydra-composed training, eval.py reproduction, the ablation multirun, W&B offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.conftest import TINY, compose_config
from zf_lightning.runs.checkpoint import CONFIG_KEY
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.pipeline import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_training_run_lowers_the_loss_and_writes_its_outputs(trained_run) -> None:
    _, metrics, out = trained_run
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test/nll", "test/kl", "test/elbo", "test/neg_elbo", "test/bpd", "test/nats_per_step"):
        assert key in saved and saved[key] == pytest.approx(metrics[key])
    assert saved["test/neg_elbo"] == pytest.approx(saved["test/nll"] + saved["test/kl"], rel=1e-5)
    assert saved["test/elbo"] == pytest.approx(-saved["test/neg_elbo"])
    assert saved["test/independent_bernoulli_nll"] > 0
    rows = [r for r in read_csv(out / "csv" / "metrics.csv") if r.get("train/loss_step")]
    losses = [float(r["train/loss_step"]) for r in rows]
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"training did not lower the loss: {first:.1f} -> {last:.1f}"
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert any(p.name.startswith("best-") for p in ckpts) and (out / "checkpoints" / "last.ckpt").exists()
    stored = torch.load(ckpts[0], map_location="cpu", weights_only=False)[CONFIG_KEY]
    assert stored["model"]["rnn_dim"] == 16 and stored["lit"]["kl_weight"]["start"] == 0.2
    assert (out / "config_resolved.yaml").exists()
    assert (out / "samples" / "prior.png").stat().st_size > 0


def test_eval_reproduces_the_training_runs_test_metrics(trained_run, tmp_path: Path) -> None:
    _, metrics, out = trained_run
    best = next((out / "checkpoints").glob("best-*.ckpt"))
    assert metrics["test/checkpoint"] == str(best)
    eval_cfg = compose_config("eval", [f"ckpt_path={best}", f"paths.output_dir={tmp_path}", "samples.num=2"])
    result = evaluate(eval_cfg)
    for key in ("test/nll", "test/kl", "test/neg_elbo", "test/aux"):
        assert result[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-5), key
    assert json.loads((tmp_path / "metrics.json").read_text())["test/nll"] == pytest.approx(metrics["test/nll"])
    assert (tmp_path / "samples" / "prior.png").exists()
    val_cfg = compose_config("eval", [f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'val'}", "split=val"])
    assert "val/neg_elbo" in evaluate(val_cfg)


def test_eval_with_a_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate(cfg)


def test_wandb_offline_run_is_finished_at_the_end(compose_train: Callable[..., DictConfig], tmp_path: Path) -> None:
    import wandb

    cfg = compose_train("logger=wandb", "trainer.max_steps=2", "test=false", "samples.num=0")
    train(cfg)
    assert wandb.run is None  # finished, so the next job of a multirun cannot reuse it
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1


def test_failed_job_still_finishes_its_wandb_run(compose_train: Callable[..., DictConfig]) -> None:
    import wandb

    cfg = compose_train("logger=wandb", "trainer.max_steps=2", "optim.optimizer.lr=-1.0")
    with pytest.raises(Exception, match="learning rate"):
        train(cfg)
    assert wandb.run is None


def test_four_ablation_multirun_completes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("logger")]
    cmd = [sys.executable, "train.py", "-m", "ablation=plain,kla,aux,kla_aux", "trainer.max_steps=3",
           "logger=csv", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    ablations = []
    for job in jobs:
        assert "test/nll" in json.loads((job / "metrics.json").read_text())
        ablations.append((job / ".hydra" / "overrides.yaml").read_text())
    assert all(any(f"ablation={a}" in text for text in ablations) for a in ("plain", "kla", "aux", "kla_aux"))
