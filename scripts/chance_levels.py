"""The chance level (``test/chance_acc``) of every job of a committed capacity study, computed
without retraining: it depends only on the data, so each job's data module is built from the
study's config and the job's overrides (``jobs.csv``), and the metric is computed as the
training run logs it (``reference_metrics``). Writes ``<study>/chance.csv`` (job,
test/chance_acc), which the report's heatmaps read for jobs that did not log the metric.

It refuses when the data settings the jobs ran with (STUDY.md's shared settings) differ from the
config composed now, or when a computed value differs from one a job logged.

    python scripts/chance_levels.py results/capacity_dyck
    python scripts/chance_levels.py results/capacity_index_lookup --check   # compare, write nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.report.heatmap import CHANCE
from zf_lightning.report.jobs import CHANCE_CSV, Job, read_jobs_csv, write_chance
from zf_lightning.runs.pipeline import build_datamodule, compose_config

SHARED_SETTINGS = "## Settings that every job shares"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a nested mapping."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def recorded_data_settings(study_dir: Path) -> dict[str, Any]:
    """The ``data`` settings every job ran with, as STUDY.md recorded them from the jobs' resolved
    configs (dotted keys, ``data.`` included); empty without a STUDY.md."""
    notes = study_dir / "STUDY.md"
    if not notes.is_file() or SHARED_SETTINGS not in (text := notes.read_text()):
        return {}
    block = text.split(SHARED_SETTINGS, 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return flatten({"data": (yaml.safe_load(block) or {}).get("data") or {}})


def job_config(job: Job) -> DictConfig:
    """The job's config as composed now from its overrides (its study choice among them)."""
    overrides = [f"{k}={v}" for k, v in job.overrides.items()]
    return compose_config("train", [*overrides, "paths.output_dir=unused", "paths.cache_dir=unused"])


def drifted(cfg: DictConfig, recorded: dict[str, Any]) -> list[str]:
    """The recorded data settings that the config composed now no longer has."""
    now = flatten({"data": OmegaConf.to_container(cfg.data, resolve=True)})
    return [f"{k}: ran with {v!r}, now {now.get(k, 'missing')!r}" for k, v in recorded.items() if now.get(k) != v]


def chance_levels(study_dir: Path) -> dict[str, tuple[float, float | None]]:
    """Per job: the computed chance level and the one it logged (None where it logged none)."""
    recorded = recorded_data_settings(study_dir)
    by_data: dict[str, float] = {}
    out: dict[str, tuple[float, float | None]] = {}
    for job in read_jobs_csv(study_dir):
        cfg = job_config(job)
        if problems := drifted(cfg, recorded):
            raise SystemExit(f"{study_dir} job {job.name}: the data config changed since the study ran; "
                             + "; ".join(problems))
        key = OmegaConf.to_yaml(cfg.data, resolve=True)
        if key not in by_data:
            metrics = build_datamodule(cfg).reference_metrics()
            if CHANCE not in metrics:
                raise SystemExit(f"{study_dir} job {job.name}: its task derives no chance level")
            by_data[key] = metrics[CHANCE]
        out[job.name] = (by_data[key], job.metrics.get(CHANCE))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="a committed study folder (jobs.csv, STUDY.md)")
    parser.add_argument("--check", action="store_true", help="compare with the logged values only; write nothing")
    args = parser.parse_args(argv)
    levels = chance_levels(args.study_dir)
    logged = {job: pair for job, pair in levels.items() if pair[1] is not None}
    wrong = [f"{job}: computed {c!r}, logged {v!r}" for job, (c, v) in logged.items() if c != v]
    if wrong:
        print(f"{len(wrong)} of {len(logged)} logged chance levels differ:\n" + "\n".join(wrong), file=sys.stderr)
        return 1
    print(f"{args.study_dir}: {len(levels)} jobs, {len(logged)} logged chance levels reproduced exactly")
    if not args.check:
        write_chance(args.study_dir / CHANCE_CSV, {job: computed for job, (computed, _) in levels.items()})
        print(f"wrote {args.study_dir / CHANCE_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
