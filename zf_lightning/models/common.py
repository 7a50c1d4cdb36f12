"""Sequence utilities shared by models: input embeddings, per-sequence reversal, masking, and the
autoregressive sampling loop (each model only says how one step turns the previous output into
head parameters)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zf_lightning.models.heads import OutputHead
from zf_lightning.models.products import linear
from zf_lightning.types import IGNORE_TARGET, CanGenerate, DataSpec, HasStepFunction, StepTerms


class InputEmbedding(nn.Module):
    """Linear map for real/binary frames, lookup table for tokens; optional dropout.

    The same embedding feeds the forward and the backward LSTM (as in the authors' code).
    """

    def __init__(self, spec: DataSpec, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = spec.kind
        self.proj: nn.Module = (
            nn.Embedding(spec.dim, emb_dim) if spec.kind == "tokens" else nn.Linear(spec.dim, emb_dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.proj, nn.Linear):
            return self.dropout(linear(x, self.proj.weight, self.proj.bias))
        return self.dropout(self.proj(x))


class LabelEmbedding(nn.Module):
    """Lookup table for class-id targets, with one extra row for steps that carry no label
    (``IGNORE_TARGET``): how a model that reads the targets (Z-Forcing's backward RNN) sees
    the future of a classification sequence."""

    def __init__(self, classes: int, emb_dim: int) -> None:
        super().__init__()
        self.classes = classes
        self.table = nn.Embedding(classes + 1, emb_dim)

    def forward(self, targets: Tensor) -> Tensor:
        return self.table(torch.where(targets == IGNORE_TARGET, self.classes, targets))


class ValueEmbedding(nn.Module):
    """Linear map of real-valued label targets and of whether a step carries one
    (``IGNORE_VALUE`` is NaN): how Z-Forcing's backward RNN sees the future of a regression
    sequence (e.g. a set whose sum is the label)."""

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim + 1, emb_dim)

    def forward(self, targets: Tensor) -> Tensor:
        missing = torch.isnan(targets)
        values = torch.where(missing, 0.0, targets)
        return self.proj(torch.cat([values, missing.any(-1, keepdim=True).to(values.dtype)], dim=-1))


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` [B, T, ...] within its own length; padding stays in place.

    Applying it twice is the identity, so it also maps a reversed RNN's outputs back.
    """
    B, T = x.shape[:2]
    steps = torch.arange(T, device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    rows = (index + torch.arange(0, B * T, T, device=x.device).unsqueeze(1)).view(-1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReverseRows.apply(x, rows)
    return _reverse_rows(x, rows)


def _reverse_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows of ``x`` [B, T, ...] taken in the order ``rows`` (over the B*T steps) as whole rows
    (``index_select``: one copy per step, where an elementwise ``gather`` reads an index per value)."""
    return x.reshape(x.shape[0] * x.shape[1], -1).index_select(0, rows).view(x.shape)


class _ReverseRows(torch.autograd.Function):
    """``reverse_padded`` as one node: the reversal is its own inverse, so the backward pass reverses
    the gradient the same way (autograd's for ``gather`` is a zero fill and a ``scatter_add``)."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        return _reverse_rows(x, rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        return _reverse_rows(grad, rows), None


def mask_terms(terms: StepTerms, mask: Tensor) -> StepTerms:
    """Set every term to exactly zero on padded steps (robust to inf/NaN computed there)."""
    keep = mask > 0
    return StepTerms(
        nll=torch.where(keep, terms.nll, 0.0),
        kl=torch.where(keep, terms.kl, 0.0),
        aux=torch.where(keep, terms.aux, 0.0),
        bwd=torch.where(keep, terms.bwd, 0.0),
        log_p_z=torch.where(keep, terms.log_p_z, 0.0),
        log_q_z=torch.where(keep, terms.log_q_z, 0.0),
    )


def check_head(head: nn.Module, spec: DataSpec) -> None:
    """Fail early, with the fix, when the output head cannot score this data's targets."""
    accepts = head.accepts if isinstance(head, OutputHead) else ()
    if spec.output_kind not in accepts:
        raise ValueError(
            f"output head {type(head).__name__} models {', '.join(accepts) or 'nothing'} data, but the data "
            f"module yields {spec.output_kind!r} targets; choose a matching head (e.g. output=gaussian for real "
            "frames, output=bernoulli for binary pixels, output=categorical for tokens or classes), or leave "
            "output unset to get the data's natural head"
        )
    size = head.dim if isinstance(head, OutputHead) else spec.output_dim
    if size != spec.output_dim:
        what = f"{spec.classes} classes" if spec.classes is not None else f"{spec.output_dim} values"
        raise ValueError(
            f"output head {type(head).__name__} predicts {size} values per step, but the data's targets are "
            f"{what}; a model that sizes its head for the inputs cannot be trained on labelled data (classes "
            "or a regressed value; use model=rnn, transformer, lru, deepsets or zforcing there)"
        )


class StepSampler(HasStepFunction, CanGenerate):
    """``generate`` for every model with a step function: z_t from the prior at each step (for
    latent models), each sample (or the head's mean) fed back as the next input."""

    spec: DataSpec
    output_head: OutputHead

    @torch.no_grad()
    def generate(self, n: int, steps: int, first_input: Tensor | None = None, use_mean: bool = False) -> Tensor:
        """``n`` sequences of ``steps`` steps: [n, steps, D] for frames, [n, steps] for tokens.

        ``first_input``: the input at t=0 ([n, D] frames or [n] token ids); zeros by default
        (the zero frame that precedes MNIST images, or token id 0).
        ``use_mean``: feed back and return the head's mean instead of a sample.
        """
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        if first_input is None:
            tokens = self.spec.kind == "tokens"
            shape = (n,) if tokens else (n, self.spec.dim)
            first_input = torch.zeros(shape, dtype=torch.long if tokens else torch.float32, device=device)
        x = first_input.to(device)
        state = self.initial_state(n)
        out = []
        for _ in range(steps):
            params, state = self.step(x, state)
            x = self.output_head.mean(params) if use_mean else self.output_head.sample(params)
            out.append(x)
        return torch.stack(out, 1)
