"""Regularizers: extra training penalties the objective adds, each weighted by a schedule.

A regularizer is built from the ``regularizer`` config group (``_target_``), checks at start-up
that the model can be regularized this way, and maps (model, batch) to one scalar penalty.

SIRE (Cohen-Karlik, Ben David and Globerson, NeurIPS 2020, "Regularizing Towards Permutation
Invariance in Recurrent Models"): for a state s reached on a prefix of a training sequence and
two elements a, b, penalize ||f(f(s, a), b) - f(f(s, b), a)||^2 where f is the model's step.
Adjacent swaps generate every permutation, so driving this to 0 on the states the data reaches
makes the recurrence order-free where it matters. Details and choices: docs/sets.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zf_lightning.types import DeterministicStep, HasMeanPath, HasStepFunction, LatentVariableModel, SequenceBatch

PairSource = Literal["same_set", "batch"]
LatentPath = Literal["refuse", "prior_mean"]
Compared = Literal["state", "output"]


class Regularizer(ABC):
    """A penalty ``(model, batch) -> scalar`` logged as ``train/<name>``, weighted by ``w_<name>``."""

    name: str

    @abstractmethod
    def check(self, model: nn.Module) -> None:
        """Raise one clear error at start-up when ``model`` cannot be regularized this way."""

    @abstractmethod
    def __call__(self, model: nn.Module, batch: SequenceBatch) -> Tensor:
        """The penalty for one training batch (a scalar with gradients to the model)."""


class SIRE(Regularizer):
    """The state-order penalty, averaged over sampled (state, pair) triples.

    Args:
        states_per_batch: prefix lengths k sampled per batch (distinct, uniform in
            ``0 .. longest sequence``); every sequence at least k long contributes its state
            after reading its first k elements (k = 0: the initial state).
        pairs_per_state: element pairs (a, b) per state.
        pair_source: ``same_set``: a and b are two different elements of the sequence the state
            came from; ``batch``: any two real steps of the batch (the training distribution).
        latent_path: for a latent model (its step samples z_t): ``refuse`` (the default), or
            ``prior_mean``: regularize its recurrence with z_t at the prior mean (``HasMeanPath``:
            Z-Forcing), the path the prior predicts, not the posterior the ELBO trains.
        compare: ``state``: the whole state (an LSTM's h and c); ``output``: the part the output
            reads (an LSTM's h, as the public Set-Tree implementation does; for an LSTM of width H
            the h+c penalty is a few times the h one, so a weight does not carry over between them).
    """

    name = "sire"

    def __init__(self, states_per_batch: int = 2, pairs_per_state: int = 2,
                 pair_source: PairSource = "same_set", latent_path: LatentPath = "refuse",
                 compare: Compared = "state") -> None:
        if states_per_batch < 1:
            raise ValueError(f"regularizer.states_per_batch must be >= 1, got {states_per_batch}")
        if pairs_per_state < 1:
            raise ValueError(f"regularizer.pairs_per_state must be >= 1, got {pairs_per_state}")
        if pair_source not in ("same_set", "batch"):
            raise ValueError(f"regularizer.pair_source must be 'same_set' or 'batch', got {pair_source!r}")
        if latent_path not in ("refuse", "prior_mean"):
            raise ValueError(f"regularizer.latent_path must be 'refuse' or 'prior_mean', got {latent_path!r}")
        if compare not in ("state", "output"):
            raise ValueError(f"regularizer.compare must be 'state' or 'output', got {compare!r}")
        self.compare = compare
        self.latent_path = latent_path
        self.states_per_batch = states_per_batch
        self.pairs_per_state = pairs_per_state
        self.pair_source = pair_source

    def stepper(self, model: nn.Module) -> DeterministicStep | None:
        """The deterministic step SIRE compares: the model's own, or its prior-mean path when
        ``latent_path=prior_mean`` and the model declares one; None when there is neither."""
        if isinstance(model, DeterministicStep):
            return model
        if self.latent_path == "prior_mean" and isinstance(model, HasMeanPath):
            return model.mean_path()
        return None

    def check(self, model: nn.Module) -> None:
        if self.stepper(model) is not None:
            noisy = sorted({f"{type(m).__name__}(p={m.p})" for m in model.modules()
                            if isinstance(m, nn.Dropout) and m.p > 0})
            if noisy:
                raise ValueError(
                    f"regularizer=sire compares the states two orders reach, but {type(model).__name__} has dropout "
                    f"({', '.join(noisy)}): the states would differ by dropout noise even for an order-free model; "
                    "set model.dropout=0 with regularizer=sire"
                )
            return
        if isinstance(model, HasMeanPath):
            why = ("its step function samples z_t, so the states after (a, b) and (b, a) would differ by noise; "
                   "regularizer.latent_path=prior_mean regularizes its recurrence with z_t at the prior mean")
        elif isinstance(model, HasStepFunction) and isinstance(model, LatentVariableModel):
            why = "its step function samples z_t, so the states after (a, b) and (b, a) would differ by noise"
        else:
            why = "it has no single-step function to read one element at a time"
        raise ValueError(
            f"regularizer=sire needs a model with a deterministic step function (DeterministicStep: model=rnn, "
            f"lru or deepsets; or model=zforcing with lit.regularizer.latent_path=prior_mean, the one latent model "
            f"with a prior-mean path), but {type(model).__name__} cannot be used: {why}; use regularizer=none with it"
        )

    def _pairs(self, batch: SequenceBatch, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Elements a and b per sequence (``[B, ...]`` inputs) and which sequences have a pair."""
        inputs, rows = batch.inputs, torch.arange(batch.batch_size, device=lengths.device)
        if self.pair_source == "same_set":
            span = lengths.clamp_min(2)
            u = (torch.rand(batch.batch_size, device=lengths.device) * lengths).long()
            # v != u: an offset in 1 .. len - 1
            v = (u + 1 + (torch.rand(batch.batch_size, device=lengths.device) * (span - 1)).long()) % span
            return inputs[rows, u], inputs[rows, v], lengths >= 2
        real = batch.mask.nonzero()  # [N, 2] (sequence, step) of every real step
        pick = torch.randint(real.shape[0], (2, batch.batch_size), device=lengths.device)
        a, b = real[pick[0]], real[pick[1]]
        return inputs[a[:, 0], a[:, 1]], inputs[b[:, 0], b[:, 1]], torch.ones_like(lengths, dtype=torch.bool)

    def _state_after(self, model: DeterministicStep, state: Any, first: Tensor, second: Tensor) -> Tensor:
        _, state = model.step(first, state)
        _, state = model.step(second, state)
        return model.output_vector(state) if self.compare == "output" else model.state_vector(state)

    def __call__(self, model: nn.Module, batch: SequenceBatch) -> Tensor:
        stepper = self.stepper(model)
        assert stepper is not None, "SIRE.check refuses such models at start-up"
        lengths = batch.lengths
        longest = int(lengths.max())
        count = min(self.states_per_batch, longest + 1)
        prefixes = set(torch.randperm(longest + 1)[:count].tolist())
        total = batch.inputs.new_zeros((), dtype=torch.float32)
        terms = 0
        state = stepper.initial_state(batch.batch_size)
        for k in range(max(prefixes) + 1):
            if k in prefixes:
                for _ in range(self.pairs_per_state):
                    a, b, has_pair = self._pairs(batch, lengths)
                    keep = (has_pair & (lengths >= k)).float()
                    gap = self._state_after(stepper, state, a, b) - self._state_after(stepper, state, b, a)
                    total = total + (gap.pow(2).sum(-1) * keep).sum()
                    terms += int(keep.sum())
            if k < max(prefixes):
                _, state = stepper.step(batch.inputs[:, k], state)
        return total / max(terms, 1)
