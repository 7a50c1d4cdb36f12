"""The sweep-end Hydra callback: write the report (and a study's committed files), and fail
the multirun when a job failed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from zf_lightning.report.build import write_report
from zf_lightning.report.selection import DEFAULT_METRIC
from zf_lightning.report.study_notes import write_study_notes
from zf_lightning.runs.status import error_summary, failed_jobs, job_folders

log = logging.getLogger(__name__)


class SweepStatus(HydraCallback):
    """Hydra callback (zf_lightning/conf/hydra/callbacks/sweep_status.yaml): at the end of a multirun, write
    the report and exit nonzero when any job failed, naming the failed jobs.

    ``results_dir`` (studies): also write the report, jobs.csv, curves.csv and STUDY.md there,
    the small files that are committed; ``baseline`` adds paired differences against that row;
    ``choose`` (a pilot's grid keys) the setting validation chooses, by the metric ``choose_by``."""

    def __init__(self, report: bool = True, fail_exit_code: bool = True, results_dir: str | None = None,
                 baseline: str | None = None, choose: Sequence[str] = (), choose_by: str = DEFAULT_METRIC) -> None:
        self.report = report
        self.fail_exit_code = fail_exit_code
        self.results_dir = Path(results_dir) if results_dir else None
        self.baseline = baseline
        self.choose = [str(k) for k in choose]
        self.choose_by = choose_by

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if self.report:
            try:
                write_report(sweep_dir, baseline=self.baseline, choose=self.choose, choose_by=self.choose_by)
                log.info("sweep report: %s", sweep_dir / "report.md")
                if self.results_dir is not None:
                    write_report(sweep_dir, self.results_dir, baseline=self.baseline, choose=self.choose,
                                 choose_by=self.choose_by)
                    write_study_notes(config, sweep_dir, self.results_dir)
                    log.info("study results: %s", self.results_dir)
            except Exception as err:  # a broken report must not hide the jobs' own outcome
                log.warning("could not write the sweep report: %s", err)
        failures = failed_jobs(sweep_dir)
        if failures:
            lines = "\n".join(f"  {job}: {error_summary(error)}" for job, error in failures)
            message = f"{len(failures)} of {len(job_folders(sweep_dir))} jobs failed:\n{lines}"
            log.error(message)
            if self.fail_exit_code:
                raise SystemExit(message)
