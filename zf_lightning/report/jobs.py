"""Reading jobs: from a sweep's job folders, from a committed study's ``jobs.csv`` and
``curves.csv`` (written here too, so a study's report rebuilds from its committed files alone),
and from W&B. One ``Job`` per job whatever the source, so everything after reading is shared."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zf_lightning.conf import CONF_DIR
from zf_lightning.lit.module import VAL_OBJECTIVE
from zf_lightning.report.heatmap import CHANCE
from zf_lightning.runs.hydra_job import RECORD_DIR
from zf_lightning.runs.status import (
    COMPLETED,
    UnreadableRecordError,
    error_summary,
    job_folders,
    read_metrics,
    read_status,
)

SEED_KEYS = ("seed",)
CURVE_KEYS = ("val/elbo", "val/kl")  # plotted
TRAIN_BOUND = "train/elbo"  # each epoch's mean bound on the training batches: what validation is read against
# kept in curves.csv (acc: classification tasks; the objective: how a run ended, beside the bound;
# the training bound: how far a row's validation bound is from what it reaches on its training data)
EXPORT_CURVE_KEYS = (*CURVE_KEYS, "val/aux", "val/acc", VAL_OBJECTIVE, TRAIN_BOUND)
JOBS_CSV, CURVES_CSV = "jobs.csv", "curves.csv"
# computed chance levels of jobs that did not log test/chance_acc (scripts/chance_levels.py): kept
# apart from jobs.csv, so a logged value and a computed one are never mistaken for each other
CHANCE_CSV = "chance.csv"
# per-job facts that are not metrics: why it stopped, how long it ran, which code ran it
INFO_KEYS = ("stop_reason", "diverged", "updates", "best_step", "started", "finished", "commit")
UNREADABLE = "unreadable"  # a job whose status.json or metrics.json cannot be parsed
ROW_CONF_DIR = CONF_DIR / "row"  # the Table-1 row names of (model, ablation) pairs: train.yaml's `row` choice


@dataclass
class Job:
    """One job's record: its overrides, outcome, final metrics and validation curves."""

    name: str
    overrides: dict[str, str]
    status: str
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    table_row: str | None = None  # the ``table_row`` of the job's config, e.g. Table 1's "Z-Forcing + aux"
    info: dict[str, str] = field(default_factory=dict)  # INFO_KEYS, as strings

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED and bool(self.metrics)

    @property
    def seed(self) -> str:
        return next((self.overrides[k] for k in SEED_KEYS if k in self.overrides), "default")


def parse_override(text: str) -> tuple[str, str] | None:
    """``key=value`` (a ``+`` prefix dropped); None for a deletion (``~key``) or a bare word."""
    if "=" not in text or text.startswith("~"):
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def parse_overrides(raw: Iterable[Any]) -> dict[str, str]:
    return dict(p for p in (parse_override(str(o)) for o in raw) if p is not None)


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among a job's metrics (a checkpoint's path is recorded there too)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


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


def _yaml_file(path: Path) -> Any:
    """A YAML record of a job folder; None when it is missing or damaged (it only names things)."""
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def _hydra_overrides(job_dir: Path) -> list[Any]:
    raw = _yaml_file(job_dir / RECORD_DIR / "overrides.yaml")
    return raw if isinstance(raw, list) else []


def _choices(job_dir: Path) -> dict[str, Any]:
    """The config group choices Hydra recorded for the job (``hydra.runtime.choices``)."""
    hydra = _yaml_file(job_dir / RECORD_DIR / "hydra.yaml")
    node = hydra.get("hydra") if isinstance(hydra, dict) else None
    choices = ((node or {}).get("runtime") or {}).get("choices") if isinstance(node, dict) else None
    return choices if isinstance(choices, dict) else {}


def stored_table_row(config: Any, choices: Mapping[str, Any]) -> str | None:
    """The job's ``table_row``: from its resolved config, else (a folder written before the `row`
    config group existed) the one its model and ablation choices name in zf_lightning/conf/row/."""
    if isinstance(config, dict) and config.get("table_row"):
        return str(config["table_row"])
    model, ablation = choices.get("model"), choices.get("ablation")
    named = _yaml_file(ROW_CONF_DIR / f"{model}_{ablation}.yaml") if model and ablation else None
    return str(named["table_row"]) if isinstance(named, dict) and named.get("table_row") else None


def read_job(job_dir: Path, sweep_dir: Path) -> Job:
    """One job folder; a job whose status.json or metrics.json cannot be read is kept as an
    ``unreadable`` job naming the file, so one damaged record never stops the whole report."""
    name = str(job_dir.relative_to(sweep_dir))
    try:
        status = read_status(job_dir)
        metrics_file = job_dir / "metrics.json"
        metrics = numeric(read_metrics(metrics_file)) if metrics_file.is_file() else {}
    except UnreadableRecordError as err:
        return Job(name=name, overrides=parse_overrides(_hydra_overrides(job_dir)), status=UNREADABLE, error=str(err))
    # status.json keeps the job's own overrides; Hydra rewrites .hydra/ when a run is resumed
    raw = (status.get("job") or {}).get("overrides")
    overrides = parse_overrides(_hydra_overrides(job_dir) if raw is None else raw)
    state = status.get("status") or (COMPLETED if metrics else "unknown")
    if state != COMPLETED and not status.get("error"):
        error = f"status: {state}" + ("" if metrics else ", no metrics.json")
    else:
        error = str(status.get("error") or "")
    info = {k: str(status[k]) for k in INFO_KEYS if status.get(k) is not None}
    if (status.get("code") or {}).get("commit"):
        info["commit"] = status["code"]["commit"] + ("+dirty" if status["code"].get("dirty") else "")
    return Job(name=name, overrides=overrides, status=state, error=error, metrics=metrics,
               curves=read_curves(job_dir / "csv" / "metrics.csv", EXPORT_CURVE_KEYS),
               table_row=stored_table_row(_yaml_file(job_dir / "config_resolved.yaml"), _choices(job_dir)),
               info=info)


def best_checkpoint(job: Job, sweep_dir: Path) -> Path:
    """The checkpoint of a job's best validation score, the one its test metrics come from."""
    best = sorted((sweep_dir / job.name / "checkpoints").glob("best-*.ckpt"))
    if len(best) != 1:
        raise FileNotFoundError(f"{sweep_dir / job.name}: expected one best-*.ckpt, found {len(best)}")
    return best[0]


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
            writer.writerow([job.name, job.table_row or "", job.seed, job.status, *info,
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
    fixed = {"job", "row", "seed", "status", *INFO_KEYS, "overrides", "error"}
    jobs = []
    with (directory / JOBS_CSV).open(newline="") as fh:
        for row in csv.DictReader(fh):
            metrics = {k: float(v) for k, v in row.items() if k not in fixed and v not in ("", None)}
            jobs.append(Job(name=row["job"], overrides=parse_overrides(row["overrides"].split()), status=row["status"],
                            error=row["error"], metrics=metrics,
                            curves={k: sorted(v) for k, v in curves.get(row["job"], {}).items()},
                            table_row=row["row"] or None, info={k: row[k] for k in INFO_KEYS if row.get(k)}))
    return jobs


def read_chance(directory: Path) -> dict[str, float]:
    """Job name -> computed chance level, from the folder's ``chance.csv`` (empty without one)."""
    path = Path(directory) / CHANCE_CSV
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["job"]: float(row[CHANCE]) for row in csv.DictReader(fh)}


def write_chance(path: Path, chance: Mapping[str, float]) -> None:
    """``chance.csv``: job, computed chance level (``repr``, so it reads back exactly)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job", CHANCE])
        writer.writerows([job, repr(value)] for job, value in chance.items())


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


def combined_chance(directories: list[Path]) -> dict[str, float]:
    """The computed chance levels of several folders, under the job names ``combined_jobs`` gives."""
    return {f"{Path(d).name}/{job}": value for d in directories for job, value in read_chance(d).items()}


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
        summary = dict(run.summary or {})
        metrics = numeric({k: v for k, v in summary.items() if str(k).startswith("test/")})
        status = COMPLETED if run.state == "finished" and metrics else str(run.state)
        curves: dict[str, list[tuple[int, float]]] = {}
        for record in run.scan_history(keys=["trainer/global_step", *EXPORT_CURVE_KEYS]):
            for key in EXPORT_CURVE_KEYS:
                if record.get(key) is not None and record.get("trainer/global_step") is not None:
                    curves.setdefault(key, []).append((int(record["trainer/global_step"]), float(record[key])))
        jobs.append(Job(name=f"{run.id} ({run.name})", overrides=parse_overrides(raw), status=status,
                        error="" if status == COMPLETED else f"W&B state: {run.state}", metrics=metrics,
                        curves=curves, table_row=stored_table_row(config, {})))
    return jobs
