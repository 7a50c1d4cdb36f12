"""The LightningModule that owns the objective, and the weight schedules it uses."""

from zf_lightning.lit.module import SequenceLitModule
from zf_lightning.lit.schedules import Constant, LinearRamp, WeightSchedule

__all__ = ["Constant", "LinearRamp", "SequenceLitModule", "WeightSchedule"]
