"""Plain PyTorch models (no Lightning, no Hydra). Every model maps a SequenceBatch to StepTerms."""

from zf_lightning.models.deepsets import DeepSets
from zf_lightning.models.heads import BernoulliHead, CategoricalHead, GaussianHead, GMMHead, OutputHead
from zf_lightning.models.lru import LRU
from zf_lightning.models.rnn import RNN
from zf_lightning.models.srnn import SRNN
from zf_lightning.models.transformer import Transformer
from zf_lightning.models.vrnn import VRNN
from zf_lightning.models.zforcing import ZForcing

__all__ = ["LRU", "RNN", "SRNN", "VRNN", "BernoulliHead", "CategoricalHead", "DeepSets", "GMMHead", "GaussianHead",
           "OutputHead", "Transformer", "ZForcing"]
