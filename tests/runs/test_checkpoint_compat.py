"""Checkpoints written before the layout change (issue 12) still load, evaluate to the numbers
they gave then, and resume: their stored ``_target_`` paths are migrated on load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zf_lightning.runs.checkpoint import CONFIG_KEY, MOVED_TARGETS, load_checkpoint, migrate_config
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.pipeline import compose_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_CKPT = FIXTURES / "text_zforcing_before_layout.ckpt"
OLD_EVAL = json.loads((FIXTURES / "text_zforcing_before_layout.json").read_text())
TEXT_FILES = [FIXTURES / "tiny_text" / "neg.txt", FIXTURES / "tiny_text" / "pos.txt"]
REPO = Path(__file__).resolve().parents[2]


def files_override(key: str) -> str:
    return f"{key}=[{','.join(str(f) for f in TEXT_FILES)}]"


def test_migration_rewrites_every_moved_target_and_nothing_else() -> None:
    stored = {"data": {"_target_": "zf_lightning.data.text.SentencesDataModule", "files": ["a"]},
              "model": {"_target_": "zf_lightning.models.ZForcing", "head": {"_target_": "x.Y"}},
              "analyses": {"probe": {"_target_": "zf_lightning.text_analysis.latent_probe"}},
              "tags": [{"_target_": "zf_lightning.jobs.SweepStatus"}, "_target_"]}
    migrated = migrate_config(stored)
    assert migrated["data"] == {"_target_": "zf_lightning.data.text.sentences.SentencesDataModule", "files": ["a"]}
    assert migrated["model"] == stored["model"]
    assert migrated["analyses"]["probe"]["_target_"] == "zf_lightning.evaluation.probes.latent_probe"
    assert migrated["tags"] == [{"_target_": "zf_lightning.report.callback.SweepStatus"}, "_target_"]
    assert stored["data"]["_target_"] == "zf_lightning.data.text.SentencesDataModule"  # input untouched


def test_migration_moves_the_digit_sums_label_settings_under_data_task() -> None:
    """data=mnist_sum_mod10 as checkpoints stored it before its label settings joined the other sum
    tasks' under data.task migrates to what the config composes now."""
    old = {"_target_": "zf_lightning.data.synthetic.MnistSumDataModule", "batch_size": 64, "eval_batch_size": 100,
           "fresh_train": True, "length": 10, "max_size": 100, "min_length": 1, "modulus": 10, "num_test": 500,
           "num_train": 10000, "num_val": 500, "num_workers": 0, "pin_memory": False, "seed": 0, "side": 14,
           "split_seed": 0, "test_fraction": 0.2, "test_lengths": [10, 25, 50, 100], "val_fraction": 0.1,
           "val_lengths": None}
    now = OmegaConf.to_container(compose_config("train", ["data=mnist_sum_mod10"]).data)
    assert migrate_config({"data": old}) == {"data": now}
    assert migrate_config({"data": now}) == {"data": now}  # a current config is left as it is


def test_every_moved_target_names_something_that_exists() -> None:
    from hydra.utils import get_method

    for old, new in MOVED_TARGETS.items():
        assert old != new
        get_method(new)  # raises when the new path is wrong


def test_an_old_checkpoint_loads_with_migrated_targets() -> None:
    checkpoint = load_checkpoint(OLD_CKPT)
    config = checkpoint[CONFIG_KEY]
    assert config["data"]["_target_"] == "zf_lightning.data.text.sentences.SentencesDataModule"
    assert config["analyses"]["latent_probe"]["_target_"] == "zf_lightning.evaluation.probes.latent_probe"
    assert config["analyses"]["resample"]["_target_"] == "zf_lightning.evaluation.text.resample_words"


@pytest.mark.slow
def test_an_old_checkpoint_evaluates_to_the_numbers_it_gave_before(tmp_path: Path) -> None:
    cfg = compose_config("eval", [
        f"ckpt_path={OLD_CKPT}", f"paths.output_dir={tmp_path / 'eval'}", "eval.iwae_samples=[4]",
        files_override("+data_overrides.files"), f"+data_overrides.cache_dir={tmp_path / 'cache'}",
    ])
    metrics = evaluate(cfg)
    expected = OLD_EVAL["metrics"]
    assert set(expected) <= set(metrics)
    assert expected["test/bwd"] != 0.0  # the old code scored the untrained backward head
    for key, value in expected.items():
        if key == "test/bwd":
            # its run weighed the bwd cost 0, so the backward head is no longer run
            assert metrics[key] == 0.0
            continue
        # the same numbers up to float32 rounding: which kernel forms a product (oneDNN, MKL, the
        # extension's own) depends on the CPU and build, and a standard error amplifies its last bits
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


@pytest.mark.slow
def test_an_old_checkpoint_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copy(OLD_CKPT, tmp_path / "old.ckpt")
    command = [sys.executable, "train.py", f"ckpt_path={tmp_path / 'old.ckpt'}", f"hydra.run.dir={run}",
               "data=sentences", files_override("data.files"), f"data.cache_dir={tmp_path / 'cache'}",
               "trainer.max_steps=16", "trainer.max_epochs=4", "samples.num=0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed_from"].endswith("old.ckpt")
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 16
    assert resumed[CONFIG_KEY]["data"]["_target_"] == "zf_lightning.data.text.sentences.SentencesDataModule"


def test_the_skipped_update_counters_ride_in_the_checkpoint_under_their_key() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from tests.lit.test_lit import fixed_module
    from zf_lightning.runs.checkpoint import NONFINITE_KEY, StoreConfig

    saved, _ = fixed_module()
    saved.nonfinite_total, saved.nonfinite_streak = 3, 1
    checkpoint: dict = {}
    callback = StoreConfig({"seed": 1}, {"ablation": "plain"})
    callback.on_save_checkpoint(SimpleNamespace(loggers=[], is_global_zero=True), saved, checkpoint)
    assert checkpoint[NONFINITE_KEY] == {"total": 3, "streak": 1} and checkpoint[CONFIG_KEY] == {"seed": 1}
    restored, _ = fixed_module()
    fitting = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    callback.on_load_checkpoint(fitting, restored, checkpoint)
    assert (restored.nonfinite_total, restored.nonfinite_streak) == (3, 1)
    callback.on_load_checkpoint(fitting, restored, {})  # a checkpoint without counters
    assert (restored.nonfinite_total, restored.nonfinite_streak) == (0, 0)
