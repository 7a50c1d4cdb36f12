"""The job's loggers: W&B run identity from the job's overrides (one run per job, grouped by
sweep, continued on resume), samples and the analyses' tables as W&B media, and closing the run at the end of every
job, a failed one too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_class
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from zf_lightning.evaluation.probes import Table
from zf_lightning.runs.checkpoint import resolved_config
from zf_lightning.runs.context import RunContext
from zf_lightning.runs.resume import ResumePoint


def build_loggers(cfg: DictConfig, resume: ResumePoint | None = None,
                  context: RunContext | None = None) -> list[Logger]:
    """Loggers of the ``logger`` group. W&B: one run per job, named and tagged by the job's
    overrides, grouped by sweep, with the resolved config; a resumed job continues its run."""
    loggers: list[Logger] = []
    context = context or RunContext()
    identity = context.run_identity(list(cfg.get("tags") or []))
    stored = resume.wandb if resume is not None else {}
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        # built by hand, not by instantiate(): the W&B `config` kwarg would clash with
        # instantiate's own argument, and its `_target_` entries must not be instantiated
        params = OmegaConf.to_container(lg_cfg, resolve=True)
        assert isinstance(params, dict)
        logger_cls = get_class(str(params.pop("_target_")))
        extra: dict[str, Any] = {}
        if issubclass(logger_cls, WandbLogger):
            extra = {k: v for k, v in identity.items() if lg_cfg.get(k) in (None, [], ())}
            if identity.get("tags"):
                extra["tags"] = identity["tags"]
            if stored.get("id"):
                # the same run, its original name/group/tags (a resume command has other overrides)
                extra |= {k: v for k, v in stored.items() if k in ("name", "group", "tags") and v}
                extra |= {"id": stored["id"], "resume": "allow"}
            extra["config"] = resolved_config(cfg) | {"job": context.identity()}
        loggers.append(logger_cls(**(params | extra)))
    return loggers


def log_samples(loggers: list[Logger], paths: list[Path], step: int) -> None:
    """Samples as W&B media: .png -> image, .wav -> audio, .txt -> a table of lines."""
    runs = [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]
    if not runs or not paths:
        return
    import wandb

    media: dict[str, Any] = {}
    images = [wandb.Image(str(p), caption=p.name) for p in paths if p.suffix == ".png"]
    audio = [wandb.Audio(str(p), caption=p.name) for p in paths if p.suffix == ".wav"]
    texts = [[p.name, line] for p in paths if p.suffix == ".txt" for line in p.read_text().splitlines() if line]
    if images:
        media["samples/images"] = images
    if audio:
        media["samples/audio"] = audio
    if texts:
        media["samples/text"] = wandb.Table(columns=["file", "sample"], data=texts)
    if media:
        for run in runs:
            run.log(media | {"trainer/global_step": step})



def log_tables(loggers: list[Logger], tables: dict[str, Table], step: int) -> None:
    """The analyses' tables (e.g. resampled text) as W&B tables, one per key."""
    runs = [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]
    if not runs or not tables:
        return
    import wandb

    for key, table in tables.items():
        for run in runs:
            run.log({key: wandb.Table(columns=table.columns, data=table.rows), "trainer/global_step": step})

def close_loggers(failed: bool) -> None:
    """Finish the W&B run of this job (failed ones too) so the next multirun job gets its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a requirement
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
