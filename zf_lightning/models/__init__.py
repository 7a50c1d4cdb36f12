"""Plain PyTorch models (no Lightning, no Hydra). Every model maps a SequenceBatch to StepTerms."""

from zf_lightning.models.heads import BernoulliHead, CategoricalHead, GaussianHead, OutputHead
from zf_lightning.models.zforcing import ZForcing

__all__ = ["BernoulliHead", "CategoricalHead", "GaussianHead", "OutputHead", "ZForcing"]
