"""The contracts every layer agrees on: what a batch is, what a model returns, what the data
looks like, and what a model can do beyond ``forward``.

Batches and terms are plain dataclasses of tensors, batch-first (``[B, T, ...]``), so data
modules, models and the LightningModule can be developed and tested independently.
Capabilities are small abstract base classes that a model inherits to declare them
(``class ZForcing(nn.Module, HasPosterior, ...)``); callers test them with ``isinstance``
instead of probing attribute names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor

InputKind = Literal["real", "binary", "tokens"]
# A token target that is not scored (PyTorch's ``ignore_index``): the steps of a classification
# sequence that carry no label. Its nll is exactly 0 (cross-entropy ignores it), so every sum
# over real steps (the loss, bounds, importance weights) counts only the labelled steps.
IGNORE_TARGET = -100
# The same for a real-valued target (regression on a sequence's label, e.g. a set's sum): NaN at
# the steps that carry no value. The real-valued heads score it 0, and ``SequenceBatch.scored``
# leaves it out.
IGNORE_VALUE = float("nan")


@dataclass
class SequenceBatch:
    """A padded batch of sequences.

    ``inputs[:, t]`` is what the model sees before it predicts ``targets[:, t]``.
    ``mask[:, t]`` is 1.0 for real steps and 0.0 for padding; masks are prefixes
    (a sequence's real steps come first).

    Shapes: ``inputs``/``targets`` are ``[B, T, D]`` floats for real or binary data and
    ``[B, T]`` int64 token ids for text; ``mask`` is ``[B, T]`` float; ``labels`` is an
    optional ``[B]`` tensor (e.g. digit class, sentiment) that models never see.

    Sequence classification: ``targets`` hold the class id at the labelled steps and
    ``IGNORE_TARGET`` at the others; ``mask`` still marks every real step (latent models
    count their KL there). ``sizes`` is an optional ``[B]`` int64 task size per sequence
    (e.g. the N of index lookup), for metrics per test size; models never see it.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    labels: Tensor | None = None
    sizes: Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs.shape[:2] != self.targets.shape[:2]:
            raise ValueError(
                f"inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} "
                "must share the batch and time dimensions [B, T]"
            )
        if self.mask.shape != self.inputs.shape[:2]:
            raise ValueError(
                f"mask has shape {tuple(self.mask.shape)}; expected [B, T] = "
                f"{tuple(self.inputs.shape[:2])}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def scored(self) -> Tensor:
        """``[B, T]`` float: the real steps whose target counts (for classification, the labelled
        steps; otherwise ``mask``)."""
        if self.targets.dtype.is_floating_point:
            if self.targets.device.type == "cpu" and self.targets.numel() and not torch.isnan(self.targets.amax()):
                # no NaN anywhere (the maximum propagates one): every real step is scored; a tenth of
                # the cost of testing every element, and on the CPU the test needs no device sync
                return self.mask.clone()
            unscored = torch.isnan(self.targets)
            return self.mask * ~(unscored.flatten(2).any(-1) if unscored.dim() > 2 else unscored)
        return self.mask * (self.targets != IGNORE_TARGET)

    @property
    def lengths(self) -> Tensor:
        """Number of real steps per sequence, ``[B]`` int64."""
        return self.mask.sum(dim=1).round().long()

    def to(self, device: torch.device | str) -> SequenceBatch:
        moved = {
            f.name: (v.to(device) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return SequenceBatch(**moved)


@dataclass
class StepTerms:
    """Per-step terms of a model's objective, each ``[B, T]``, exactly zero on padded steps.

    ``nll``: -log p(x_t | ...) summed over the frame's dimensions.
    ``kl``: KL(q(z_t) || p(z_t)) summed over latent dimensions (0 for deterministic models).
    ``aux``: the auxiliary cost -log p(b_t | z_t, ...) (0 where it does not apply).
    ``bwd``: the backward-RNN prediction cost (0 where it does not apply).
    ``log_p_z`` / ``log_q_z``: log-densities of the sampled z_t under prior and posterior,
    what importance sampling needs (0 for deterministic models).
    """

    nll: Tensor
    kl: Tensor
    aux: Tensor
    bwd: Tensor
    log_p_z: Tensor
    log_q_z: Tensor

    @classmethod
    def with_zeros(cls, nll: Tensor, **terms: Tensor) -> StepTerms:
        """Build terms from ``nll`` and whichever others apply; the rest are zeros."""
        zeros = torch.zeros_like(nll)
        names = [f.name for f in fields(cls) if f.name != "nll"]
        unknown = set(terms) - set(names)
        if unknown:
            raise TypeError(f"unknown StepTerms fields: {sorted(unknown)}")
        return cls(nll=nll, **{n: terms.get(n, zeros) for n in names})

    def masked_sums(self, mask: Tensor) -> dict[str, Tensor]:
        """Sum of every term over real steps, per sequence: ``{name: [B]}``."""
        return {f.name: (getattr(self, f.name) * mask).sum(dim=1) for f in fields(self)}

@dataclass(frozen=True)
class DataSpec:
    """Shape and reporting conventions of a dataset.

    kind: ``real`` (speech frames), ``binary`` (binarized pixels) or ``tokens`` (words).
    dim: features per step for real/binary data; vocabulary size for tokens.
    unit: the literature's reporting unit, e.g. ``image``, ``utterance``, ``sequence``,
        ``word``, ``label``. Sums over a sequence are reported per ``unit``; for ``word`` the
        metric is per token (perplexity). ``label``: a classification sequence carries one
        label, so per sequence is per labelled step.
    dims_per_step: scalar dimensions scored per step, for bits per dimension
        (``dim`` for real/binary, 1 for tokens).
    classes: set for sequence classification: the targets are class ids in ``[0, classes)``
        at the labelled steps, so the output side (a softmax over the classes) differs from
        the input side (``kind``, ``dim``). None: the targets are the next inputs.
    sets: the real steps of a sequence are the elements of a set, so their order carries no
        information (the set tasks): permuting them must not change the label, which is
        what the permutation flip rate measures.
    regression: the label is one real number at the labelled step (e.g. a set's sum, scored
        by a Gaussian head), ``IGNORE_VALUE`` at the other steps; exclusive with ``classes``.
    """

    kind: InputKind
    dim: int
    unit: str
    dims_per_step: int
    classes: int | None = None
    sets: bool = False
    regression: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("real", "binary", "tokens"):
            raise ValueError(f"DataSpec.kind must be real, binary or tokens, got {self.kind!r}")
        if self.dim < 1 or self.dims_per_step < 1:
            raise ValueError(f"DataSpec dims must be positive, got {self}")
        if self.classes is not None and self.classes < 2:
            raise ValueError(f"DataSpec.classes must be at least 2 (or None), got {self.classes}")
        if self.regression and self.classes is not None:
            raise ValueError("DataSpec: a label is either a class (classes) or a real value (regression), not both")

    @property
    def per_token(self) -> bool:
        """True when the headline metric is normalized per token (text), not per sequence."""
        return self.unit == "word"

    @property
    def labelled(self) -> bool:
        """True when a sequence carries a label at its labelled steps (a class or a real value)
        instead of predicting its next inputs."""
        return self.classes is not None or self.regression

    @property
    def output_kind(self) -> InputKind:
        """Kind of the targets: class ids are ``tokens``, a regression label is ``real``;
        otherwise the targets are inputs."""
        if self.regression:
            return "real"
        return "tokens" if self.classes is not None else self.kind

    @property
    def output_dim(self) -> int:
        """Size the output head predicts: the classes, one value, or the input's ``dim``."""
        if self.regression:
            return 1
        return self.classes if self.classes is not None else self.dim


# ---------------------------------------------------------------------------- capabilities
@dataclass
class PosteriorPass:
    """One pass of the forward recurrence under the posterior, every field [B, T, ...].

    ``h_prev`` is h_{t-1} (what the prior, posterior and aux head read at step t), ``h`` is
    h_t (what the output head reads), ``b`` the backward states.
    """

    h_prev: Tensor
    h: Tensor
    z: Tensor
    mean_q: Tensor
    logvar_q: Tensor
    b: Tensor


class LatentVariableModel(ABC):
    """A model with per-step latents z_t of size ``z_dim``: ``forward(batch, noise)`` takes the
    N(0, I) noise ``[B, T, z_dim]`` of one posterior path, so importance-sampled bounds can
    draw many paths reproducibly."""

    z_dim: int


class HasPosterior(LatentVariableModel):
    """A model whose posterior pass can run on its own and expose z_t and h_t (Z-Forcing):
    what latent probes, latent export and word resampling read."""

    @abstractmethod
    def infer(self, batch: SequenceBatch, noise: Tensor | None = None) -> PosteriorPass:
        """The forward recurrence driven by posterior samples (``noise`` fixes them)."""


class HasAuxCost(ABC):
    """A model that fills ``StepTerms.aux``; the objective refuses a positive aux weight for
    any other model, since that weight would silently do nothing."""

    @abstractmethod
    def aux_cost(self, h_prev: Tensor, z: Tensor, b: Tensor) -> Tensor:
        """Per-step auxiliary cost [B, T]: how badly z_t (with h_{t-1}) reconstructs the target b_t."""


class HasBackwardCost(ABC):
    """A model that can fill ``StepTerms.bwd`` from a head on its backward states. That head is a
    product as wide as the inputs' parameters (a vocabulary, on text), forward and backward, so the
    objective switches it off when no loss reads the term; ``bwd`` is then 0."""

    backward_cost: bool  # whether ``forward`` fills ``StepTerms.bwd``; on unless switched off


class CanGenerate(ABC):
    """A model that samples whole sequences from its prior, feeding samples back as inputs."""

    @abstractmethod
    def generate(self, n: int, steps: int, first_input: Tensor | None = None, use_mean: bool = False) -> Tensor:
        """``n`` sequences of ``steps`` steps ([n, steps, D] frames or [n, steps] token ids)."""


class HasStepFunction(ABC):
    """A model that can be run one step at a time from outside: decoders that choose each
    input themselves (text resampling) and regularizers that compare states reached by
    different orders of the same inputs."""

    @abstractmethod
    def initial_state(self, n: int) -> Any:
        """The recurrent state before the first step, for ``n`` sequences."""

    @abstractmethod
    def step(self, x: Tensor, state: Any, z: Tensor | None = None) -> tuple[Tensor, Any]:
        """Read the input ``x`` of one step; return the output head's parameters for that step's
        target and the new state. ``z`` fixes a latent model's z_t (None: drawn from the prior)."""


class DeterministicStep(HasStepFunction):
    """A model whose ``step`` is a deterministic function of (input, state) and whose state can
    be read as one vector per sequence: what SIRE compares (the states after reading a, b and
    b, a). Latent models are excluded: their step samples z_t, so two orders differ by noise."""

    @abstractmethod
    def state_vector(self, state: Any) -> Tensor:
        """The whole recurrent state as ``[n, S]`` (e.g. an LSTM's h and c side by side)."""

    def output_vector(self, state: Any) -> Tensor:
        """The part of the state the output reads (an LSTM's h); the whole state by default."""
        return self.state_vector(state)


class HasMeanPath(ABC):
    """A latent model whose recurrence also runs with z_t at the prior mean, a deterministic map
    of the state: what SIRE can regularize in a model whose own step samples z_t (that path is
    the prior's mean, not the posterior the ELBO trains)."""

    @abstractmethod
    def mean_path(self) -> DeterministicStep:
        """The recurrence with z_t = E[z_t | h_{t-1}] under the prior, as a deterministic step."""


class PredictsClasses(ABC):
    """A model that gives class probabilities ``[B, T, C]`` at every step without reading
    ``batch.targets``: what accuracy is computed from. A model whose objective reads the
    future (Z-Forcing's posterior reads the label) predicts from ``samples`` prior draws
    and averages the probabilities; deterministic models ignore ``samples``."""

    @abstractmethod
    def predict_proba(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """Class probabilities ``[B, T, C]`` at every step."""


class PredictsValues(ABC):
    """The same for a real-valued label (``DataSpec.regression``): the predicted value at every
    step without reading ``batch.targets`` (latent models: the mean over ``samples`` prior
    draws of the output head's mean)."""

    @abstractmethod
    def predict_value(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """Predicted values ``[B, T]`` at every step."""
