"""How invariant a model is on set data: the permutation flip rate.

For a set sequence (``DataSpec.sets``: every real step is one element, the label sits at the
last step), permuting the real steps must not change the label. The flip rate is the fraction
of random permutations that change the model's predicted label (the argmax of
``predict_proba`` at the labelled step): 0 for an invariant model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zf_lightning.types import PredictsClasses, SequenceBatch


def permute_elements(batch: SequenceBatch, generator: torch.Generator) -> SequenceBatch:
    """The batch with each sequence's real steps in a random order (padding stays at the end;
    targets, mask and sizes are unchanged, so the label stays at the last real step)."""
    keys = torch.rand(batch.mask.shape, generator=generator).to(batch.mask.device)
    keys = torch.where(batch.mask > 0, keys, 2.0)  # padding sorts after every real step
    order = keys.argsort(dim=1)
    index = order.view(*order.shape, *([1] * (batch.inputs.dim() - 2))).expand_as(batch.inputs)
    return SequenceBatch(inputs=torch.gather(batch.inputs, 1, index), targets=batch.targets, mask=batch.mask,
                         labels=batch.labels, sizes=batch.sizes)


def predicted_labels(model: PredictsClasses, batch: SequenceBatch, samples: int) -> Tensor:
    """The predicted class at every step ``[B, T]``."""
    return model.predict_proba(batch, samples).argmax(-1)


@torch.no_grad()
def permutation_flips(model: PredictsClasses, batch: SequenceBatch, permutations: int, generator: torch.Generator,
                      samples: int = 1) -> tuple[Tensor, Tensor]:
    """(changed predictions, trials) over ``permutations`` random orders of every sequence, counted
    at the labelled steps; flip rate = changed / trials."""
    scored = batch.scored > 0
    reference = predicted_labels(model, batch, samples)
    changed = torch.zeros((), device=batch.mask.device)
    for _ in range(permutations):
        permuted = predicted_labels(model, permute_elements(batch, generator), samples)
        changed = changed + ((permuted != reference) & scored).sum()
    return changed, scored.sum() * float(permutations)
