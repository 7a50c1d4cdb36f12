"""The benchmark scripts run end to end at small settings and report consistent numbers.

Timings themselves are never asserted (they depend on the machine); what is checked is that
each script measures what it says: every variant timed, ratios equal to the ratios of the
reported times, and a loader comparison whose two runs trained on the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import TINY
from tests.helpers import load_script


def _load(name: str) -> ModuleType:
    return load_script(name, "benchmarks")


@pytest.mark.slow  # 1 to 7 s here, depending on what else runs on the cores
def test_bench_step_times_every_variant_and_reports_consistent_ratios(capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_step")
    result = bench.main(["--sizes", "mnist", "--repeats", "2", "--warmup", "0", "--eval-samples", "2", "--json"])
    r = result["mnist"]
    for key in ("reference_s", "fast_s", "floor_s", "eval_s", "eval_seq_per_s"):
        assert r[key] > 0, key
    assert r["reference_over_fast"] == pytest.approx(r["reference_s"] / r["fast_s"])
    assert r["fast_over_floor"] == pytest.approx(r["fast_s"] / r["floor_s"])
    assert r["eval_seq_per_s"] == pytest.approx(int(r["sizes"].split("B=")[1].split()[0]) / r["eval_s"])
    assert '"reference_s"' in capsys.readouterr().out  # --json printed the object


def test_bench_loader_compares_the_real_loader_with_its_batches_replayed() -> None:
    bench = _load("bench_loader")
    overrides = " ".join([*TINY, "data.batch_size=1000"])  # 4 batches per epoch: 8 updates cross an epoch end
    result = bench.main(["--config", overrides, "--steps", "8", "--warmup", "2", "--rounds", "1", "--json"])
    r = result[overrides]
    assert r["data"] == "MnistDataModule"
    assert r["batch_shape"] == [1000, 14, 14]  # one 14-pixel row per step
    assert r["mean_steps_per_batch"] == 14
    assert r["batches_per_epoch"] == 4  # 4,000 training images
    assert r["replayed_the_same_batches"]  # 8 updates each, the same inputs in the same order
    assert r["real_steps_per_s"] > 0 and r["in_memory_steps_per_s"] > 0
    assert r["real_over_in_memory"] == pytest.approx(r["real_steps_per_s"] / r["in_memory_steps_per_s"])  # 1 round
    with pytest.raises(SystemExit):  # too few steps to time anything after the warm-up
        bench.main(["--steps", "3", "--warmup", "2"])


def test_bench_update_times_the_study_update_and_the_bare_step_on_the_same_batches(tmp_path: Path) -> None:
    bench = _load("bench_update")
    overrides = " ".join([*TINY, "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null"])
    out = tmp_path / "update.json"
    result = bench.main(["--config", overrides, "--steps", "8", "--warmup", "2", "--rounds", "2", "--out", str(out)])
    r = result["update"]
    assert r["steps"] == 8 and r["batch_size"] == 32 and r["val_check_interval"] == 4
    assert r["progress_bar"] is False  # as study/common/base.yaml runs every study job
    assert len(r["per_round_update_s"]) == len(r["per_round_step_s"]) == 2
    assert all(t > 0 for t in r["per_round_update_s"] + r["per_round_step_s"])
    ratios = sorted(u / s for u, s in zip(r["per_round_update_s"], r["per_round_step_s"], strict=True))
    assert r["update_over_step"] == pytest.approx(sum(ratios) / 2)  # median of two rounds
    paired = list(zip(r["per_round_interleaved_update_s"], r["per_round_interleaved_step_s"], strict=True))
    assert len(paired) == 2 and all(u > 0 and s > 0 for u, s in paired)
    assert r["interleaved_update_over_step"] == pytest.approx(sum(u / s for u, s in paired) / 2)
    assert json.loads(out.read_text())["update"] == r


@pytest.mark.slow
def test_bench_objective_and_fixed_cost_build_from_the_study_config_and_report_ratios() -> None:
    """The two profiling benchmarks of the step at FSDD sizes run end to end at two rounds."""
    objective = _load("bench_objective").main(["--repeats", "2", "--warmup", "0"])
    assert objective["paired_objective_over_model"] > 0 and objective["paired_training_over_model"] > 0
    assert set(objective["median_ms"]) == {"model", "objective", "training"}
    fixed = _load("bench_fixed_cost").main(["--repeats", "2", "--warmup", "0"])
    median = fixed["median_ms"]
    assert set(median) == {"step_fsdd", "step_tiny", "floor_fsdd", "floor_tiny"}
    assert fixed["step_over_floor"] == pytest.approx(median["step_fsdd"] / median["floor_fsdd"])
    assert 0 < fixed["fixed_share_of_step"] < 1  # the tiny step costs less than the FSDD-size one


@pytest.mark.slow
def test_bench_heads_times_each_layout_on_the_same_batches(tmp_path: Path) -> None:
    out = tmp_path / "heads.json"
    bench = _load("bench_heads")
    result = bench.main(["--config", " ".join(TINY), "--rounds", "3", "--steps", "1", "--warmup", "1", "--batches", "2",
                         "--out", str(out)])
    r = result["step"]
    assert r["same_loss"] is True  # the backward head only ever added a term weighed 0
    for key in ("now_over_before", "shared_over_before"):
        per_round = sorted(r[f"per_round_{key}"])
        assert len(per_round) == 3 and r[key] == pytest.approx(per_round[1])
    assert all(r[f"{name}_s"] > 0 for name in ("now", "shared", "before"))
    assert bench.zforcing_model.OWN_PRODUCT_HEAD_WIDTH == r["own_product_head_width"]  # restored
    assert json.loads(out.read_text())["step"] == r
