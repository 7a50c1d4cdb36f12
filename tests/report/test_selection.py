"""The grid point validation chooses (``zf_lightning.report.selection``): read at each job's best
checkpoint, per family of the other keys, with the runner-up, the paired difference and the edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, load_script
from zf_lightning.report.cli import main
from zf_lightning.report.jobs import Job
from zf_lightning.report.selection import (
    ChooseError,
    candidates,
    chosen_settings,
    selection_section,
    value_at_best,
)

WEIGHTS = ("0", "0.01", "0.1", "1")


def grid_job(num: int, variant: str, weight: str, seed: int, peak: float, last: float) -> Job:
    """A job whose val/acc peaks at its best checkpoint (update 1,000, logged at step 999) and ends lower."""
    curve = [(499, peak - 0.2), (999, peak), (1499, last)]
    return Job(str(num), {"variant": variant, "weight": weight, "seed": str(seed)}, "completed",
               metrics={"val/acc": last}, curves={"val/acc": curve}, info={"best_step": "1000"})


@pytest.fixture
def grid() -> list[Job]:
    """Family a peaks at weight 0.1 (inside the grid), family b at weight 1 (its edge); the last
    validations would choose otherwise (weight 0 ends best in both)."""
    peaks = {"a": {"0": 0.60, "0.01": 0.70, "0.1": 0.80, "1": 0.50},
             "b": {"0": 0.60, "0.01": 0.62, "0.1": 0.64, "1": 0.9}}
    jobs, num = [], 0
    for variant, by_weight in peaks.items():
        for weight in WEIGHTS:
            for seed, wobble in ((1, 0.01), (2, -0.01)):
                last = 0.95 if weight == "0" else 0.3
                jobs.append(grid_job(num, variant, weight, seed, by_weight[weight] + wobble, last))
                num += 1
    return jobs


def test_each_job_is_read_at_its_best_checkpoint(grid: list[Job]) -> None:
    assert value_at_best(grid[4], "val/acc") == pytest.approx(0.81)  # not the last validation's 0.3
    no_checkpoint = Job("x", {}, "completed", metrics={"val/acc": 0.4}, curves={"val/acc": [(9, 0.9)]})
    assert value_at_best(no_checkpoint, "val/acc") == pytest.approx(0.4)  # no checkpoint kept: its final value


def test_the_choice_per_family_with_runner_up_and_edge(grid: list[Job]) -> None:
    families = candidates(grid, ["weight"], ["variant", "weight"], "val/acc")
    assert [dict(f)["variant"] for f in families] == ["a", "b"]
    text = "\n".join(selection_section(grid, ["weight"], ["variant", "weight"], "val/acc"))
    # a: 0.1 (0.80) over 0.01 (0.70), every seed by 0.10 exactly: the interval is a point above zero
    row_a = "| variant=a | weight=0.1 | 0.800 ± 0.014 (n=2) | weight=0.01 | +0.1 [0.1, 0.1], n=2: better | no | – |"
    assert row_a in text
    # b: the best is the highest weight tried, so the grid should be widened before trusting it
    assert "| variant=b | weight=1 |" in text and "weight=1 is the highest tried" in text
    assert text.index("| weight=0.1 |") < text.index("| weight=0.01 |") < text.index("| weight=0 |")  # best first


def test_a_lower_is_better_metric_chooses_the_smallest(grid: list[Job]) -> None:
    for job in grid:
        job.curves["val/neg_elbo"] = [(s, -v) for s, v in job.curves["val/acc"]]
    text = "\n".join(selection_section(grid, ["weight"], ["variant", "weight"], "val/neg_elbo"))
    assert "| variant=a | weight=0.1 |" in text and "lower is better" in text


def test_a_key_the_jobs_do_not_vary_is_one_clear_error_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.report.test_report import make_job

    sweep = tmp_path / "sweep"
    for num, seed in enumerate((1, 2)):
        make_job(sweep, num, ["ablation=aux", f"seed={seed}"], {"test/elbo": -1.0})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--out", str(out), "--choose", "schedule.aux_end"])
    assert exit_info.value.code == 2 and "--choose schedule.aux_end: not a key the jobs vary" in capsys.readouterr().err
    assert not out.exists()


def test_when_no_weight_beats_none_the_best_nonzero_weight_is_named(grid: list[Job]) -> None:
    """A study row that needs the term on takes the best nonzero weight, compared with none."""
    for job in grid:
        if job.overrides["variant"] == "a" and job.overrides["weight"] == "0":
            job.curves["val/acc"] = [(s, v + 0.3) for s, v in job.curves["val/acc"]]  # 0.9: best of family a
    text = "\n".join(selection_section(grid, ["weight"], ["variant", "weight"], "val/acc"))
    assert "| variant=a | weight=0 |" in text and "weight=0 (the term off) is the lowest tried" in text
    assert "| weight=0.1: 0.800 ± 0.014 (n=2); chosen − it +0.1 [0.1, 0.1], n=2: better |" in text


def test_the_chosen_settings_agree_with_the_section_and_keep_a_term_on_where_asked(grid: list[Job]) -> None:
    for job in grid:
        if job.overrides["variant"] == "a" and job.overrides["weight"] == "0":
            job.curves["val/acc"] = [(s, v + 0.3) for s, v in job.curves["val/acc"]]  # no weight beats none in a
    chosen = {dict(f)["variant"]: p.label for f, p in chosen_settings(grid, ["weight"], ["variant", "weight"],
                                                                    "val/acc").items()}
    assert chosen == {"a": "weight=0", "b": "weight=1"}
    on = chosen_settings(grid, ["weight"], ["variant", "weight"], "val/acc", term_on=True)
    assert {dict(f)["variant"]: p.label for f, p in on.items()} == {"a": "weight=0.1", "b": "weight=1"}
    with pytest.raises(ChooseError):
        chosen_settings(grid, ["lr"], ["variant", "weight"], "val/acc")


def test_the_rerun_cells_of_a_committed_grid_are_its_chosen_settings() -> None:
    script = load_script("chosen_cells")
    cells = script.chosen_cells(REPO / "results" / "sets_sire_grid", ["lit.regularizer_weight.value"], ["1", "2"],
                                term_on=True)
    # per family (variant x compare) two seeds; the report's table names the same weight for each
    assert len(cells) == 2 * 2 * 2 and all(c.endswith((" seed=1", " seed=2")) for c in cells)
    assert all(" lit.regularizer_weight.value=0 " not in c for c in cells)  # the term kept on
    assert "variant=sets/lstm_sire_weight lit.regularizer.compare=output lit.regularizer_weight.value=0.0001 seed=1" \
        in cells
