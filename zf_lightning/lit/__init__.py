"""The LightningModule that owns the objective, its weight schedules and its regularizers."""

from zf_lightning.lit.module import SequenceLitModule
from zf_lightning.lit.regularizers import SIRE, Regularizer
from zf_lightning.lit.schedules import Constant, Delayed, LinearRamp, WeightSchedule

__all__ = ["SIRE", "Constant", "Delayed", "LinearRamp", "Regularizer", "SequenceLitModule", "WeightSchedule"]
