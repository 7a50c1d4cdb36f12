"""The report's tables: the headline table (Table 1's layout), paired differences against a
baseline row (named in the order they subtract, read at convergence or at a budget), how the runs
ended, whether the rows' ordering is stable late in the curves and at matched updates, every test
metric and the failed jobs; written as ``report.md`` and ``report.csv``."""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zf_lightning.lit.module import VAL_OBJECTIVE
from zf_lightning.report.jobs import SEED_KEYS, TRAIN_BOUND, Job
from zf_lightning.report.rows import Row, display_names
from zf_lightning.report.stats import CANNOT_TELL, higher_is_better, mean_std, paired_difference
from zf_lightning.runs.status import INTERRUPTED, RUNNING, error_summary
from zf_lightning.runs.stopping import CONVERGED, MAX_EPOCHS, MAX_STEPS, TIME_LIMIT, RunEnding


def fmt(mean: float, std: float) -> str:
    """``mean ± std`` with the precision the spread warrants (4 significant digits without one)."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std) or std == 0:
        return f"{mean:.4g}"
    decimals = min(6, max(0, 1 - math.floor(math.log10(abs(std)))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
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
            label = first.name if first.jobs[0].table_row else ", ".join(f"{k}={v}" for k, v in config)
            entries = []
            for data in datasets:
                row = cells.get(data)
                if row is None:
                    entries.append("")
                    continue
                mean, std, n = row.stats(metric)
                counts = ((row.failed, "failed"), (row.unfinished, "not finished"))
                extra = [f"{len(jobs)} {what}" for jobs, what in counts if jobs]
                entries.append(f"{fmt(mean, std)} (n={n}" + "".join(f", {e}" for e in extra) + ")")
            body.append([label, *entries])
        return md_table(["configuration", *[f"{metric} · {d}" for d in datasets]], body)
    body = []
    for row in rows:
        mean, std, n = row.stats(metric)
        body.append([row.name, row.label, fmt(mean, std), str(n), str(len(row.failed))])
    return md_table(["model", "overrides", f"{metric} (mean ± std)", "n", "failed"], body)


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


CAPS = (MAX_STEPS, MAX_EPOCHS, TIME_LIMIT)
CAPPED_WHILE_IMPROVING = "capped while improving"


def capped_while_improving(job: Job) -> bool:
    """A run its cap stopped while its bound still rose over its last 20 % of updates: where it
    would have ended is unknown, so no comparison resting on it is one of the methods."""
    return job.info.get("stop_reason") in CAPS and late_improvement(job) > 0


def stop_label(job: Job) -> str:
    reason = job.info.get("stop_reason", "unknown")
    return f"{reason}, {CAPPED_WHILE_IMPROVING}" if capped_while_improving(job) else reason


def _first_last(points: list[tuple[int, float]] | None, sign: float = 1.0) -> tuple[float, float] | None:
    return (sign * points[0][1], sign * points[-1][1]) if points is not None and len(points) >= 2 else None


def run_ending(job: Job) -> RunEnding:
    """How the job's validation ended, by the rule of ``DivergenceWatch``: read from its curves of
    the bound (val/elbo, negated) and of the objective (``val/objective``); a job with neither
    curve falls back on its recorded ``diverged`` flag, which judged the objective for jobs that
    logged it and the bound for older ones."""
    bound = _first_last(job.curves.get("val/elbo"), -1.0)
    objective = _first_last(job.curves.get(VAL_OBJECTIVE))
    if bound is None and objective is None and job.info.get("diverged") in ("True", "False"):
        flag = job.info["diverged"] == "True"
        return RunEnding(None, flag) if VAL_OBJECTIVE in job.metrics else RunEnding(flag, None)
    return RunEnding.of(bound, objective)


def _diverged_cell(endings: list[RunEnding]) -> str:
    known = [e.diverged for e in endings if e.diverged is not None]
    missing = len(endings) - len(known)
    if not missing:
        return str(sum(known))
    return "objective not recorded" if not known else f"{sum(known)} (objective not recorded for {missing})"


def _bound_fell_cell(endings: list[RunEnding]) -> str:
    fell = [e for e in endings if e.bound_fell]
    improved = sum(e.diverged is False for e in fell)
    missing = sum(e.diverged is None for e in fell)
    if not missing:
        return str(improved)
    return f"{improved}; the bound fell in {missing} more whose objective was not recorded" if improved else (
        f"the bound fell in {missing}, objective not recorded")


def _first_last_cell(jobs: list[Job], key: str, missing: str = "–") -> str:
    """Mean over runs of a curve's first and last validation value (non-finite last values counted)."""
    pairs = [p for j in jobs if (p := _first_last(j.curves.get(key)))]
    if not pairs:
        return missing
    first = statistics.fmean(a for a, _ in pairs)
    finite = [b for _, b in pairs if math.isfinite(b)]
    last = f"{statistics.fmean(finite):.4g}" if finite else "not finite"
    broken = len(pairs) - len(finite)
    return f"{first:.4g} → {last}" + (f" ({broken} not finite)" if broken and finite else "")


def runs_table(rows: list[Row]) -> list[str]:
    """How each row's runs ended: converged or capped, diverged or not, the bound and the objective
    from the first validation to the last, updates, best update, late improvement."""
    body = []
    for row, name in zip(rows, display_names(rows), strict=True):
        done = row.done
        reasons = Counter(stop_label(job) for job in done)
        updates = [float(j.info["updates"]) for j in done if j.info.get("updates")]
        best = [float(j.info["best_step"]) for j in done if j.info.get("best_step") not in (None, "", "None")]
        late = [v for v in (late_improvement(j) for j in done) if math.isfinite(v)]
        endings = [run_ending(j) for j in done]
        body.append([
            name, str(len(done)), ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "–",
            _diverged_cell(endings), _bound_fell_cell(endings),
            _first_last_cell(done, "val/elbo"), _first_last_cell(done, VAL_OBJECTIVE, "not recorded"),
            (f"{statistics.fmean(updates):.0f} [{min(updates):.0f}–{max(updates):.0f}]" if updates else "–"),
            f"{statistics.fmean(best):.0f}" if best else "–",
            fmt(*mean_std(late)) if late else "–",
        ])
    return md_table(["row", "runs", "stopped by",
                     "diverged (objective worse at the last validation than at the first, or not finite)",
                     "bound fell while the objective improved", "val/elbo, first → last validation (mean)",
                     f"{VAL_OBJECTIVE}, first → last validation (mean; lower is better)",
                     "updates (mean [min–max])", "best checkpoint at update (mean)",
                     "val/elbo gain over the last 20 % of updates"], body)


def _best_step(job: Job) -> float:
    best = job.info.get("best_step")
    return float(best) if best not in (None, "", "None", "nan") else math.nan


def generalization_table(rows: list[Row], key: str = "val/elbo") -> list[str]:
    """Each row's training bound against its validation bound, at the best checkpoint (the epoch
    mean that ended last before it, and the validation that chose it) and at the last validation:
    how much of the training data's bound carries over to held-out data. Empty when no job
    recorded the training bound."""
    body = []
    for row, name in zip(rows, display_names(rows), strict=True):
        at_best, at_end = [], []
        for job in row.done:
            train, val = job.curves.get(TRAIN_BOUND), job.curves.get(key)
            if not train or not val:
                continue
            best = _best_step(job)
            pair = (_curve_value(train, best), _curve_value(val, best))
            if all(math.isfinite(v) for v in pair):
                at_best.append(pair)
            at_end.append((_curve_value(train, val[-1][0]), val[-1][1]))
        if not at_end:
            continue
        best_train, best_val = [t for t, _ in at_best], [v for _, v in at_best]
        body.append([name, str(len(at_end)), fmt(*mean_std(best_train)) if at_best else "–",
                     fmt(*mean_std(best_val)) if at_best else "–",
                     fmt(*mean_std([t - v for t, v in at_best])) if at_best else "–",
                     fmt(*mean_std([t - v for t, v in at_end]))])
    if not body:
        return []
    return md_table(["row", "runs", f"{TRAIN_BOUND} at the best checkpoint", f"{key} at the best checkpoint",
                     "training − validation there (mean ± sd)", "training − validation at the last validation"],
                    body)


def paired_table(rows: list[Row], baseline: str, metric: str) -> list[str]:
    """Each row against the baseline row, paired by seed (see ``zf_lightning.report.stats``).

    When several rows carry the baseline's name (the same model on several data sets), each row
    is compared with the baseline row that shares its other settings (its data set), and the
    table names those settings."""
    names = [r.name for r in rows]
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
        label = f"({name}) − ({baseline})" + "".join(f" · {k}={v}" for k, v in zip(context, values, strict=True))
        mean = "–" if math.isnan(diff.mean) else f"{diff.mean:+.2f}"
        verdict = budget_verdict(diff.verdict, (*row.done, *base.done))
        body.append([label, str(diff.n), mean, se, interval, verdict, read_at(row, base)])
    return md_table(["difference (row − baseline)", "paired seeds", f"mean difference in {metric}", "standard error",
                      "95 % t-interval", "verdict", "read at"], body)


def budget_verdict(verdict: str, jobs: Iterable[Job]) -> str:
    """A paired verdict as the runs allow it: one that rests on a run its cap stopped while its
    bound still rose says it cannot tell, and what it shows at this budget."""
    if any(capped_while_improving(j) for j in jobs) and not verdict.startswith(CANNOT_TELL):
        return f"{CANNOT_TELL} ({CAPPED_WHILE_IMPROVING}; {verdict} at this budget)"
    return verdict


def read_at(*rows: Row) -> str:
    """Whether a comparison of these rows is one at convergence (every run converged) or at a
    budget (some run stopped at its cap or time limit: what it would reach, it cannot tell)."""
    reasons = Counter(stop_label(job) for row in rows for job in row.done)
    if set(reasons) == {CONVERGED}:
        return "convergence"
    capped = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()) if k != CONVERGED)
    return f"a budget ({capped})"


def matched_steps(rows: list[Row], key: str = "val/elbo",
                  steps: tuple[int, ...] = (2_000, 6_000, 12_000, 24_000)) -> list[int]:
    """Update counts every run reached, from ``steps`` and the smallest final count; empty when
    every run stopped at the same update (the final table already compares them there)."""
    finals = [j.curves[key][-1][0] for r in rows for j in r.done if j.curves.get(key)]
    if len(set(finals)) <= 1:
        return []
    return sorted({*(s for s in steps if s < min(finals)), min(finals)})


def matched_updates_table(rows: list[Row], key: str = "val/elbo") -> tuple[list[str], list[str]]:
    """Row means of a validation curve at update counts every run reached, and the pairs of rows
    whose order changes between those counts (a comparison that depends on where it is read)."""
    steps = matched_steps(rows, key)
    if not steps:
        return [], []
    names = display_names(rows)
    means: dict[str, list[float]] = {}
    body = []
    for row, name in zip(rows, names, strict=True):
        cells, values = [], []
        for step in steps:
            at = [v for j in row.done if j.curves.get(key) if math.isfinite(v := _curve_value(j.curves[key], step))]
            mean, std = mean_std(at) if at else (math.nan, math.nan)
            values.append(mean)
            cells.append(fmt(mean, std) if at else "–")
        means[name] = values
        body.append([name, *cells])
    flips = []
    for a, b in itertools.combinations(names, 2):
        signs = {math.copysign(1.0, x - y) for x, y in zip(means[a], means[b], strict=True) if math.isfinite(x - y)}
        if len(signs) > 1:
            flips.append(f"{a} / {b}")
    return md_table(["row", *[f"{key} at update {s:,}" for s in steps]], body), flips


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
    return md_table(header, body)


def write_markdown(path: Path, sweep: str, jobs: list[Job], rows: list[Row], keys: list[str],
                   metrics: list[str], headline: str, baseline: str | None = None) -> None:
    unfinished = [j for j in jobs if j.status in (RUNNING, INTERRUPTED)]  # a study still running or cut off
    failed = [j for j in jobs if not j.ok and j not in unfinished]
    done = len(jobs) - len(failed) - len(unfinished)
    lines = [f"# Sweep report: {sweep}", "",
             f"{len(jobs)} jobs, {done} completed, "
             + (f"{len(unfinished)} not finished (running or interrupted), " if unfinished else "")
             + f"{len(failed)} failed. "
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
        gaps = generalization_table(rows)
        if gaps:
            lines += ["### The training bound against the validation bound", "",
                      f"`{TRAIN_BOUND}` is each epoch's mean bound on the training batches (with the weights of that "
                      "epoch, no aux or bwd terms); read at the epoch that ended last before the best checkpoint and "
                      "before the last validation. A gap that grows while the validation bound falls is a row "
                      "fitting its training data at the expense of held-out data, which the best checkpoint is "
                      "chosen to avoid.", "", *gaps, ""]
        matched, flips = matched_updates_table(rows)
        if matched:
            lines += ["### At matched updates", "",
                      "The runs stopped at different updates: mean validation bound of each row at update counts "
                      "every run reached (the last column: the smallest final count).", "", *matched, "",
                      ("Rows whose order changes between these counts: " + "; ".join(flips) + "."
                       if flips else "No pair of rows changes order between these counts."), ""]
    if metrics:
        lines += ["## All test metrics", ""]
        body = [[row.label, *[fmt(*row.stats(m)[:2]) for m in metrics], str(len(row.done)), str(len(row.failed))]
                for row in rows]
        lines += [*md_table(["configuration", *metrics, "n", "failed"], body), ""]
    shown = [*keys, *SEED_KEYS]

    def described(job: Job) -> str:
        return f"- `{job.name}` ({', '.join(f'{k}={v}' for k, v in job.overrides.items() if k in shown)}): "

    if failed:
        lines += ["## Failed jobs", "", *[described(j) + error_summary(j.error or j.status) for j in failed], ""]
    if unfinished:
        lines += ["## Jobs not finished", "", "Running, or interrupted: rerunning the study's command continues them.",
                  "", *[f"{described(j)}{j.status}, {len(j.curves.get('val/elbo') or [])} validations so far"
                        for j in unfinished], ""]
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
            cells: list[Any] = [row.label, row.name, *[values[k] for k in keys], len(row.done), len(row.failed),
                                " ".join(j.name for j in row.failed)]
            for m in metrics:
                mean, std, _ = row.stats(m)
                cells += [repr(mean), "" if math.isnan(std) else repr(std)]
            writer.writerow(cells)
