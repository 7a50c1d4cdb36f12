"""How invariant a model is on set data: the permutation flip rate (and, for a real-valued
label, the spread of the prediction).

For a set sequence (``DataSpec.sets``: every real step is one element, the label sits at the
last step), permuting the real steps must not change the label. The flip rate is the fraction
of random permutations that change the model's predicted label (the argmax of
``predict_proba``, or the predicted value rounded to a whole number for regression) at the
labelled step: 0 for an invariant model. For regression the spread is the standard deviation
of the predicted value over the orders tried (the given one and the random ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zf_lightning.types import PredictsClasses, PredictsValues, SequenceBatch


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


def order_predictions(predict: Callable[[SequenceBatch], Tensor], batch: SequenceBatch, permutations: int,
                      generator: torch.Generator) -> Tensor:
    """``[1 + permutations, B, T]``: ``predict`` on the batch as given, then on random orders of it.

    Every order is predicted with the same random numbers (a latent model's prior draws), so the
    flip rate and spread measure the order alone, not sampling noise; the global RNG is left as
    it was."""
    orders = [batch] + [permute_elements(batch, generator) for _ in range(permutations)]
    seed = int(torch.randint(2**62, (), generator=generator))
    devices = [batch.inputs.device] if batch.inputs.device.type == "cuda" else []
    out = []
    for order in orders:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out.append(predict(order))
    return torch.stack(out)


def flip_counts(predictions: Tensor, scored: Tensor) -> tuple[Tensor, Tensor]:
    """(predictions of a random order that differ from the given order's, trials) at the scored steps."""
    changed = ((predictions[1:] != predictions[0]) & scored).sum()
    return changed.to(torch.get_default_dtype()), scored.sum() * float(predictions.shape[0] - 1)


@torch.no_grad()
def permutation_flips(model: PredictsClasses, batch: SequenceBatch, permutations: int, generator: torch.Generator,
                      samples: int = 1) -> tuple[Tensor, Tensor]:
    """(changed predictions, trials) over ``permutations`` random orders of every sequence, counted
    at the labelled steps; flip rate = changed / trials."""
    labels = order_predictions(lambda b: predicted_labels(model, b, samples), batch, permutations, generator)
    return flip_counts(labels, batch.scored > 0)


@torch.no_grad()
def permutation_spread(model: PredictsValues, batch: SequenceBatch, permutations: int, generator: torch.Generator,
                       samples: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """For a real-valued label: (changed rounded predictions, trials, the sum over the labelled
    steps of the prediction's standard deviation over the orders tried)."""
    scored = batch.scored > 0
    values = order_predictions(lambda b: model.predict_value(b, samples), batch, permutations, generator)
    changed, trials = flip_counts(values.round(), scored)
    spread = (values.std(dim=0, unbiased=False) * scored).sum()
    return changed, trials, spread
