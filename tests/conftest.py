"""Shared fixtures: composed configs with tiny sizes, and one trained run reused by several tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from zf_lightning.runs.pipeline import compose_config

REPO = Path(__file__).resolve().parents[1]
# Data that is not in the repository (FSDD, rt-polarity): ../shared/data beside the checkout. A
# test that needs it skips without it, naming what is missing (on a user's fresh clone).
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_SKIP = "needs data outside the repository:"  # how such a skip's reason starts
# .ci/run sets this to a file: the ids of the tests skipped for missing shared data are written
# there, to be run again from a checkout that has ../shared
SHARED_SKIPS_ENV = "ZF_SHARED_SKIPS"


def require_shared(*paths: Path | str) -> None:
    """Skip the calling test unless every path exists; relative paths are taken from the repository
    root, as the configs' ``../shared/...`` are."""
    missing = [str(p) for p in paths if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"{SHARED_SKIP} {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on this machine")


def missing_data(data: DictConfig) -> list[str]:
    """The data paths a composed ``data`` config names (root, files, ...) that do not exist."""
    listed: list[str] = []
    for key in ("root", "files", "data_dir", "path"):
        value = data.get(key)
        if isinstance(value, str):
            listed.append(value)
        elif value is not None and not isinstance(value, int | float | bool):
            listed += [str(v) for v in value]
    return [p for p in listed if p.startswith("../shared") and not (REPO / p).exists()]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record = os.environ.get(SHARED_SKIPS_ENV)
    if record and report.skipped and isinstance(report.longrepr, tuple) and SHARED_SKIP in str(report.longrepr[2]):
        with open(record, "a") as fh:
            fh.write(report.nodeid + "\n")

# Tiny recurrent models gain nothing from intra-op threads and lose a lot when cores are
# shared; subprocess runs inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A model and data small enough that a run of a few dozen updates takes seconds on 2 cores.
TINY = [
    "model.emb_dim=8",
    "model.rnn_dim=16",
    "model.z_dim=4",
    "model.mlp_dim=8",
    "data.pixels_per_step=14",
    "data.batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=1",
    "samples.num=4",
    "logger=csv",
]


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose zf_lightning/conf/train.yaml with tiny sizes; outputs and caches go under tmp_path."""

    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
        return compose_config("train", base + (TINY if tiny else []) + list(overrides))

    return _compose


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DictConfig, dict[str, float], Path]:
    """One short Hydra-composed training run on the embedded MNIST (config, metrics, output dir)."""
    from zf_lightning.runs.pipeline import train

    out = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        "train",
        [f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}", *TINY, "trainer.max_steps=40",
         "trainer.max_epochs=1", "trainer.val_check_interval=20", "trainer.log_every_n_steps=1",
         "optim.optimizer.lr=3e-3", "ablation=kla_aux"],
    )
    metrics = train(cfg)
    return cfg, metrics, out
