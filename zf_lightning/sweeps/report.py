"""Turn a sweep's output folder into a paper-style comparison, without any server.

``python -m zf_lightning.report <sweep dir>`` writes into the sweep folder:

* ``report.md``: one row per configuration (the overrides that vary across jobs, the seed
  excluded), the headline test metric as mean ± standard deviation over seeds (laid out
  like Table 1 of the paper: one column per data set when the data varies), n and failed
  jobs; then every test metric, and the failed jobs with their errors.
* ``report.csv``: the same rows, every test metric as ``<metric> mean`` / ``<metric> std``.
* ``curves.png``: validation ELBO and KL against the update step, per configuration, the
  mean over seeds with a ±1 standard deviation band (from each job's ``csv/metrics.csv``).
* ``jobs.csv`` (one line per job: row, seed, why it stopped, updates, every metric) and
  ``curves.csv`` (every job's validation curves): the report can be rebuilt from these two
  files alone, e.g. from a study committed under ``results/``.

With ``--baseline ROW`` the report adds each row's paired difference against that row
(``zf_lightning.sweeps.stats``); jobs that record why they stopped add how the runs ended
and whether the rows' ordering is stable over the last part of the curves.
Standard deviations are sample deviations (n - 1 in the denominator), empty for n = 1.
``--wandb ENTITY/PROJECT [--group G]`` reads the runs from W&B instead (needs network).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf

from zf_lightning.runs.checkpoint import migrate_target
from zf_lightning.runs.status import (
    COMPLETED,
    UnreadableRecordError,
    error_summary,
    job_folders,
    read_metrics,
    read_status,
)
from zf_lightning.runs.stopping import bound_diverged
from zf_lightning.sweeps.heatmap import add_capacity_heatmaps, capacity_headline
from zf_lightning.sweeps.size_curves import SizeSeries, add_job, has_curves, size_tables, write_size_curves
from zf_lightning.sweeps.stats import higher_is_better, mean_std, paired_difference
from zf_lightning.sweeps.study import write_study_notes
from zf_lightning.types import HasAuxCost

SEED_KEYS = ("seed",)
# overrides that do not make a configuration (paths, resume bookkeeping, Hydra's own)
# (the keys conf/hydra/default.yaml leaves out of a job's name, plus Hydra's and the paths)
IGNORED_PREFIXES = ("hydra.", "paths.", "ckpt_path", "auto_resume", "continue_on_failure", "trainer.max_steps",
                    "torch_threads", "skip_completed")
CURVE_KEYS = ("val/elbo", "val/kl")  # plotted
EXPORT_CURVE_KEYS = (*CURVE_KEYS, "val/aux", "val/acc")  # kept in curves.csv (acc: classification tasks)
HEADLINE = "test/elbo"
JOBS_CSV, CURVES_CSV = "jobs.csv", "curves.csv"
# per-job facts that are not metrics: why it stopped, how long it ran, which code ran it
INFO_KEYS = ("stop_reason", "diverged", "updates", "best_step", "started", "finished", "commit")
# Table 1's row names for the ablation sweep on Z-Forcing
ABLATION_ROWS = {"plain": "Z-Forcing", "kla": "Z-Forcing + kla", "aux": "Z-Forcing + aux",
                 "kla_aux": "Z-Forcing + kla, aux"}


@dataclass
class Job:
    """One job's record: its overrides, outcome, final metrics and validation curves."""

    name: str
    overrides: dict[str, str]
    status: str
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    row_name: str | None = None  # e.g. Table 1's "Z-Forcing + aux", from the job's config
    info: dict[str, str] = field(default_factory=dict)  # INFO_KEYS, as strings

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED and bool(self.metrics)

    @property
    def seed(self) -> str:
        return next((self.overrides[k] for k in SEED_KEYS if k in self.overrides), "default")


@dataclass
class Row:
    """One configuration: its jobs aggregated over seeds."""

    key: tuple[tuple[str, str], ...]
    label: str
    jobs: list[Job]

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]

    def stats(self, metric: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation (nan for n < 2) and n of a metric over seeds."""
        values = [j.metrics[metric] for j in self.done if math.isfinite(j.metrics.get(metric, math.nan))]
        if not values:
            return math.nan, math.nan, 0
        return (*mean_std(values), len(values))


# ---------------------------------------------------------------------------- reading jobs
def parse_override(text: str) -> tuple[str, str] | None:
    if "=" not in text or text.startswith("~"):
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out[k] = float(v)
    return out


def read_curves(csv_path: Path, keys: Iterable[str] = CURVE_KEYS) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each key from a Lightning CSV log; the last value wins per step."""
    curves: dict[str, dict[int, float]] = {k: {} for k in keys}
    if csv_path.is_file():
        with csv_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                for key in curves:
                    if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                        curves[key][int(float(row["step"]))] = float(row[key])
    return {k: sorted(v.items()) for k, v in curves.items() if v}


def _has_aux_cost(target: str) -> bool:
    """Whether the stored model class declares the auxiliary cost (the ablation rows are its rows)."""
    try:
        return issubclass(get_class(migrate_target(target)), HasAuxCost)
    except (ImportError, ValueError):  # a class that no longer exists names no row
        return False


def _row_name(config: Any, overrides: dict[str, str]) -> str | None:
    """The Table-1 row of a job: its config's ``table_row``, else the row of its Z-Forcing ablation."""
    if isinstance(config, dict) and config.get("table_row"):
        return str(config["table_row"])
    model = str(((config or {}).get("model") or {}).get("_target_", "")) if isinstance(config, dict) else ""
    ablation = overrides.get("ablation")
    if ablation in ABLATION_ROWS and (not model or _has_aux_cost(model)):
        return ABLATION_ROWS[ablation]
    return None


UNREADABLE = "unreadable"  # a job whose status.json or metrics.json cannot be parsed


def _hydra_overrides(job_dir: Path) -> list[Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    try:
        raw = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    except yaml.YAMLError:
        return []
    return raw if isinstance(raw, list) else []


def _overrides(raw: Iterable[Any]) -> dict[str, str]:
    return dict(p for p in (parse_override(str(o)) for o in raw) if p is not None)


def read_job(job_dir: Path, sweep_dir: Path) -> Job:
    """One job folder; a job whose status.json or metrics.json cannot be read is kept as an
    ``unreadable`` job naming the file, so one damaged record never stops the whole report."""
    try:
        status = read_status(job_dir)
        metrics_file = job_dir / "metrics.json"
        metrics = _numeric(read_metrics(metrics_file)) if metrics_file.is_file() else {}
    except UnreadableRecordError as err:
        return Job(name=str(job_dir.relative_to(sweep_dir)), overrides=_overrides(_hydra_overrides(job_dir)),
                   status=UNREADABLE, error=str(err))
    # status.json keeps the job's own overrides; Hydra rewrites .hydra/ when a run is resumed
    raw = (status.get("job") or {}).get("overrides")
    overrides = _overrides(_hydra_overrides(job_dir) if raw is None else raw)
    state = status.get("status") or (COMPLETED if metrics else "unknown")
    if state != COMPLETED and not status.get("error"):
        error = f"status: {state}" + ("" if metrics else ", no metrics.json")
    else:
        error = str(status.get("error") or "")
    config_file = job_dir / "config_resolved.yaml"
    try:
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    except yaml.YAMLError:
        config = {}  # only names the row; the job's numbers are in its JSON records
    info = {k: str(status[k]) for k in INFO_KEYS if status.get(k) is not None}
    if (status.get("code") or {}).get("commit"):
        info["commit"] = status["code"]["commit"] + ("+dirty" if status["code"].get("dirty") else "")
    return Job(name=str(job_dir.relative_to(sweep_dir)), overrides=overrides, status=state, error=error,
               metrics=metrics, curves=read_curves(job_dir / "csv" / "metrics.csv", EXPORT_CURVE_KEYS),
               row_name=_row_name(config, overrides), info=info)


def read_sweep(sweep_dir: Path) -> list[Job]:
    return [read_job(job, sweep_dir) for job in job_folders(sweep_dir)]


def write_jobs_csv(path: Path, jobs: list[Job]) -> None:
    """One line per job: its row, seed, outcome, why it stopped, every metric and its overrides,
    enough to rebuild the report without the job folders (``read_jobs_csv``)."""
    metrics = sorted({k for j in jobs for k in j.metrics})
    header = ["job", "row", "seed", "status", *INFO_KEYS, *metrics, "overrides", "error"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for job in jobs:
            info = [job.info.get(k, "") for k in INFO_KEYS]
            writer.writerow([job.name, job.row_name or "", job.seed, job.status, *info,
                             *[repr(job.metrics[m]) if m in job.metrics else "" for m in metrics],
                             " ".join(f"{k}={v}" for k, v in job.overrides.items()),
                             error_summary(job.error or "")])


def write_curves_csv(path: Path, jobs: list[Job]) -> None:
    """Every job's validation curves as long-format rows: job, metric, step, value."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job", "metric", "step", "value"])
        for job in jobs:
            for key, points in job.curves.items():
                writer.writerows([job.name, key, step, repr(value)] for step, value in points)


def read_jobs_csv(directory: Path) -> list[Job]:
    """Jobs from a committed study folder (``jobs.csv`` and ``curves.csv``), without job folders."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if (directory / CURVES_CSV).is_file():
        with (directory / CURVES_CSV).open(newline="") as fh:
            for row in csv.DictReader(fh):
                curves.setdefault(row["job"], {}).setdefault(row["metric"], []).append(
                    (int(row["step"]), float(row["value"])))
    jobs = []
    with (directory / JOBS_CSV).open(newline="") as fh:
        for row in csv.DictReader(fh):
            fixed = {"job", "row", "seed", "status", *INFO_KEYS, "overrides", "error"}
            metrics = {k: float(v) for k, v in row.items() if k not in fixed and v not in ("", None)}
            overrides = dict(p for p in (parse_override(o) for o in row["overrides"].split()) if p is not None)
            jobs.append(Job(name=row["job"], overrides=overrides, status=row["status"], error=row["error"],
                            metrics=metrics, curves={k: sorted(v) for k, v in curves.get(row["job"], {}).items()},
                            row_name=row["row"] or None, info={k: row[k] for k in INFO_KEYS if row.get(k)}))
    return jobs


# ---------------------------------------------------------------------------- grouping
def varying_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order), seed excluded."""
    keys: list[str] = []
    for job in jobs:
        for key in job.overrides:
            if key not in keys:
                keys.append(key)
    out = []
    for key in keys:
        if key in SEED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if len({job.overrides.get(key) for job in jobs}) > 1:
            out.append(key)
    return out


def group_rows(jobs: list[Job], keys: list[str]) -> list[Row]:
    """One row per configuration, in the order the sweep ran them."""
    rows: dict[tuple, Row] = {}
    for job in jobs:
        key = tuple((k, job.overrides.get(k, "")) for k in keys)
        if key not in rows:
            # a key another study's jobs set but this job does not is no part of its label
            label = ", ".join(f"{k}={v}" for k, v in key if v != "") or "all jobs"
            rows[key] = Row(key, label, [])
        rows[key].jobs.append(job)
    return list(rows.values())


def row_name(row: Row) -> str:
    names = {j.row_name for j in row.jobs if j.row_name}
    return names.pop() if len(names) == 1 else row.label


def display_names(rows: list[Row]) -> list[str]:
    """Row names for legends: the Table 1 name where it tells the rows apart, else the overrides."""
    names = [row_name(r) for r in rows]
    return [n if names.count(n) == 1 else r.label for n, r in zip(names, rows, strict=True)]


def metric_names(jobs: list[Job]) -> list[str]:
    names = sorted({k for j in jobs for k in j.metrics if k.startswith("test/")})
    return ([HEADLINE] if HEADLINE in names else []) + [n for n in names if n != HEADLINE]


# ---------------------------------------------------------------------------- writing
def fmt(mean: float, std: float) -> str:
    """``mean ± std`` with the precision the spread warrants (4 significant digits without one)."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std) or std == 0:
        return f"{mean:.4g}"
    decimals = min(6, max(0, 1 - math.floor(math.log10(abs(std)))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def headline_table(rows: list[Row], keys: list[str], metric: str) -> list[str]:
    """Table 1's layout: rows = configurations, one column per data set when the data varies."""
    if "data" in keys and len(keys) > 1:
        rest = [k for k in keys if k != "data"]
        datasets = list(dict.fromkeys(dict(r.key)["data"] for r in rows))
        by_config: dict[tuple, dict[str, Row]] = {}
        for row in rows:
            by_config.setdefault(tuple((k, dict(row.key)[k]) for k in rest), {})[dict(row.key)["data"]] = row
        body = []
        for config, cells in by_config.items():
            first = next(iter(cells.values()))
            label = row_name(first) if first.jobs[0].row_name else ", ".join(f"{k}={v}" for k, v in config)
            entries = []
            for data in datasets:
                row = cells.get(data)
                if row is None:
                    entries.append("")
                    continue
                mean, std, n = row.stats(metric)
                entries.append(f"{fmt(mean, std)} (n={n}" + (f", {len(row.failed)} failed)" if row.failed else ")"))
            body.append([label, *entries])
        return _md_table(["configuration", *[f"{metric} · {d}" for d in datasets]], body)
    body = []
    for row in rows:
        mean, std, n = row.stats(metric)
        body.append([row_name(row), row.label, fmt(mean, std), str(n), str(len(row.failed))])
    return _md_table(["model", "overrides", f"{metric} (mean ± std)", "n", "failed"], body)


def _curve_value(points: list[tuple[int, float]], step: float) -> float:
    """The curve's value at the last validation at or before ``step`` (nan before the first)."""
    before = [v for s, v in points if s <= step]
    return before[-1] if before else math.nan


def late_improvement(job: Job, key: str = "val/elbo", fraction: float = 0.2) -> float:
    """How much ``key`` changed over the last ``fraction`` of the job's updates (nan without a curve)."""
    points = job.curves.get(key) or []
    if len(points) < 2:
        return math.nan
    last = points[-1][0]
    return points[-1][1] - _curve_value(points, last * (1 - fraction))


def diverged(job: Job, key: str = "val/elbo") -> bool:
    """The job's recorded ``diverged`` flag; for jobs from before it was recorded, the same rule
    read from the curve: the last validation bound is worse than the first."""
    if job.info.get("diverged") in ("True", "False"):
        return job.info["diverged"] == "True"
    points = job.curves.get(key) or []
    # the curve is the ELBO (higher is better): its negation is the bound the rule reads
    return len(points) >= 2 and bound_diverged(-points[0][1], -points[-1][1])


def runs_table(rows: list[Row]) -> list[str]:
    """How each row's runs ended: converged or capped, updates, best update, late improvement."""
    body = []
    for row, name in zip(rows, display_names(rows), strict=True):
        done = row.done
        reasons = Counter(job.info.get("stop_reason", "unknown") for job in done)
        updates = [float(j.info["updates"]) for j in done if j.info.get("updates")]
        best = [float(j.info["best_step"]) for j in done if j.info.get("best_step") not in (None, "", "None")]
        late = [v for v in (late_improvement(j) for j in done) if math.isfinite(v)]
        body.append([
            name, str(len(done)), ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "–",
            str(sum(diverged(j) for j in done)),
            (f"{statistics.fmean(updates):.0f} [{min(updates):.0f}–{max(updates):.0f}]" if updates else "–"),
            f"{statistics.fmean(best):.0f}" if best else "–",
            fmt(*mean_std(late)) if late else "–",
        ])
    return _md_table(["row", "runs", "stopped by", "diverged (last bound worse than the first)",
                      "updates (mean [min–max])", "best checkpoint at update (mean)",
                      "val/elbo gain over the last 20 % of updates"], body)


def paired_table(rows: list[Row], baseline: str, metric: str) -> list[str]:
    """Each row against the baseline row, paired by seed (see ``zf_lightning.sweeps.stats``).

    When several rows carry the baseline's name (the same model on several data sets), each row
    is compared with the baseline row that shares its other settings (its data set), and the
    table names those settings."""
    names = [row_name(r) for r in rows]
    bases = [r for r, n in zip(rows, names, strict=True) if n == baseline]
    if not bases:
        raise ValueError(f"baseline row {baseline!r} is not among the rows: {sorted(set(names))}")
    context = [k for k, _ in bases[0].key if len({dict(b.key)[k] for b in bases}) > 1]
    by_context = {tuple(dict(b.key)[k] for k in context): b for b in bases}
    better = higher_is_better(metric)
    body = []
    for row, name in zip(rows, names, strict=True):
        values = tuple(dict(row.key).get(k, "") for k in context)
        base = by_context.get(values)
        if row in bases or base is None:
            continue
        diff = paired_difference({j.seed: j.metrics[metric] for j in base.done if metric in j.metrics},
                                 {j.seed: j.metrics[metric] for j in row.done if metric in j.metrics}, better)
        interval = "–" if math.isnan(diff.low) else f"[{diff.low:.2f}, {diff.high:.2f}]"
        se = "–" if math.isnan(diff.se) else f"{diff.se:.2f}"
        label = name + "".join(f" · {k}={v}" for k, v in zip(context, values, strict=True))
        mean = "–" if math.isnan(diff.mean) else f"{diff.mean:+.2f}"
        body.append([label, str(diff.n), mean, se, interval, diff.verdict])
    return _md_table(["row", "paired seeds", f"mean difference in {metric}", "standard error",
                      "95 % t-interval", "verdict"], body)


def ordering_table(rows: list[Row], key: str = "val/elbo", fractions: tuple[float, ...] = (0.6, 0.8, 1.0)) -> list[str]:
    """Row means of a validation curve at fractions of each run's own updates (runs that stopped
    early are read at their own end): is the rows' ordering stable over the last part of the curves?"""
    if not any(j.curves.get(key) for r in rows for j in r.done):
        return []
    header = ["row", *[f"{key} at {f:.0%} of each run's updates" for f in fractions]]
    body = []
    for row, name in zip(rows, display_names(rows), strict=True):
        cells = []
        for f in fractions:
            values = [v for j in row.done if j.curves.get(key)
                      if math.isfinite(v := _curve_value(j.curves[key], j.curves[key][-1][0] * f))]
            cells.append(fmt(*mean_std(values)) if values else "–")
        body.append([name, *cells])
    return _md_table(header, body)


def write_markdown(path: Path, sweep: str, jobs: list[Job], rows: list[Row], keys: list[str],
                   metrics: list[str], headline: str, baseline: str | None = None) -> None:
    failed = [j for j in jobs if not j.ok]
    lines = [f"# Sweep report: {sweep}", "",
             f"{len(jobs)} jobs, {len(jobs) - len(failed)} completed, {len(failed)} failed. "
             f"Configurations differ in: {', '.join(keys) or 'nothing (one configuration)'}; "
             "mean ± sample standard deviation over seeds.", ""]
    if headline in metrics:
        lines += [f"## {headline}", "", *headline_table(rows, keys, headline), ""]
    if baseline is not None and headline in metrics:
        lines += [f"## Paired differences against {baseline}", "",
                  f"Per seed, {headline} of the row minus that of {baseline}; mean, standard error and a 95 % "
                  "Student-t interval on the paired differences (n - 1 degrees of freedom). The verdict says "
                  "better or worse only when the interval excludes zero.", "",
                  *paired_table(rows, baseline, headline), ""]
    if any(j.info.get("stop_reason") for j in jobs):
        lines += ["## How the runs ended", "", *runs_table(rows), ""]
        ordering = ordering_table(rows)
        if ordering:
            lines += ["### Is the ordering stable over the last part of the curves?", "",
                      "Mean validation bound of each row at fractions of each run's own updates.", "",
                      *ordering, ""]
    if metrics:
        lines += ["## All test metrics", ""]
        body = [[row.label, *[fmt(*row.stats(m)[:2]) for m in metrics], str(len(row.done)), str(len(row.failed))]
                for row in rows]
        lines += [*_md_table(["configuration", *metrics, "n", "failed"], body), ""]
    if failed:
        lines += ["## Failed jobs", ""]
        shown = [*keys, *SEED_KEYS]
        lines += [f"- `{j.name}` ({', '.join(f'{k}={v}' for k, v in j.overrides.items() if k in shown)}): "
                  f"{error_summary(j.error or j.status)}" for j in failed]
        lines.append("")
    lines += ["## Validation curves", "", "![validation ELBO and KL](curves.png)", ""]
    path.write_text("\n".join(lines))


def write_csv(path: Path, rows: list[Row], keys: list[str], metrics: list[str]) -> None:
    header = ["configuration", "name", *keys, "n", "failed", "failed_jobs"]
    for m in metrics:
        header += [f"{m} mean", f"{m} std"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            values = dict(row.key)
            cells: list[Any] = [row.label, row_name(row), *[values[k] for k in keys], len(row.done), len(row.failed),
                                " ".join(j.name for j in row.failed)]
            for m in metrics:
                mean, std, _ = row.stats(m)
                cells += [repr(mean), "" if math.isnan(std) else repr(std)]
            writer.writerow(cells)


def mean_band(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and sample standard deviation at every step any job logged (over the jobs that logged a
    finite value there: a diverged run's NaN would otherwise break the statistics and the plot)."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, value in points:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def write_curves(path: Path, rows: list[Row], keys: Iterable[str] = CURVE_KEYS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for row, name in zip(rows, display_names(rows), strict=True):
            series = [j.curves[key] for j in row.jobs if j.curves.get(key)]
            if not series:
                continue
            steps, means, stds = mean_band(series)
            line = ax.plot(steps, means, marker="o" if len(steps) < 20 else None, label=name)[0]
            ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_size_curves(rows: list[Row], out_dir: Path, report: Path) -> bool:
    """Accuracy against test size (``size_curves.png`` and tables in the report) when the jobs
    report accuracy at several test sizes: one panel per data set, one line per row."""
    series: SizeSeries = {}
    for row in rows:
        for job in row.done:
            add_job(series, job.overrides.get("data", "data"), row_name(row), job.metrics)
    if not has_curves(series):
        return False
    write_size_curves(out_dir / "size_curves.png", series)
    lines = ["## Test accuracy against test size", "",
             "Mean ± standard deviation over seeds of `test/acc_len<size>`.", "", *size_tables(series),
             "![test accuracy against test size](size_curves.png)", ""]
    with report.open("a") as fh:
        fh.write("\n" + "\n".join(lines))
    return True


def build_report(jobs: list[Job], out_dir: Path, title: str, headline: str = HEADLINE,
                 baseline: str | None = None) -> list[Row]:
    """Write report.md, report.csv, curves.png, jobs.csv and curves.csv for these jobs; returns the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(jobs)
    rows = group_rows(jobs, keys)
    metrics = metric_names(jobs)
    headline = capacity_headline(jobs, headline, HEADLINE)
    write_markdown(out_dir / "report.md", title, jobs, rows, keys, metrics, headline, baseline)
    write_csv(out_dir / "report.csv", rows, keys, metrics)
    write_curves(out_dir / "curves.png", rows)
    write_jobs_csv(out_dir / JOBS_CSV, jobs)
    write_curves_csv(out_dir / CURVES_CSV, jobs)
    add_capacity_heatmaps(jobs, out_dir, out_dir / "report.md")  # sweeps over width and data.length
    add_size_curves(rows, out_dir, out_dir / "report.md")  # jobs tested at several sizes
    return rows


def read_jobs(directory: Path) -> list[Job]:
    """The jobs of a sweep folder, or of a committed study folder that holds only jobs.csv."""
    directory = Path(directory)
    jobs = read_sweep(directory)
    if not jobs and (directory / JOBS_CSV).is_file():
        jobs = read_jobs_csv(directory)
    if not jobs:
        raise FileNotFoundError(f"{directory} holds no job folders (.hydra/overrides.yaml, status.json, "
                                f"metrics.json) and no {JOBS_CSV}")
    return jobs


def combined_jobs(directories: list[Path]) -> list[Job]:
    """The jobs of several sweep or study folders as one list; job names get their folder's name
    (``fsdd_ablation/3``) so they stay unique."""
    jobs = []
    for directory in directories:
        for job in read_jobs(directory):
            job.name = f"{Path(directory).name}/{job.name}"
            jobs.append(job)
    return jobs


def write_report(sweep_dir: Path, out_dir: Path | None = None, headline: str = HEADLINE,
                 baseline: str | None = None) -> list[Row]:
    """Report of a sweep folder or a committed study folder (written into it unless ``out_dir`` is given)."""
    return build_report(read_jobs(sweep_dir), out_dir or Path(sweep_dir), str(sweep_dir), headline, baseline)


# ---------------------------------------------------------------------------- W&B
def read_wandb(path: str, group: str | None = None, api: Any = None) -> list[Job]:
    """Jobs from a W&B project (``entity/project``), optionally one sweep's group."""
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else None
    jobs = []
    for run in api.runs(path, filters=filters):
        config = dict(run.config or {})
        raw = ((config.get("job") or {}).get("overrides")) or [p for p in str(run.name).split(",") if "=" in p]
        overrides = dict(p for p in (parse_override(str(o)) for o in raw) if p is not None)
        summary = dict(run.summary or {})
        metrics = _numeric({k: v for k, v in summary.items() if str(k).startswith("test/")})
        status = COMPLETED if run.state == "finished" and metrics else str(run.state)
        curves: dict[str, list[tuple[int, float]]] = {}
        for record in run.scan_history(keys=["trainer/global_step", *CURVE_KEYS]):
            for key in CURVE_KEYS:
                if record.get(key) is not None and record.get("trainer/global_step") is not None:
                    curves.setdefault(key, []).append((int(record["trainer/global_step"]), float(record[key])))
        jobs.append(Job(name=f"{run.id} ({run.name})", overrides=overrides, status=status,
                        error="" if status == COMPLETED else f"W&B state: {run.state}", metrics=metrics,
                        curves=curves, row_name=_row_name(config, overrides)))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zf_lightning.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="*", type=Path, metavar="DIR",
                        help="a multirun folder (hydra.sweep.dir) or a committed study folder; several are "
                             "reported as one table (e.g. an ablation study and its baselines), with --out")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the one folder given)")
    parser.add_argument("--metric", default=HEADLINE, help=f"headline metric (default {HEADLINE})")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)")
    parser.add_argument("--group", help="with --wandb: only this group (one sweep)")
    parser.add_argument("--baseline", help="a row name (e.g. 'Z-Forcing + kla'): paired differences against it")
    parser.add_argument("--study-notes", action="store_true",
                        help="also write STUDY.md into --out from the study's job folder (its multirun.yaml)")
    args = parser.parse_args(argv)
    if args.study_notes and (args.wandb or len(args.sweep_dirs) != 1):
        # checked before anything is written: the flag used to be ignored here without a word
        parser.error("--study-notes writes STUDY.md from one study's job folder; give exactly that folder "
                     "(pooling several folders writes the report only; say how they were pooled in the "
                     "STUDY.md notes)")
    if args.wandb:
        out = args.out or Path(f"report-{args.wandb.replace('/', '_')}" + (f"-{args.group}" if args.group else ""))
        jobs = read_wandb(args.wandb, args.group)
        if not jobs:
            parser.error(f"no runs in W&B project {args.wandb}" + (f" group {args.group}" if args.group else ""))
        rows = build_report(jobs, out, f"W&B {args.wandb}" + (f" / {args.group}" if args.group else ""), args.metric,
                            args.baseline)
    elif len(args.sweep_dirs) == 1:
        out = args.out or args.sweep_dirs[0]
        rows = write_report(args.sweep_dirs[0], out, args.metric, args.baseline)
        if args.study_notes:
            multirun = args.sweep_dirs[0] / "multirun.yaml"
            if not multirun.is_file():
                parser.error(f"--study-notes needs {multirun} (the job folder a study ran into)")
            write_study_notes(OmegaConf.load(multirun), args.sweep_dirs[0], out)
    elif args.sweep_dirs:
        if args.out is None:
            parser.error("several folders are reported together into --out FOLDER")
        out = args.out
        rows = build_report(combined_jobs(args.sweep_dirs), out, " + ".join(map(str, args.sweep_dirs)), args.metric,
                            args.baseline)
    else:
        parser.error("give a sweep folder or --wandb ENTITY/PROJECT")
    failed = sum(len(r.failed) for r in rows)
    print(f"{out / 'report.md'}: {len(rows)} configurations, {failed} failed jobs")
    return 0

