"""``STUDY.md``: how a committed study was run, written next to its report when it ends.

A study (zf_lightning/conf/study/) is a sweep with a purpose; its committed folder must tell a reader how
to rerun it and what the numbers rest on: the command, the commit, the machine, the
schedules and budget that ran, the wall time and which runs stopped early. Notes written
by hand below the ``NOTES`` marker survive a rewrite.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from zf_lightning.runs.status import UnreadableRecordError, job_folders, read_status

NOTES = "<!-- notes: everything below this line is kept when STUDY.md is rewritten -->"


def _when(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _yaml(node: object) -> str:
    return OmegaConf.to_yaml(node).strip() if node is not None else "null"


SETTINGS = ("data", "model", "trainer", "callbacks", "optim", "schedule", "lit", "regularizer")


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def shared_settings(sweep_dir: Path) -> tuple[dict[str, object], list[str]]:
    """The settings (``SETTINGS`` subtrees of each job's resolved config) equal in every job, and
    the keys that differ between jobs, so STUDY.md states only what all rows really share."""
    configs = []
    for job in job_folders(sweep_dir):
        if (file := job / "config_resolved.yaml").is_file():
            config = yaml.safe_load(file.read_text()) or {}
            flat = _flatten({k: config.get(k) for k in SETTINGS if k in config})
            # a job's own folders (checkpoint dirs) say where it ran, not how
            configs.append({k: v for k, v in flat.items() if not (isinstance(v, str) and str(job) in v)})
    if not configs:
        return {}, []
    keys = sorted(set().union(*configs))
    shared = {k: configs[0].get(k) for k in keys if all(k in c and c[k] == configs[0][k] for c in configs)}
    return shared, [k for k in keys if k not in shared]


def _nest(flat: dict[str, object]) -> dict[str, object]:
    nested: dict[str, object] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return nested


def _status(job: Path) -> dict[str, Any]:
    """A job's status record; an unreadable one (the report lists it) adds nothing to the notes."""
    try:
        return read_status(job)
    except UnreadableRecordError:
        return {}


def attempts_table(jobs: list[Path], statuses: list[dict[str, Any]]) -> list[str]:
    """Every attempt of every job (a study continued over sessions has several): when, on which
    commit and machine, from which update to which, and how it ended."""
    lines = ["| job | attempt | started | finished | updates (from → to) | wall time | commit | machine | ended |",
             "|---|---|---|---|---|---|---|---|---|"]
    for job, status in zip(jobs, statuses, strict=True):
        for i, attempt in enumerate(status.get("attempts") or [], start=1):
            start, end = _when(attempt.get("started")), _when(attempt.get("finished"))
            wall = f"{(end - start).total_seconds() / 60:.0f} min" if start and end else "–"
            commit = str(attempt.get("commit") or "unknown")[:8] + (" (uncommitted)" if attempt.get("dirty") else "")
            lines.append(f"| {job.name} | {i} | {attempt.get('started') or '–'} | {attempt.get('finished') or '–'} | "
                         f"{attempt.get('from_update', '–')} → {attempt.get('updates') or '–'} | {wall} | {commit} | "
                         f"{attempt.get('cpu') or '–'} ({attempt.get('host') or '–'}) | "
                         f"{attempt.get('status') or 'running or killed'} |")
    return lines if len(lines) > 2 else []


def _rows(sweeper: Any) -> Any:
    """What the sweeper crosses: its ``params`` and, for the cells sweeper, its ``cells`` too."""
    cells = sweeper.get("cells")
    return OmegaConf.create({"params": sweeper.get("params"), "cells": cells}) if cells else sweeper.params


def study_notes(config: DictConfig, sweep_dir: Path) -> list[str]:
    """The generated part of STUDY.md for the multirun whose Hydra config is ``config``."""
    jobs = job_folders(sweep_dir)
    statuses = [_status(job) for job in jobs]
    shared, differing = shared_settings(sweep_dir)
    starts = [t for t in (_when(a.get("started")) for s in statuses for a in s.get("attempts") or [s]) if t]
    ends = [t for t in (_when(s.get("finished")) for s in statuses) if t]
    job_seconds = sum((e - s).total_seconds() for s, e in
                      ((_when(st.get("started")), _when(st.get("finished"))) for st in statuses) if s and e)
    commits = Counter(f"{c['commit']}{' (uncommitted changes)' if c.get('dirty') else ''}"
                      for c in (s.get("code") or {} for s in statuses) if c.get("commit"))
    machines = Counter(f"{m.get('cpu')}, {m.get('cpus')} CPUs ({m.get('host')})"
                       for m in (s.get("machine") or {} for s in statuses) if m)
    reasons = Counter(str(s.get("stop_reason", s.get("status", "unknown"))) for s in statuses)
    # The overrides as typed: the study choice may differ from study.name (a pilot that reuses a
    # study's config under another name), so the command is not rebuilt from the name.
    typed = [str(o) for o in config.hydra.overrides.task]
    name = str(config.study.name)
    if not any(o.startswith("study=") for o in typed):
        typed.insert(0, f"study={name}")
    baseline = config.study.get("baseline")
    wall = f"{(max(ends) - min(starts)).total_seconds() / 60:.0f} min" if starts and ends else "unknown"
    lines = [
        f"# Study: {name}", "",
        "## Command", "", "```bash", " ".join(["python train.py -m", *(shlex.quote(o) for o in typed)]), "```", "",
        "Rerunning the same command continues the study: completed jobs are skipped, interrupted ones "
        "resume from their last checkpoint. The report is rebuilt from this folder's files alone with",
        "", "```bash",
        f"python -m zf_lightning.report {config.study.results_dir}" + (f" --baseline '{baseline}'" if baseline else "")
        + "".join(f" --choose {shlex.quote(str(k))}" for k in config.study.get("choose") or ())
        + (f" --choose-by {config.study.choose_by}" if config.study.get("choose") else ""),
        "```", "",
        "## What ran", "",
        f"- jobs: {len(statuses)}; stopped by: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
        f"- wall time: {wall} from the first job's start to the last job's end (pauses between sessions "
        f"included); {job_seconds / 3600:.2f} job-hours (of each job's last attempt)",
        f"- parallel jobs: {config.hydra.launcher.get('n_jobs', 1)}, "
        f"torch threads per job: {config.get('torch_threads')}",
        "- commit: " + (", ".join(f"{c} ({n} jobs)" for c, n in commits.items()) or "unknown"),
        "- machine: " + (", ".join(f"{m} ({n} jobs)" for m, n in machines.items()) or "unknown"),
        "", "## Settings that every job shares", "",
        "From the jobs' resolved configs (`config_resolved.yaml`): the data, model, budget, stopping rule, "
        "optimizer and loss-weight schedules that are the same in every job.", "",
        "```yaml", _yaml(OmegaConf.create(_nest(shared))) if shared else "{}", "```", "",
        "Settings that differ between jobs (the rows): " + (", ".join(f"`{k}`" for k in differing) or "none"), "",
        "## Rows", "", "```yaml", _yaml(_rows(config.hydra.sweeper)), "```", "",
    ]
    attempts = attempts_table(jobs, statuses)
    if attempts:
        lines += ["## Attempts", "", "Every attempt of every job, as its status.json records it.", "", *attempts, ""]
    return lines


def write_study_notes(config: DictConfig, sweep_dir: Path, results_dir: Path) -> Path:
    """Write ``results_dir/STUDY.md``, keeping any hand-written notes below ``NOTES``."""
    path = results_dir / "STUDY.md"
    kept = ""
    if path.is_file() and NOTES in (old := path.read_text()):
        kept = old.split(NOTES, 1)[1]
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*study_notes(config, sweep_dir), NOTES]) + (kept or "\n"))
    return path
