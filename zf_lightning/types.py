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


@dataclass
class SequenceBatch:
    """A padded batch of sequences.

    ``inputs[:, t]`` is what the model sees before it predicts ``targets[:, t]``.
    ``mask[:, t]`` is 1.0 for real steps and 0.0 for padding; masks are prefixes
    (a sequence's real steps come first).

    Shapes: ``inputs``/``targets`` are ``[B, T, D]`` floats for real or binary data and
    ``[B, T]`` int64 token ids for text; ``mask`` is ``[B, T]`` float; ``labels`` is an
    optional ``[B]`` tensor (e.g. digit class, sentiment) that models never see.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    labels: Tensor | None = None

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
        ``word``. Sums over a sequence are reported per ``unit``; for ``word`` the
        metric is per token (perplexity).
    dims_per_step: scalar dimensions scored per step, for bits per dimension
        (``dim`` for real/binary, 1 for tokens).
    """

    kind: InputKind
    dim: int
    unit: str
    dims_per_step: int

    def __post_init__(self) -> None:
        if self.kind not in ("real", "binary", "tokens"):
            raise ValueError(f"DataSpec.kind must be real, binary or tokens, got {self.kind!r}")
        if self.dim < 1 or self.dims_per_step < 1:
            raise ValueError(f"DataSpec dims must be positive, got {self}")

    @property
    def per_token(self) -> bool:
        """True when the headline metric is normalized per token (text), not per sequence."""
        return self.unit == "word"


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
