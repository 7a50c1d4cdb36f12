"""The sweep report: grouping by varying overrides, mean ± std over seeds, failed jobs, curves,
the Table 1 layout, the W&B reader, and the multirun-end callback's exit code (no training)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from zf_lightning.report.build import build_report, write_report
from zf_lightning.report.callback import SweepStatus
from zf_lightning.report.cli import main
from zf_lightning.report.jobs import Job, read_sweep, read_wandb
from zf_lightning.report.plots import mean_band
from zf_lightning.report.rows import display_names, group_rows, varying_keys
from zf_lightning.report.tables import (
    fmt,
    generalization_table,
    matched_steps,
    matched_updates_table,
    paired_table,
    read_at,
)
from zf_lightning.runs.status import failed_jobs, job_folders


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, status: str = "completed",
             error: str | None = None, curve: list[tuple[float, ...]] = (), config: dict | None = None,
             choices: dict | None = None) -> Path:
    """A job folder as train.py leaves it: .hydra/overrides.yaml (and hydra.yaml with the group
    ``choices``), status.json, metrics.json, csv. A ``curve`` point is (step, val/elbo, val/kl),
    or (step, val/elbo, val/kl, val/objective) as newer runs log it."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if choices is not None:
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    record = {"status": status} | ({"error": error, "traceback": "Traceback ...\n" + error} if error else {})
    (job / "status.json").write_text(json.dumps(record))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics | {"test/checkpoint": "best.ckpt"}))
    if curve:
        (job / "csv").mkdir()
        with (job / "csv" / "metrics.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "step", "train/loss_step", "val/elbo", "val/kl",
                                                    "val/objective"])
            writer.writeheader()
            for step, elbo, kl, *objective in curve:
                writer.writerow({"epoch": 0, "step": step, "train/loss_step": 1.0})
                writer.writerow({"epoch": 0, "step": step, "val/elbo": elbo, "val/kl": kl}
                                | ({"val/objective": objective[0]} if objective else {}))
    if config is not None:
        (job / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    return job


@pytest.fixture
def ablation_sweep(tmp_path: Path) -> tuple[Path, dict[str, list[float]]]:
    """4 ablations x 3 seeds with known test ELBOs; job 'aux, seed 3' failed. The folders predate
    ``table_row`` in the config: their rows are named from their model and ablation choices."""
    sweep = tmp_path / "sweep"
    elbos: dict[str, list[float]] = {}
    num = 0
    for a_idx, ablation in enumerate(("plain", "kla", "aux", "kla_aux")):
        for seed in (1, 2, 3):
            overrides = [f"ablation={ablation}", f"seed={seed}", "trainer.max_steps=5", "sweep=ablation"]
            if ablation == "aux" and seed == 3:
                make_job(sweep, num, overrides, None, status="failed", error="FloatingPointError: loss is nan")
            else:
                elbo = -100.0 - 3 * a_idx - 0.7 * seed * (a_idx + 1)
                elbos.setdefault(ablation, []).append(elbo)
                curve = [(10, elbo - 5 + seed, 2.0 + seed), (20, elbo, 1.0 + seed)]
                make_job(sweep, num, overrides, {"test/elbo": elbo, "test/kl": 1.5 * seed, "val/elbo": elbo},
                         curve=curve, config={}, choices={"model": "zforcing", "ablation": ablation})
            num += 1
    return sweep, elbos


def test_report_rows_are_configurations_with_mean_and_std_over_seeds(ablation_sweep) -> None:
    sweep, elbos = ablation_sweep
    rows = write_report(sweep)
    assert [r.label for r in rows] == ["ablation=plain", "ablation=kla", "ablation=aux", "ablation=kla_aux"]
    for row, (ablation, values) in zip(rows, elbos.items(), strict=True):
        mean, std, n = row.stats("test/elbo")
        assert n == len(values) == (2 if ablation == "aux" else 3)
        assert mean == pytest.approx(statistics.fmean(values))
        assert std == pytest.approx(statistics.stdev(values))
    with (sweep / "report.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["ablation"] for t in table] == ["plain", "kla", "aux", "kla_aux"]
    aux = table[2]
    assert aux["n"] == "2" and aux["failed"] == "1" and aux["failed_jobs"] == "8"
    assert float(aux["test/elbo mean"]) == pytest.approx(statistics.fmean(elbos["aux"]))
    assert float(aux["test/elbo std"]) == pytest.approx(statistics.stdev(elbos["aux"]))
    assert float(table[0]["test/kl mean"]) == pytest.approx(3.0)  # 1.5 * mean(1, 2, 3)
    assert "test/checkpoint mean" not in aux  # strings are not metrics


def test_report_markdown_mirrors_table_1_and_lists_failures(ablation_sweep) -> None:
    sweep, elbos = ablation_sweep
    write_report(sweep)
    text = (sweep / "report.md").read_text()
    assert "12 jobs, 11 completed, 1 failed" in text
    for name in ("| Z-Forcing |", "| Z-Forcing + kla |", "| Z-Forcing + aux |", "| Z-Forcing + kla, aux |"):
        assert name in text
    plain = statistics.fmean(elbos["plain"]), statistics.stdev(elbos["plain"])
    assert fmt(*plain) in text
    assert "`8` (ablation=aux, seed=3): FloatingPointError: loss is nan" in text
    assert (sweep / "curves.png").stat().st_size > 10_000


def test_seed_and_fixed_overrides_do_not_make_configurations(ablation_sweep) -> None:
    sweep, _ = ablation_sweep
    assert varying_keys(read_sweep(sweep)) == ["ablation"]


def test_curves_average_the_seeds_per_step(ablation_sweep) -> None:
    sweep, elbos = ablation_sweep
    jobs = read_sweep(sweep)
    plain = group_rows(jobs, ["ablation"])[0]
    steps, means, stds = mean_band([j.curves["val/elbo"] for j in plain.jobs])
    assert steps == [10, 20]
    assert means[1] == pytest.approx(statistics.fmean(elbos["plain"]))
    assert stds[1] == pytest.approx(statistics.stdev(elbos["plain"]))
    first = [e - 5 + seed for e, seed in zip(elbos["plain"], (1, 2, 3), strict=True)]
    assert means[0] == pytest.approx(statistics.fmean(first))


def test_table1_variant_sweep_uses_row_names_and_pivots_data(tmp_path: Path) -> None:
    """The baselines' sweep (+variant=...) with two data sets: rows are variants, columns data sets."""
    sweep = tmp_path / "t1"
    num = 0
    for variant, row in (("rnn_gauss", "RNN-Gauss"), ("zforcing_aux", "Z-Forcing + aux")):
        for data in ("timit", "blizzard"):
            for seed in (1, 2):
                value = (10.0 if data == "timit" else 20.0) + (5 if variant == "zforcing_aux" else 0) + seed
                make_job(sweep, num, [f"+variant={variant}", f"data={data}", f"seed={seed}"], {"test/elbo": value},
                         config={"table_row": row})
                num += 1
    write_report(sweep)
    text = (sweep / "report.md").read_text()
    assert "| configuration | test/elbo · timit | test/elbo · blizzard |" in text
    assert "| RNN-Gauss | 11.50 ± 0.71 (n=2) | 21.50 ± 0.71 (n=2) |" in text
    assert "| Z-Forcing + aux | 16.50 ± 0.71 (n=2) | 26.50 ± 0.71 (n=2) |" in text


def test_fmt_precision_follows_the_spread() -> None:
    assert fmt(-95.4321, 1.234) == "-95.4 ± 1.2"
    assert fmt(0.97371, 0.01627) == "0.974 ± 0.016"
    assert fmt(48.3286, math.nan) == "48.33"
    assert fmt(math.nan, math.nan) == "–"


def test_job_folders_skip_submitit_and_wandb_and_sort_numerically(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for num in (10, 2, 1):
        make_job(sweep, num, [f"seed={num}"], {"test/elbo": 1.0})
    (sweep / ".submitit" / "123").mkdir(parents=True)
    (sweep / ".submitit" / "123" / "status.json").write_text("{}")
    (sweep / "1" / "wandb" / "run").mkdir(parents=True)
    (sweep / "1" / "wandb" / "run" / "metrics.json").write_text("{}")
    assert [p.name for p in job_folders(sweep)] == ["1", "2", "10"]


def test_a_killed_worker_counts_as_failed(tmp_path: Path) -> None:
    """Rank 0 killed while 'running'; the DDP worker left its error in status.rank1.json."""
    job = make_job(tmp_path, 0, ["seed=1"], None, status="running")
    (job / "status.rank1.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    assert failed_jobs(tmp_path) == [(job, "RuntimeError: boom")]


def test_sweep_callback_writes_the_report_and_exits_nonzero_on_failures(ablation_sweep) -> None:
    sweep, _ = ablation_sweep
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit, match="1 of 12 jobs failed") as exit_info:
        SweepStatus().on_multirun_end(config=config)
    assert "8: FloatingPointError" in str(exit_info.value.code)
    assert (sweep / "report.md").exists()
    (sweep / "8" / "status.json").write_text(json.dumps({"status": "completed"}))
    (sweep / "8" / "metrics.json").write_text(json.dumps({"test/elbo": -110.0}))
    SweepStatus().on_multirun_end(config=config)  # all succeeded: no exit


def test_cli_writes_into_another_folder(ablation_sweep, tmp_path: Path, capsys) -> None:
    sweep, _ = ablation_sweep
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--metric", "test/kl"]) == 0
    assert "## test/kl" in (tmp_path / "out" / "report.md").read_text()
    assert "4 configurations, 1 failed jobs" in capsys.readouterr().out


def test_wandb_project_runs_become_the_same_report(tmp_path: Path) -> None:
    """The W&B reader on a stand-in for wandb.Api(): overrides from the logged job info."""

    def run(run_id: str, ablation: str, seed: int, elbo: float, state: str = "finished") -> SimpleNamespace:
        history = [{"trainer/global_step": 5, "val/elbo": elbo - 1, "val/kl": 2.0},
                   {"trainer/global_step": 10, "val/elbo": elbo, "val/kl": 1.0}]
        return SimpleNamespace(
            id=run_id, name=f"ablation={ablation},seed={seed}", state=state,
            config={"job": {"overrides": [f"ablation={ablation}", f"seed={seed}"]}},
            summary={"test/elbo": elbo} if state == "finished" else {},
            scan_history=lambda keys, h=history: iter(h),
        )

    runs = [run("a", "plain", 1, -100.0), run("b", "plain", 2, -102.0), run("c", "aux", 1, -98.0),
            run("d", "aux", 2, 0.0, state="crashed")]
    calls = []

    class Api:
        def runs(self, path: str, filters: dict | None = None) -> list[SimpleNamespace]:
            calls.append((path, filters))
            return runs

    jobs = read_wandb("me/zf", group="sweep-1", api=Api())
    assert calls == [("me/zf", {"group": "sweep-1"})]
    rows = build_report(jobs, tmp_path, "W&B me/zf")
    assert [r.label for r in rows] == ["ablation=plain", "ablation=aux"]
    assert rows[0].stats("test/elbo") == pytest.approx((-101.0, math.sqrt(2.0), 2))
    assert len(rows[1].failed) == 1 and rows[1].stats("test/elbo")[2] == 1
    assert jobs[0].curves["val/elbo"] == [(5, -101.0), (10, -100.0)]


def test_a_resumed_job_is_grouped_by_its_own_overrides_not_the_resume_command(tmp_path: Path) -> None:
    for num, seed in ((0, 1), (1, 2)):
        job = make_job(tmp_path, num, ["ckpt_path=last"] if num else ["ablation=aux", f"seed={seed}"],
                       {"test/elbo": -float(seed)})
        status = {"status": "completed", "job": {"overrides": ["ablation=aux", f"seed={seed}"]}}
        (job / "status.json").write_text(json.dumps(status))
    (row,) = write_report(tmp_path)
    assert row.label == "all jobs" and row.stats("test/elbo")[2] == 2


def test_the_report_ignores_the_keys_hydra_leaves_out_of_a_job_name() -> None:
    from zf_lightning.report.jobs import Job
    from zf_lightning.report.rows import excluded_override_keys
    from zf_lightning.runs.pipeline import compose_config

    cfg = compose_config("train", ["paths.output_dir=unused"], return_hydra_config=True)
    assert excluded_override_keys() == tuple(cfg.hydra.job.config.override_dirname.exclude_keys)
    jobs = [Job(name=str(n), overrides={"ablation": a, "trainer.max_steps": str(steps), "torch_threads": str(n),
                                        "paths.log_dir": f"logs/{n}"}, status="completed")
            for n, (a, steps) in enumerate((("kla", 100), ("aux", 200)))]
    assert varying_keys(jobs) == ["ablation"]


def test_a_jobs_config_names_its_table_row_without_the_model_classes() -> None:
    """Z-Forcing's ablations carry Table 1's names (zf_lightning/conf/row/); another model with the same
    ablation names no row, and a variant's or study's own name wins."""
    from zf_lightning.runs.pipeline import compose_config

    def table_row(*overrides: str) -> str | None:
        return compose_config("train", [*overrides, "paths.output_dir=unused"]).get("table_row")

    assert table_row("ablation=kla") == "Z-Forcing + kla"
    assert table_row("ablation=kla_aux") == "Z-Forcing + kla, aux"
    assert table_row("model=vrnn", "ablation=kla") is None
    assert table_row("model=rnn") is None
    assert table_row("+variant=rnn_gauss") == "RNN-Gauss"
    assert table_row("study=mnist_aux_weight") == "Z-Forcing + kla, aux (aux weight 0.1)"


def test_an_old_job_folder_without_table_row_is_named_from_its_group_choices(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["ablation=kla", "seed=1"], {"test/elbo": -1.0}, config={},
             choices={"model": "zforcing", "ablation": "kla"})
    make_job(tmp_path, 1, ["ablation=kla", "seed=2"], {"test/elbo": -1.0}, config={},
             choices={"model": "vrnn", "ablation": "kla"})
    make_job(tmp_path, 2, ["ablation=aux", "seed=3"], {"test/elbo": -1.0}, config={"table_row": "mine"},
             choices={"model": "zforcing", "ablation": "aux"})
    assert [j.table_row for j in read_sweep(tmp_path)] == ["Z-Forcing + kla", None, "mine"]


def test_curves_csv_keeps_the_validation_accuracy_of_classification_jobs(tmp_path: Path) -> None:
    # whether a capacity run was still learning at its cap is read from val/acc over updates
    sweep = tmp_path / "sweep"
    job = make_job(sweep, 0, ["model=rnn", "width=8", "data.length=8"], {"test/acc": 0.9})
    (job / "csv").mkdir()
    with (job / "csv" / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "step", "val/elbo", "val/kl", "val/acc"])
        writer.writeheader()
        writer.writerows([{"epoch": 0, "step": 249, "val/elbo": -1.2, "val/kl": 0.0, "val/acc": 0.4},
                          {"epoch": 0, "step": 499, "val/elbo": -0.3, "val/kl": 0.0, "val/acc": 0.9}])
    main([str(sweep), "--out", str(tmp_path / "out")])
    with (tmp_path / "out" / "curves.csv").open(newline="") as fh:
        acc = [(r["step"], float(r["value"])) for r in csv.DictReader(fh) if r["metric"] == "val/acc"]
    assert acc == [("249", 0.4), ("499", 0.9)]


def test_study_notes_with_several_folders_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # it used to be ignored without a word, leaving a STUDY.md that described only one folder
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=1"], {"test/elbo": -1.0})
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main([str(sweep), str(sweep), "--out", str(out), "--study-notes"])
    assert not out.exists()


def test_a_job_with_a_corrupt_record_is_listed_as_unreadable_and_the_rest_reported(ablation_sweep) -> None:
    sweep, elbos = ablation_sweep
    (sweep / "0" / "metrics.json").write_text('{"test/elbo": -101.')  # cut short
    (sweep / "4" / "status.json").write_text("not json at all")
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "12 jobs, 9 completed, 3 failed" in text
    assert f"`0` (ablation=plain, seed=1): {sweep / '0' / 'metrics.json'} is not readable JSON" in text
    assert f"`4` (ablation=kla, seed=2): {sweep / '4' / 'status.json'} is not readable JSON" in text
    with (sweep / "jobs.csv").open() as fh:
        jobs = {row["job"]: row for row in csv.DictReader(fh)}
    assert jobs["0"]["status"] == jobs["4"]["status"] == "unreadable"
    assert float(jobs["1"]["test/elbo"]) == pytest.approx(elbos["plain"][1])
    failures = dict(failed_jobs(sweep))
    assert "metrics.json is not readable JSON" in failures[sweep / "0"]
    assert "status.json is not readable JSON" in failures[sweep / "4"]


def test_a_failed_jobs_reason_shows_the_keys_its_message_names(tmp_path: Path) -> None:
    error = ("ValueError: invalid settings:\n  model.z_dim=0: a layer size must be a positive integer\n"
             "  data.batch_size=0: must be >= 1")
    make_job(tmp_path, 0, ["seed=1"], {"test/elbo": -100.0})
    make_job(tmp_path, 1, ["seed=2"], None, status="failed", error=error)
    reason = ("ValueError: invalid settings: model.z_dim=0: a layer size must be a positive integer; "
              "data.batch_size=0: must be >= 1")
    write_report(tmp_path)
    assert f"`1` (seed=2): {reason}" in (tmp_path / "report.md").read_text()
    with (tmp_path / "jobs.csv").open() as fh:
        assert [row["error"] for row in csv.DictReader(fh)] == ["", reason]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit, match=reason):
        SweepStatus(report=False).on_multirun_end(config=config)


def _curve_job(name: str, seed: int, points: list[tuple[int, float]], stop: str) -> Job:
    return Job(name=name, overrides={"ablation": name, "seed": str(seed)}, status="completed",
               metrics={"test/elbo": points[-1][1]}, curves={"val/elbo": points},
               info={"stop_reason": stop, "updates": str(points[-1][0])})


def test_rows_read_at_matched_updates_flag_an_order_that_changes_and_say_where_they_were_read() -> None:
    """'a' leads early, 'b' overtakes after update 2,000; 'a' stopped at its cap at 3,000, 'b'
    converged at 5,000: the rows are compared at 2,000 and 3,000 (every run reached both)."""
    jobs = [_curve_job("a", s, [(1000, -50.0), (2000, -20.0), (3000, -15.0)], "max_steps") for s in (1, 2)]
    jobs += [_curve_job("b", s, [(1000, -90.0), (2000, -30.0), (3000, -5.0), (5000, 0.0)], "converged")
             for s in (1, 2)]
    rows = group_rows(jobs, ["ablation"])
    assert matched_steps(rows) == [2000, 3000]
    table, flips = matched_updates_table(rows)
    assert table[0] == "| row | val/elbo at update 2,000 | val/elbo at update 3,000 |"
    assert flips == ["ablation=a / ablation=b"]
    assert read_at(rows[1]) == "convergence"
    assert read_at(*rows) == "a budget (max_steps, capped while improving: 2)"
    paired = paired_table(rows, rows[1].name, "test/elbo")
    assert paired[2].startswith(f"| ({rows[0].name}) − ({rows[1].name}) | 2 | -15.00 |")
    # 'a' rose over its last 20 % when its cap stopped it: the difference is no verdict on the methods
    assert "| cannot tell (capped while improving; worse at this budget) | a budget (" in paired[2]
    flat = [_curve_job("a", s, [(1000, -50.0), (2000, -15.0), (3000, -15.0)], "max_steps") for s in (1, 2)]
    flat_rows = group_rows(flat + jobs[2:], ["ablation"])
    assert read_at(*flat_rows) == "a budget (max_steps: 2)"
    assert "| worse | a budget (max_steps: 2) |" in paired_table(flat_rows, flat_rows[1].name, "test/elbo")[2]
    same = group_rows([_curve_job("c", s, [(1000, -1.0), (3000, 0.0)], "max_steps") for s in (1, 2)], ["ablation"])
    assert matched_steps(same) == [] and matched_updates_table(same) == ([], [])


def test_jobs_still_running_or_interrupted_are_not_called_failed(tmp_path: Path) -> None:
    done = _curve_job("a", 1, [(1000, -50.0), (2000, -20.0)], "max_steps")
    running = Job(name="1", overrides={"ablation": "a", "seed": "2"}, status="running",
                  curves={"val/elbo": [(1000, -60.0)]})
    build_report([done, running], tmp_path, "study")
    text = (tmp_path / "report.md").read_text()
    assert "2 jobs, 1 completed, 1 not finished (running or interrupted), 0 failed." in text
    assert "## Jobs not finished" in text and "- `1` (seed=2): running, 1 validations so far" in text
    assert "## Failed jobs" not in text


def test_a_running_job_is_counted_as_not_finished_in_the_headline_table(tmp_path: Path) -> None:
    cells = [("lstm", "a", "completed", "LSTM"), ("lstm", "b", "completed", "LSTM"),
             ("sire", "a", "completed", "SIRE"), ("sire", "b", "running", "SIRE"), ("deep", "a", "failed", "DeepSets")]
    jobs = [Job(name=str(i), overrides={"variant": v, "data": d, "seed": "1"}, status=status,
                metrics={"test/elbo": -1.0} if status == "completed" else {}, table_row=row)
            for i, (v, d, status, row) in enumerate(cells)]
    rows = group_rows(jobs, ["variant", "data"])
    assert [len(r.failed) for r in rows] == [0, 0, 0, 0, 1] and [len(r.unfinished) for r in rows] == [0, 0, 0, 1, 0]
    build_report(jobs, tmp_path, "study")
    text = (tmp_path / "report.md").read_text()
    assert "| SIRE | -1 (n=1) | – (n=0, 1 not finished) |" in text
    assert "| DeepSets | – (n=0, 1 failed) |  |" in text


def test_rows_sharing_a_name_are_told_apart_by_the_overrides_that_differ() -> None:
    jobs = [Job(name=str(i), overrides={"variant": v, "data": d, "seed": "1"}, status="completed", table_row=row)
            for i, (v, d, row) in enumerate([("lstm", "a", "LSTM"), ("lstm", "b", "LSTM"), ("deep", "a", "DeepSets"),
                                             ("plain", "a", None), ("plain", "b", None)])]
    assert display_names(group_rows(jobs, ["variant", "data"])) == [
        "LSTM · data=a", "LSTM · data=b", "DeepSets", "variant=plain, data=a", "variant=plain, data=b"]


def test_the_training_bound_is_read_against_the_validation_bound_at_the_best_checkpoint_and_the_end() -> None:
    def job(name: str, model: str, seed: str, best: int, train: list, val: list) -> Job:
        return Job(name, {"model": model, "seed": seed}, "completed", metrics={"test/elbo": 0.0},
                   curves={"train/elbo": train, "val/elbo": val}, info={"best_step": str(best), "stop_reason": "x"})

    # validations at 249 / 499 / 749 (checkpoints at 250 / 500 / 750); epochs end at 200, 400, 600, 800
    train = [(200, 10.0), (400, 20.0), (600, 30.0), (800, 40.0)]
    jobs = [job("0", "a", "1", 500, train, [(249, 5.0), (499, 8.0), (749, 6.0)]),
            job("1", "a", "2", 500, [(s, v + 2.0) for s, v in train], [(249, 5.0), (499, 10.0), (749, 7.0)]),
            Job("2", {"model": "b", "seed": "1"}, "completed", metrics={"test/elbo": 0.0},
                curves={"val/elbo": [(249, 1.0)]}, info={"best_step": "250"})]
    rows = group_rows(jobs, ["model"])
    table = generalization_table(rows)
    # a: training 20 and 22 at the epoch before update 500, validation 8 and 10: gaps 12, 12; at the
    # last validation (749) the epoch of 600: 30 - 6 and 32 - 7
    assert table[2] == "| model=a | 2 | 21.0 ± 1.4 | 9.0 ± 1.4 | 12 | 24.50 ± 0.71 |"
    assert len(table) == 3  # b never recorded its training bound: no row, rather than a made-up one
    assert generalization_table(group_rows(jobs[2:], ["model"])) == []
