"""Paired statistics of a study (issue 14): t-intervals with known values, verdicts that follow the
interval, the report's paired section on made-up job folders with known answers (a difference
that must come out significant, one that must not, a missing seed, a failed job), and a
report rebuilt from jobs.csv / curves.csv alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.report.test_report import make_job
from zf_lightning.report.build import write_report
from zf_lightning.report.cli import main
from zf_lightning.report.jobs import read_jobs_csv
from zf_lightning.report.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    higher_is_better,
    paired_difference,
    t_interval,
)


def test_t_interval_matches_the_textbook_values() -> None:
    mean, se, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    # t(0.975, 2 dof) = 4.302653
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    assert all(math.isnan(v) for v in t_interval([5.0])[1:])


def test_a_consistent_difference_is_significant_and_a_noisy_one_is_not() -> None:
    base = {"1": 10.0, "2": 20.0, "3": 30.0}
    shifted = {"1": 12.0, "2": 22.1, "3": 31.9}  # +2 on every seed despite large seed effects
    diff = paired_difference(base, shifted, higher_is_better=True)
    assert diff.n == 3 and diff.mean == pytest.approx(2.0) and diff.low > 0 and diff.verdict == BETTER
    assert paired_difference(base, shifted, higher_is_better=False).verdict == WORSE
    noisy = {"1": 15.0, "2": 16.0, "3": 33.0}  # +5, -4, +3
    assert paired_difference(base, noisy, higher_is_better=True).verdict == NO_DIFFERENCE


def test_only_shared_seeds_are_paired_and_one_pair_cannot_tell() -> None:
    diff = paired_difference({"1": 1.0, "2": 2.0, "3": 3.0}, {"2": 5.0, "4": 9.0}, higher_is_better=True)
    assert diff.seeds == ("2",) and diff.mean == 3.0 and math.isnan(diff.low)
    assert diff.verdict.startswith("cannot tell")


def test_which_metrics_grow_with_quality() -> None:
    assert higher_is_better("test/elbo") and higher_is_better("test/iwae_100") and higher_is_better("test/acc")
    assert not higher_is_better("test/neg_elbo") and not higher_is_better("test/ppl")
    assert not higher_is_better("test/bpd")
    assert not higher_is_better("test/iwae_64_bpd") and not higher_is_better("test/iwae_64_nats_per_step")
    assert not higher_is_better("test/elbo_se") and higher_is_better("test/acc_len25")


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Rows with known answers against the baseline 'Z-Forcing + kla' (seeds 1-4):
    aux is better by 3 nats on every seed (significant), plain differs by noise (not
    significant), kla_aux lacks seed 4 and its seed-3 job failed."""
    sweep = tmp_path / "sweep"
    base = {1: -100.0, 2: -90.0, 3: -110.0, 4: -95.0}
    offsets = {"kla": {s: 0.0 for s in base}, "aux": {1: 3.0, 2: 3.1, 3: 2.9, 4: 3.0},
               "plain": {1: 4.0, 2: -5.0, 3: 1.0, 4: -1.0}, "kla_aux": {1: 1.0, 2: 1.2, 3: 0.0}}
    num = 0
    for ablation, by_seed in offsets.items():
        for seed, offset in by_seed.items():
            overrides = [f"ablation={ablation}", f"seed={seed}"]
            if ablation == "kla_aux" and seed == 3:
                make_job(sweep, num, overrides, None, status="failed", error="RuntimeError: boom")
            else:
                elbo = base[seed] + offset
                broken = (ablation, seed) == ("kla_aux", 1)  # its objective ends worse than it began
                objective = (50.0, 45.0, 60.0) if broken else (50.0, 45.0, 40.0)
                job = make_job(sweep, num, overrides, {"test/elbo": elbo, "test/kl": 2.0},
                               curve=[(100, elbo - 10, 1.0, objective[0]), (200, elbo - 1, 1.0, objective[1]),
                                      (300, elbo, 1.0, objective[2])],
                               choices={"model": "zforcing", "ablation": ablation})
                diverged = "true" if broken else "false"
                status = (job / "status.json").read_text().replace('"completed"', '"completed", "stop_reason": '
                                                                    '"converged", "updates": 300, "best_step": 300, '
                                                                    f'"diverged": {diverged}')
                (job / "status.json").write_text(status)
            num += 1
    return sweep


def paired_rows(report: str) -> dict[str, list[str]]:
    """The paired table's rows by row name (and data set), up to the verdict. Each row is named
    ``(row) − (baseline)``, the order of the subtraction; the last column says where it was read."""
    section = report.split("## Paired differences", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ("):
            cells = [c.strip() for c in line.strip("|").split("|")]
            difference, _, context = cells[0].partition(" · ")
            assert difference.startswith("(") and ") − (" in difference and difference.endswith(")"), difference
            name = difference[1:].split(") − (")[0]
            assert cells[-1].startswith(("convergence", "a budget")), cells[-1]
            rows[name + (f" · {context}" if context else "")] = cells[:-1]
    return rows


def test_the_report_gives_paired_differences_with_known_answers(study: Path) -> None:
    write_report(study, baseline="Z-Forcing + kla")
    rows = paired_rows((study / "report.md").read_text())
    assert set(rows) == {"Z-Forcing + aux", "Z-Forcing", "Z-Forcing + kla, aux"}
    assert rows["Z-Forcing + aux"][1:3] == ["4", "+3.00"] and rows["Z-Forcing + aux"][-1] == BETTER
    assert rows["Z-Forcing"][1] == "4" and rows["Z-Forcing"][-1] == NO_DIFFERENCE
    # seed 4 never ran and seed 3 failed: two pairs are left
    assert rows["Z-Forcing + kla, aux"][1:3] == ["2", "+1.10"]
    ended = runs_rows((study / "report.md").read_text())
    assert ended["Z-Forcing + aux"][:5] == ["4", "converged: 4", "0", "0", "-105.8 → -95.75"]
    assert ended["Z-Forcing + aux"][5:8] == ["50 → 40", "300 [300–300]", "300"]
    assert ended["Z-Forcing + kla, aux"][:4] == ["2", "converged: 2", "1", "0"]  # seed 1 diverged
    assert ended["Z-Forcing + kla, aux"][5] == "50 → 50"


def runs_rows(report: str) -> dict[str, list[str]]:
    """The "How the runs ended" table's cells after the row name, by row name."""
    section = report.split("## How the runs ended", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_a_run_diverged_only_when_its_objective_got_worse(tmp_path: Path) -> None:
    """Known endings (val/elbo higher is better, val/objective lower is better): the bound falling
    while the objective improves has its own name; without an objective curve the report says so."""
    sweep = tmp_path / "sweep"
    endings = {1: [(100, -50.0, 1.0, 10.0), (200, -80.0, 1.0, 5.0)],  # bound fell, objective improved
               2: [(100, -50.0, 1.0, 10.0), (200, -80.0, 1.0, 12.0)],  # both worse: diverged
               3: [(100, -50.0, 1.0, 10.0), (200, -40.0, 1.0, 12.0)],  # bound better, objective worse: diverged
               4: [(100, -50.0, 1.0, 10.0), (200, float("nan"), 1.0, float("nan"))],  # not finite: diverged
               5: [(100, -50.0, 1.0, 10.0), (200, -45.0, 1.0, 8.0)]}  # both improved
    for num, (seed, curve) in enumerate(endings.items()):
        job = make_job(sweep, num, ["ablation=aux", f"seed={seed}"], {"test/elbo": -1.0}, curve=curve,
                       config={"table_row": "Z-Forcing + aux"})
        (job / "status.json").write_text(json.dumps({"status": "completed", "stop_reason": "max_steps"}))
    for num, (seed, curve) in enumerate((  # jobs from before val/objective was logged
            (1, [(100, -50.0, 1.0), (200, -80.0, 1.0)]), (2, [(100, -50.0, 1.0), (200, -45.0, 1.0)]),
            (3, [(100, -50.0, 1.0), (200, float("nan"), 1.0)])), start=len(endings)):
        job = make_job(sweep, num, ["ablation=kla", f"seed={seed}"], {"test/elbo": -1.0}, curve=curve,
                       config={"table_row": "Z-Forcing + kla"})
        (job / "status.json").write_text(json.dumps({"status": "completed", "stop_reason": "max_steps",
                                                     "diverged": seed == 1}))  # the old rule: the bound fell
    write_report(sweep)
    ended = runs_rows((sweep / "report.md").read_text())
    assert ended["Z-Forcing + aux"][2:5] == ["3", "1", "-50 → -61.25 (1 not finite)"]
    assert ended["Z-Forcing + aux"][5] == "10 → 9.25 (1 not finite)"
    # the bound went non-finite in seed 3: diverged whatever the objective did
    assert ended["Z-Forcing + kla"][2:6] == ["1 (objective not recorded for 2)",
                                            "the bound fell in 1, objective not recorded",
                                            "-50 → -62.5 (1 not finite)", "not recorded"]
    committed = tmp_path / "committed"
    write_report(sweep, committed)
    assert "val/objective" in (committed / "curves.csv").read_text()  # exported: a rebuilt report decides too
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    for name in ("jobs.csv", "curves.csv"):
        (rebuilt / name).write_bytes((committed / name).read_bytes())
    write_report(rebuilt)
    assert runs_rows((rebuilt / "report.md").read_text()) == ended


def test_without_curves_the_recorded_flag_decides_by_the_rule_its_run_used(tmp_path: Path) -> None:
    """A job that logged val/objective recorded the objective's verdict; an older one the bound's."""
    sweep = tmp_path / "sweep"
    for num, (row, metrics, flag) in enumerate((("new", {"val/objective": 1.0}, True),
                                                ("new", {"val/objective": 1.0}, False),
                                                ("old", {}, True), ("old", {}, False))):
        job = make_job(sweep, num, [f"+row={row}", f"seed={num}"], {"test/elbo": -1.0} | metrics,
                       config={"table_row": row})
        (job / "status.json").write_text(json.dumps({"status": "completed", "stop_reason": "max_steps",
                                                     "diverged": flag}))
    write_report(sweep)
    ended = runs_rows((sweep / "report.md").read_text())
    assert ended["new"][2:4] == ["1", "0"]
    assert ended["old"][2:4] == ["objective not recorded", "the bound fell in 1, objective not recorded"]


def test_an_unknown_baseline_is_a_clear_error(study: Path) -> None:
    with pytest.raises(ValueError, match="baseline row 'VRNN' is not among the rows"):
        write_report(study, baseline="VRNN")


def test_the_report_rebuilds_from_jobs_csv_and_curves_csv_alone(study: Path, tmp_path: Path) -> None:
    committed = tmp_path / "results"
    write_report(study, committed, baseline="Z-Forcing + kla")
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    for name in ("jobs.csv", "curves.csv"):
        (rebuilt / name).write_bytes((committed / name).read_bytes())
    assert main([str(rebuilt), "--baseline", "Z-Forcing + kla"]) == 0
    original = (committed / "report.md").read_text().split("\n", 1)[1]
    assert (rebuilt / "report.md").read_text().split("\n", 1)[1] == original
    jobs = read_jobs_csv(rebuilt)
    assert len(jobs) == 15 and sum(not j.ok for j in jobs) == 1
    assert jobs[0].curves["val/elbo"] == [(100, -110.0), (200, -101.0), (300, -100.0)]
    assert jobs[0].info["stop_reason"] == "converged" and jobs[0].seed == "1"


def test_the_report_draws_accuracy_against_test_size_with_known_means(tmp_path: Path) -> None:
    sweep = tmp_path / "sets"
    accuracy = {"sets/lstm": {10: 1.0, 100: 0.5}, "sets/deepsets": {10: 0.9, 100: 0.9}}
    num = 0
    for variant, by_size in accuracy.items():
        for seed, wobble in ((1, 0.02), (2, -0.02)):
            metrics = ({f"test/acc_len{n}": acc + wobble for n, acc in by_size.items()} | {"test/acc": 0.7}
                       | {f"test/guess_acc_len{n}": 0.5 for n in by_size})
            make_job(sweep, num, [f"+variant={variant}", "data=set_parity", f"seed={seed}"], metrics,
                     config={"table_row": "LSTM" if variant == "sets/lstm" else "DeepSets"})
            num += 1
    write_report(sweep)
    text = (sweep / "report.md").read_text()
    assert (sweep / "size_curves.png").stat().st_size > 10_000
    assert "| row | size 10 | size 100 |" in text
    # mean ± t(0.975, 1 df) x standard error: 12.706 x 0.02
    assert "| LSTM | 1.000 [0.746, 1.254] (n=2) | 0.500 [0.246, 0.754] (n=2) |" in text
    assert "| DeepSets | 0.900 [0.646, 1.154] (n=2) | 0.900 [0.646, 1.154] (n=2) |" in text
    assert "| *input-blind guess* | 0.500 | 0.500 |" in text and "dashed line" in text


def test_two_studies_report_as_one_table_with_pairs_across_them(study: Path, tmp_path: Path) -> None:
    baselines = tmp_path / "table1"
    for num, seed in enumerate((1, 2, 3, 4)):
        make_job(baselines, num, ["+variant=vrnn_gauss", f"seed={seed}"], {"test/elbo": -120.0 - seed},
                 config={"table_row": "VRNN-Gauss"})
    out = tmp_path / "combined"
    assert main([str(study), str(baselines), "--out", str(out), "--baseline", "Z-Forcing + kla"]) == 0
    rows = paired_rows((out / "report.md").read_text())
    text = (out / "report.md").read_text()
    # the overrides column names only what a row sets: no "ablation=" for the VRNN rows
    assert "| VRNN-Gauss | variant=vrnn_gauss |" in text and "ablation=," not in text
    # VRNN-Gauss minus Z-Forcing + kla per seed: -121+100, -122+90, -123+110, -124+95 -> mean -23.75
    assert rows["VRNN-Gauss"][1:3] == ["4", "-23.75"] and rows["VRNN-Gauss"][-1] == "worse"
    assert {j.split(",")[0] for j in (out / "jobs.csv").read_text().splitlines()[1:]} >= {"sweep/0", "table1/0"}


def test_several_folders_need_an_output_folder(study: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(study), str(study)])


def test_pairs_are_taken_within_each_data_set_when_the_baseline_spans_several(tmp_path: Path) -> None:
    sweep = tmp_path / "sets"
    accuracy = {("sets/lstm", "set_parity"): 0.5, ("sets/lstm_sire1", "set_parity"): 0.6,
                ("sets/lstm", "set_sum_mod10"): 0.2, ("sets/lstm_sire1", "set_sum_mod10"): 0.2}
    names = {"sets/lstm": "LSTM", "sets/lstm_sire1": "LSTM + SIRE 1"}
    num = 0
    for (variant, data), acc in accuracy.items():
        for seed, wobble in ((1, 0.01), (2, -0.01), (3, 0.0)):
            noise = wobble if variant == "sets/lstm" or data == "set_parity" else -wobble
            make_job(sweep, num, [f"+variant={variant}", f"data={data}", f"seed={seed}"],
                     {"test/acc": acc + noise}, config={"table_row": names[variant]})
            num += 1
    write_report(sweep, headline="test/acc", baseline="LSTM")
    rows = paired_rows((sweep / "report.md").read_text())
    assert set(rows) == {"LSTM + SIRE 1 · data=set_parity", "LSTM + SIRE 1 · data=set_sum_mod10"}
    assert rows["LSTM + SIRE 1 · data=set_parity"][1:3] == ["3", "+0.10"]
    assert rows["LSTM + SIRE 1 · data=set_parity"][-1] == BETTER
    assert rows["LSTM + SIRE 1 · data=set_sum_mod10"][1:3] == ["3", "+0.00"]
    assert rows["LSTM + SIRE 1 · data=set_sum_mod10"][-1] == NO_DIFFERENCE


def test_study_notes_state_the_settings_all_jobs_share_and_keep_hand_written_notes(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from zf_lightning.report.study_notes import NOTES, study_notes, write_study_notes

    sweep, results = tmp_path / "jobs", tmp_path / "results"
    for num, (ablation, kl) in enumerate((("plain", 1.0), ("kla", 0.2))):
        job = make_job(sweep, num, [f"ablation={ablation}", "seed=1"], {"test/elbo": -1.0},
                       config={"model": {"rnn_dim": 64}, "lit": {"kl_weight": {"start": kl}},
                               "trainer": {"max_steps": 100, "default_root_dir": str(sweep / str(num))}})
        status = json.loads((job / "status.json").read_text())
        status |= {"stop_reason": "max_steps", "started": "2026-12-01T10:00:00+00:00",
                   "finished": "2026-12-01T10:30:00+00:00", "code": {"commit": "abc", "dirty": False}}
        if num == 1:  # cut off after 40 updates in one session, continued in the next
            status["attempts"] = [
                {"started": "2026-11-30T09:00:00+00:00", "finished": "2026-11-30T09:10:00+00:00", "from_update": 0,
                 "updates": None, "status": "interrupted", "commit": "abc", "host": "vm", "cpu": "EPYC"},
                {"started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T10:30:00+00:00", "from_update": 40,
                 "updates": 100, "status": "completed", "commit": "abc", "host": "vm", "cpu": "EPYC"}]
        (job / "status.json").write_text(json.dumps(status))
    config = OmegaConf.create({"study": {"name": "demo", "baseline": "Z-Forcing", "results_dir": "results/demo"},
                               "torch_threads": 1, "hydra": {"overrides": {"task": ["study=demo", "seed=1"]},
                                                             "launcher": {"n_jobs": 2},
                                                             "sweeper": {"params": {"ablation": "plain,kla"}}}})
    text = write_study_notes(config, sweep, results).read_text()
    assert "python train.py -m study=demo seed=1" in text and "--baseline 'Z-Forcing'" in text
    assert "jobs: 2; stopped by: max_steps 2" in text and "commit: abc (2 jobs)" in text
    assert "wall time: 1530 min from the first job's start" in text  # its first attempt, the session before
    assert "rnn_dim: 64" in text and "max_steps: 100" in text and "default_root_dir" not in text
    assert "differ between jobs (the rows): `lit.kl_weight.start`" in text
    assert "| 1 | 1 | 2026-11-30T09:00:00+00:00 | 2026-11-30T09:10:00+00:00 | 0 → – | 10 min | abc | EPYC (vm) | " \
           "interrupted |" in text
    assert "| 1 | 2 | 2026-12-01T10:00:00+00:00 | 2026-12-01T10:30:00+00:00 | 40 → 100 | 30 min |" in text
    assert "## Rows\n\n```yaml\nablation: plain,kla\n```" in text
    cells = OmegaConf.merge(config, {"hydra": {"sweeper": {"params": {"seed": "1,2"},
                                                            "cells": ["model=a", "model=b"]}}})
    rows = "params:\n  ablation: plain,kla\n  seed: 1,2\ncells:\n- model=a\n- model=b\n"
    assert rows in "\n".join(study_notes(cells, sweep))
    # a pilot reusing another study's config under its own name: the command is the one typed
    pilot = OmegaConf.merge(config, {"study": {"name": "demo_pilot"},
                                     "hydra": {"overrides": {"task": ["study=demo", "study.name=demo_pilot"]}}})
    assert "python train.py -m study=demo study.name=demo_pilot\n" in "\n".join(study_notes(pilot, sweep))
    grid = OmegaConf.merge(pilot, {"study": {"baseline": None, "choose": ["lit.kl_weight.start"],
                                             "choose_by": "val/acc"}})
    rebuild = "report results/demo --choose lit.kl_weight.start --choose-by val/acc\n"
    assert rebuild in "\n".join(study_notes(grid, sweep))
    (results / "STUDY.md").write_text(text + "\nJobs 0 and 1 were rerun.\n")
    again = write_study_notes(config, sweep, results).read_text()
    assert again.count(NOTES) == 1 and again.endswith("\nJobs 0 and 1 were rerun.\n")


def test_with_a_baseline_the_size_curves_pair_every_row_with_it_at_each_size(tmp_path: Path) -> None:
    sweep = tmp_path / "sets"
    accuracy = {"sets/lstm": {10: 1.0, 100: 0.5}, "sets/deepsets": {10: 0.9, 100: 0.9}}
    for num, (variant, seed, wobble) in enumerate((v, s, w) for v in accuracy for s, w in ((1, 0.02), (2, -0.02))):
        metrics = {f"test/acc_len{n}": acc + wobble for n, acc in accuracy[variant].items()} | {"test/acc": 0.7}
        make_job(sweep, num, [f"+variant={variant}", "data=set_parity", f"seed={seed}"], metrics,
                 config={"table_row": "LSTM" if variant == "sets/lstm" else "DeepSets"})
    write_report(sweep, baseline="LSTM")
    text = (sweep / "report.md").read_text()
    # each seed's DeepSets minus LSTM: -0.1 at size 10 and +0.4 at 100, the same on both seeds
    assert "### Test accuracy at each test size, against LSTM" in text
    assert "| (DeepSets) − (LSTM) | -0.100 [-0.100, -0.100]: worse | +0.400 [+0.400, +0.400]: better |" in text
    assert "mean absolute error" not in text and not (sweep / "size_errors.png").exists()  # no regression jobs


def test_regression_jobs_get_their_error_against_test_size_where_lower_is_better(tmp_path: Path) -> None:
    sweep = tmp_path / "sums"
    error = {"sets/lstm": {10: 1.0, 100: 150.0}, "sets/deepsets": {10: 0.5, 100: 0.5}}
    for num, (variant, seed, wobble) in enumerate((v, s, w) for v in error for s, w in ((1, 0.1), (2, -0.1))):
        metrics = ({f"test/mae_len{n}": mae + wobble for n, mae in error[variant].items()}
                   | {f"test/acc_len{n}": 0.5 for n in (10, 100)}
                   | {"test/guess_mae_len10": 7.3, "test/guess_mae_len100": 22.9})
        make_job(sweep, num, [f"+variant={variant}", "data=set_sum_regression", f"seed={seed}"], metrics,
                 config={"table_row": "LSTM" if variant == "sets/lstm" else "DeepSets"})
    write_report(sweep, baseline="LSTM")
    text = (sweep / "report.md").read_text()
    assert "## Test mean absolute error against test size" in text
    assert "| LSTM | 1.000 [-0.271, 2.271] (n=2) | 150.000 [148.729, 151.271] (n=2) |" in text
    assert "| *input-blind guess* | 7.300 | 22.900 |" in text
    # DeepSets minus LSTM: -0.5 at size 10 and -149.5 at 100, lower is better
    assert "| (DeepSets) − (LSTM) | -0.500 [-0.500, -0.500]: better | -149.500 [-149.500, -149.500]: better |" in text
    assert (sweep / "size_errors.png").stat().st_size > 10_000
