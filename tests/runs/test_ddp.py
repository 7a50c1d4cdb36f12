"""trainer=ddp_cpu: 2 processes (gloo) train one job in one folder with one W&B run, each sees
half of every global batch, and the averaged gradients equal a single process's on the whole
global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import TINY, compose_config
from zf_lightning.runs.pipeline import build_datamodule, build_module
from zf_lightning.types import SequenceBatch

REPO = Path(__file__).resolve().parents[2]


class DumpFirstUpdate(Callback):
    """Test helper: each rank saves its first batch, RNG state and (all-reduced) gradients, and
    rank 0 the initial weights, so a single process can redo the same update."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.rng: torch.Tensor | None = None
        self.batch: SequenceBatch | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.directory / "init.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.rng, self.batch = torch.get_rng_state(), batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step != 0:
            return
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        assert self.batch is not None
        batch = {"inputs": self.batch.inputs, "targets": self.batch.targets, "mask": self.batch.mask}
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save({"grads": grads, "rng": self.rng, "batch": batch, "world_size": trainer.world_size},
                   self.directory / f"rank{trainer.global_rank}.pt")


RUN = [o for o in TINY if not o.startswith("logger")] + [
    "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_test_batches=1",
    "samples.num=2", "data.batch_size=8",
]


@pytest.mark.slow
def test_ddp_cpu_two_processes_one_folder_one_run_and_the_gradients_of_the_global_batch(tmp_path: Path) -> None:
    run, dumps, logs = tmp_path / "logs" / "run", tmp_path / "dumps", tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline",
                                                                          "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "train.py", "trainer=ddp_cpu", *RUN, f"hydra.run.dir={run}", f"paths.log_dir={logs}",
           f"paths.cache_dir={tmp_path / 'cache'}", "+callbacks.dump._target_=tests.runs.test_ddp.DumpFirstUpdate",
           f"+callbacks.dump.directory={dumps}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # one job folder, one W&B run, rank 0's files only
    assert [p.name for p in logs.iterdir()] == ["run"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and not list(run.glob("status.rank*.json"))
    assert "test/elbo" in json.loads((run / "metrics.json").read_text())
    assert (run / "checkpoints" / "last.ckpt").is_file()

    rank0, rank1 = (torch.load(dumps / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    b0, b1 = rank0["batch"], rank1["batch"]
    assert b0["inputs"].shape[0] == b1["inputs"].shape[0] == 8  # data.batch_size is per process
    assert not torch.equal(b0["inputs"], b1["inputs"])  # the ranks see different shards
    assert not torch.equal(rank0["rng"], rank1["rng"])  # and draw different posterior noise
    for name, grad in rank0["grads"].items():  # DDP averaged them: the same on both ranks
        torch.testing.assert_close(grad, rank1["grads"][name], rtol=0, atol=0)

    # one process, one global batch of 16, the same initial weights and the same posterior noise
    cfg = compose_config("train", [f"paths.output_dir={tmp_path / 'single'}", f"paths.cache_dir={tmp_path / 'cache'}",
                                   *RUN])
    lit = build_module(cfg, build_datamodule(cfg))
    lit.load_state_dict(torch.load(dumps / "init.pt", weights_only=True))
    lit.train()
    batch = SequenceBatch(*(torch.cat([b0[k], b1[k]]) for k in ("inputs", "targets", "mask")))
    noise = []
    for dump, half in ((rank0, b0), (rank1, b1)):
        torch.set_rng_state(dump["rng"])  # each rank drew its noise first thing in its training step
        noise.append(torch.randn(half["mask"].shape[0], half["mask"].shape[1], lit.model.z_dim))
    forward = lit.model.forward
    lit.model.forward = lambda b: forward(b, noise=torch.cat(noise))
    loss, _ = lit.objective(batch, lit.weights(0))
    loss.backward()
    single = {n: p.grad for n, p in lit.named_parameters() if p.grad is not None}
    assert set(single) <= set(rank0["grads"])
    assert len(single) > 10
    for name, grad in single.items():
        torch.testing.assert_close(rank0["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_each_start_their_own_processes(tmp_path: Path) -> None:
    """Under -m, Lightning's own launcher would re-run the whole sweep in every extra process;
    here two DDP jobs run one after the other in the sweep's process, each in its folder."""
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline",
                                                                          "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "train.py", "-m", "trainer=ddp_cpu", "seed=1,2", *RUN, f"hydra.sweep.dir={sweep}",
           f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "logs").exists()  # no stray run folders from the extra processes
    ids = set()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        ids.add(runs[0].name)
    assert len(ids) == 2
