"""How a job was launched: read once from Hydra where it hands over (train.py, eval.py) and
passed down, so nothing else in this package reads Hydra's globals and every part of a run works,
and is tested, without Hydra. A plain function call is ``RunContext()``: not a Hydra job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def _enum_name(value: Any) -> str:
    """``RunMode.MULTIRUN`` -> ``multirun``; ``Direction.minimize`` -> ``minimize``."""
    return str(value).rsplit(".", 1)[-1].lower()


@dataclass(frozen=True)
class RunContext:
    """The job's launch: its command-line overrides, Hydra's job name for them, its config-group
    choices, single run or multirun (job number, sweep folder), the sweeper's direction and the
    launcher's settings (threads per job), and Hydra's own config for the job's records."""

    mode: str | None = None  # "run" or "multirun" for a Hydra job; None for a plain call
    overrides: tuple[str, ...] = ()
    override_dirname: str = ""
    choices: Mapping[str, Any] = field(default_factory=dict)
    job_name: str = "train"
    num: int | None = None
    sweep_dir: str | None = None
    sweeper_direction: str = "minimize"
    launcher: Mapping[str, Any] = field(default_factory=dict)
    hydra_config: DictConfig | None = None

    @classmethod
    def from_hydra(cls) -> RunContext:
        """The running Hydra job's context (``RunContext()`` outside one)."""
        if not HydraConfig.initialized():
            return cls()
        hc = HydraConfig.get()
        mode = "run" if hc.get("mode") is None else _enum_name(hc.mode)
        launcher = OmegaConf.to_container(hc.launcher, resolve=False) if hc.get("launcher") else {}
        direction = (hc.get("sweeper") or {}).get("direction")
        return cls(
            mode=mode,
            overrides=tuple(str(o) for o in hc.overrides.task),
            override_dirname=str(hc.job.override_dirname or ""),
            choices={str(k): v for k, v in hc.runtime.choices.items() if not str(k).startswith("hydra/")},
            job_name=str(hc.job.name),
            num=hc.job.get("num") if mode == "multirun" else None,
            sweep_dir=str(hc.sweep.dir) if mode == "multirun" else None,
            sweeper_direction="minimize" if direction is None else _enum_name(direction),
            launcher=launcher if isinstance(launcher, dict) else {},
            hydra_config=OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}),
        )

    @property
    def hydra_job(self) -> bool:
        return self.mode is not None

    @property
    def multirun(self) -> bool:
        return self.mode == "multirun"

    def identity(self) -> dict[str, Any]:
        """What a job folder records as its job (status.json's ``job``; the report groups by it)."""
        if not self.hydra_job:
            return {}
        info: dict[str, Any] = {"overrides": list(self.overrides), "override_dirname": self.override_dirname,
                                "mode": self.mode}
        if self.multirun:
            info |= {"num": self.num, "sweep_dir": self.sweep_dir}
        return info

    def run_identity(self, tags: list[str]) -> dict[str, Any]:
        """The dashboard's name, group and tags for the job: named by its overrides, grouped by its
        sweep, tagged with ``tags`` and its short overrides."""
        if not self.hydra_job:
            return {}
        identity: dict[str, Any] = {"name": self.override_dirname or "default"}
        if self.multirun and self.sweep_dir:
            identity["group"] = Path(self.sweep_dir).name
        identity["tags"] = list(tags) + [o for o in self.overrides if "=" in o and len(o) < 64]
        return identity
