"""Grouping jobs into rows: one row per configuration (the overrides that vary across jobs, the
seed and the bookkeeping overrides excluded), aggregated over seeds, named by its jobs' shared
``table_row`` where they have one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import yaml

from zf_lightning.conf import CONF_DIR
from zf_lightning.report.jobs import SEED_KEYS, Job
from zf_lightning.report.stats import mean_std
from zf_lightning.runs.status import INTERRUPTED, RUNNING

HEADLINE = "test/elbo"
# overrides that never make a configuration: Hydra's own and the paths (where a job ran, not what)
IGNORED_PREFIXES = ("hydra.", "paths.")


@cache
def excluded_override_keys() -> tuple[str, ...]:
    """The bookkeeping overrides (resuming, budget, threads) that zf_lightning/conf/hydra/default.yaml leaves out
    of a job's name; they do not make a configuration either."""
    hydra = yaml.safe_load((CONF_DIR / "hydra" / "default.yaml").read_text())
    return tuple(hydra["job"]["config"]["override_dirname"]["exclude_keys"])


@dataclass
class Row:
    """One configuration: its jobs aggregated over seeds."""

    key: tuple[tuple[str, str], ...]
    label: str  # the overrides that make the configuration, e.g. "ablation=kla"
    jobs: list[Job]

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    @property
    def unfinished(self) -> list[Job]:
        """Running, or cut off: rerunning the study's command continues them, so they are not failures."""
        return [j for j in self.jobs if j.status in (RUNNING, INTERRUPTED)]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok and j.status not in (RUNNING, INTERRUPTED)]

    @property
    def name(self) -> str:
        """The ``table_row`` all its jobs share (Table 1's "Z-Forcing + aux"), else its label."""
        names = {j.table_row for j in self.jobs if j.table_row}
        return names.pop() if len(names) == 1 else self.label

    def stats(self, metric: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation (nan for n < 2) and n of a metric over seeds."""
        values = [j.metrics[metric] for j in self.done if math.isfinite(j.metrics.get(metric, math.nan))]
        if not values:
            return math.nan, math.nan, 0
        return (*mean_std(values), len(values))


def makes_configuration(key: str) -> bool:
    return key not in SEED_KEYS and key not in excluded_override_keys() and not key.startswith(IGNORED_PREFIXES)


def varying_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order), seed excluded."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [k for k in keys if makes_configuration(k) and len({job.overrides.get(k) for job in jobs}) > 1]


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


def display_names(rows: list[Row]) -> list[str]:
    """Row names for legends: the Table 1 name, followed, where several rows share it (the same row on
    several data sets), by the overrides that tell those rows apart; the overrides alone without a name."""
    names = [r.name for r in rows]
    out = []
    for name, row in zip(names, rows, strict=True):
        twins = [r for n, r in zip(names, rows, strict=True) if n == name]
        if len(twins) == 1:
            out.append(name)
        elif name == row.label:
            out.append(row.label)
        else:
            differ = [(k, v) for k, v in row.key if v != "" and len({dict(t.key).get(k) for t in twins}) > 1]
            out.append(f"{name} · " + ", ".join(f"{k}={v}" for k, v in differ) if differ else row.label)
    return out


def metric_names(jobs: list[Job]) -> list[str]:
    """The test metrics, the headline first."""
    names = sorted({k for j in jobs for k in j.metrics if k.startswith("test/")})
    return ([HEADLINE] if HEADLINE in names else []) + [n for n in names if n != HEADLINE]
