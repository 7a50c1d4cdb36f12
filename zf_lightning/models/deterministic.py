"""What the models without latent variables share (LSTM, Transformer, LRU): each computes one
state per step from the inputs seen so far, and the output head reads it. So their ``nll`` is
the exact log-likelihood, ``kl`` is 0, and class probabilities need no sampling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zf_lightning.models.common import mask_terms
from zf_lightning.models.heads import OutputHead, label_nll
from zf_lightning.types import DataSpec, PredictsClasses, PredictsValues, SequenceBatch, StepTerms


class DeterministicModel(nn.Module, PredictsClasses, PredictsValues):
    """Base class: subclasses build ``spec``, ``output_head`` and ``states(inputs)``.

    ``states(inputs)[:, t]`` may read ``inputs[:, :t + 1]`` only (causal), so padding at the
    end of a sequence never changes its real steps and no packing or key mask is needed.
    """

    spec: DataSpec
    output_head: OutputHead

    def states(self, inputs: Tensor) -> Tensor:
        """``[B, T, H]`` states, step t computed from inputs up to t."""
        raise NotImplementedError

    def forward(self, batch: SequenceBatch) -> StepTerms:
        nll = label_nll(self.output_head, self.output_head(self.states(batch.inputs)), batch.targets, self.spec)
        return mask_terms(StepTerms.with_zeros(nll), batch.mask)

    def predict_proba(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """Class probabilities ``[B, T, C]`` from the inputs alone (``samples`` is unused: no latents)."""
        if self.spec.classes is None:
            raise ValueError(f"{type(self).__name__}.predict_proba needs classification data (DataSpec.classes)")
        return torch.softmax(self.output_head(self.states(batch.inputs)), dim=-1)

    def predict_value(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """The output head's mean ``[B, T]`` from the inputs alone (``samples`` is unused)."""
        if not self.spec.regression:
            raise ValueError(f"{type(self).__name__}.predict_value needs regression data (DataSpec.regression)")
        return self.output_head.mean(self.output_head(self.states(batch.inputs)))[..., 0]
