"""Which grid point validation chooses: a pilot sweeps a hyper-parameter, and the study after it
runs the value whose validation metric is best. For each family of jobs (a setting of the other
keys that vary, e.g. one row of a table), the chosen keys' setting with the best mean over seeds,
read at each job's best checkpoint (the weights the study would keep); the runner-up and the
paired difference between them (so a choice the seeds cannot tell apart says so); and whether the
choice lies at an edge of a numeric grid, where a wider grid might do better and the choice is not
yet trusted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zf_lightning.report.jobs import Job
from zf_lightning.report.stats import higher_is_better, mean_std, paired_difference
from zf_lightning.report.tables import fmt, md_table

DEFAULT_METRIC = "val/elbo"


def value_at_best(job: Job, metric: str) -> float:
    """``metric`` at the job's best checkpoint: its last validation at or before ``best_step`` (a
    validation is logged one step before the checkpoint it triggers), else its final value."""
    curve = job.curves.get(metric)
    best = job.info.get("best_step", "")
    if curve and best not in ("", "None", "nan"):
        earlier = [value for step, value in curve if step <= float(best)]
        if earlier:
            return earlier[-1]
    return job.metrics.get(metric, math.nan)


@dataclass
class Candidate:
    """One grid point of a family: the chosen keys' values and the metric per seed."""

    setting: tuple[tuple[str, str], ...]
    by_seed: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting)

    @property
    def mean(self) -> float:
        values = [v for v in self.by_seed.values() if math.isfinite(v)]
        return mean_std(values)[0] if values else math.nan

    def summary(self) -> str:
        values = [v for v in self.by_seed.values() if math.isfinite(v)]
        return f"{fmt(*mean_std(values))} (n={len(values)})"


class ChooseError(ValueError):
    """A ``--choose`` key the jobs do not vary."""


def check_choose(jobs: Sequence[Job], choose: Sequence[str], varying: Sequence[str]) -> None:
    """Each chosen key must be one the jobs vary: one clear error before anything is written."""
    missing = [k for k in choose if k not in varying]
    if missing:
        raise ChooseError(f"--choose {', '.join(missing)}: not a key the jobs vary (they vary: "
                         f"{', '.join(varying) or 'nothing'})")


def candidates(jobs: Sequence[Job], choose: Sequence[str], varying: Sequence[str],
               metric: str) -> dict[tuple[tuple[str, str], ...], list[Candidate]]:
    """Family (the other varying keys' values) -> its grid points, in the order the sweep ran them."""
    others = [k for k in varying if k not in choose]
    families: dict[tuple[tuple[str, str], ...], dict[tuple[tuple[str, str], ...], Candidate]] = {}
    for job in jobs:
        if not job.ok:
            continue
        family = tuple((k, job.overrides.get(k, "")) for k in others)
        setting = tuple((k, job.overrides.get(k, "")) for k in choose)
        point = families.setdefault(family, {}).setdefault(setting, Candidate(setting))
        point.by_seed[job.seed] = value_at_best(job, metric)
    return {family: list(points.values()) for family, points in families.items()}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def edges(chosen: Candidate, points: Sequence[Candidate]) -> list[str]:
    """The numeric chosen keys whose chosen value is the lowest or highest the family tried."""
    found = []
    for i, (key, value) in enumerate(chosen.setting):
        tried = {_number(p.setting[i][1]) for p in points}
        if None in tried or len(tried) < 3 or (x := _number(value)) is None:
            continue
        if x == 0 and x == min(tried):  # type: ignore[type-var]
            found.append(f"{key}=0 (the term off) is the lowest tried: no weight beat none")
        elif x in (min(tried), max(tried)):  # type: ignore[type-var]
            found.append(f"{key}={value} is the {'lowest' if x == min(tried) else 'highest'} tried")  # type: ignore[type-var]
    return found


def is_off(point: Candidate) -> bool:
    """Whether some numeric chosen key is 0 (a weight that turns its term off)."""
    return any(_number(value) == 0 for _, value in point.setting)


def versus(better: bool, chosen: Candidate, other: Candidate) -> str:
    """``chosen - other`` paired by seed: mean [95 % t-interval], n: verdict."""
    diff = paired_difference(other.by_seed, chosen.by_seed, better)
    interval = "" if math.isnan(diff.low) else f" [{diff.low:.4g}, {diff.high:.4g}]"
    return f"{diff.mean:+.4g}{interval}, n={diff.n}: {diff.verdict}"


def ranked(points: Sequence[Candidate], better: bool) -> list[Candidate]:
    """A family's grid points with a finite mean, best first."""
    return sorted((p for p in points if math.isfinite(p.mean)), key=lambda p: p.mean, reverse=better)


Family = tuple[tuple[str, str], ...]  # the other varying keys' values: one row of a table


def chosen_settings(jobs: Sequence[Job], choose: Sequence[str], varying: Sequence[str],
                    metric: str = DEFAULT_METRIC, term_on: bool = False) -> dict[Family, Candidate]:
    """Family -> the grid point validation chooses. ``term_on``: where the best turns a weight off
    (0), the best that keeps it on instead, for a row that exists to have the term."""
    check_choose(jobs, choose, varying)
    better = higher_is_better(metric)
    found = {}
    for family, points in candidates(jobs, choose, varying, metric).items():
        order = ranked(points, better)
        if term_on:
            order = [p for p in order if not is_off(p)]
        if order:
            found[family] = order[0]
    return found


def selection_section(jobs: Sequence[Job], choose: Sequence[str], varying: Sequence[str],
                      metric: str = DEFAULT_METRIC) -> list[str]:
    """Markdown: per family the chosen setting, its runner-up, their paired difference and edges;
    then every grid point of each family, best first."""
    better = higher_is_better(metric)
    others = [k for k in varying if k not in choose]
    lines = ["## Chosen on validation", "",
             f"Per family ({', '.join(f'`{k}`' for k in others) or 'all jobs'}), the setting of "
             f"{', '.join(f'`{k}`' for k in choose)} with the best mean over seeds of `{metric}` "
             f"({'higher' if better else 'lower'} is better), each job read at its best checkpoint (its last "
             "validation at or before the update of the checkpoint the run keeps). The difference to the "
             "runner-up is paired by seed, with a 95 % Student-t interval; a choice at the lowest or highest "
             "value a numeric grid tried is at its edge, where a wider grid might choose otherwise.", ""]
    summary, details = [], []
    for family, points in candidates(jobs, choose, varying, metric).items():
        name = ", ".join(f"{k}={v}" for k, v in family) or "all jobs"
        order = ranked(points, better)
        if not order:
            summary.append([name, "–", "no finite value", "–", "–", "–", "–"])
            continue
        best = order[0]
        runner = order[1] if len(order) > 1 else None
        # where no weight beat none, the best weight that keeps the term on, for a row that needs one
        on = next((p for p in order if not is_off(p)), None) if is_off(best) else None
        summary.append([name, best.label, best.summary(), runner.label if runner else "–",
                        versus(better, best, runner) if runner else "–", "; ".join(edges(best, points)) or "no",
                        f"{on.label}: {on.summary()}; chosen − it {versus(better, best, on)}" if on else "–"])
        details += [f"**{name}**", "",
                    *md_table(["setting", f"{metric} at the best checkpoint (mean ± sd, n)"],
                              [[p.label, p.summary()] for p in order]), ""]
    return [*lines, *md_table(["family", "chosen", f"{metric} (mean ± sd, n)", "runner-up",
                               "chosen − runner-up (paired, 95 % t-interval)", "at an edge of the grid",
                               "best with the term on (where the chosen turns it off)"], summary),
            "", "### Every grid point, best first", "", *details]


def add_selection(jobs: Sequence[Job], choose: Sequence[str], varying: Sequence[str], report: Path,
                  metric: str = DEFAULT_METRIC) -> None:
    """Append the selection section to ``report`` (nothing when no key is chosen)."""
    if not choose:
        return
    with report.open("a") as fh:
        fh.write("\n" + "\n".join(selection_section(jobs, choose, varying, metric)))
