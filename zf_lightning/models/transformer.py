"""A causal Transformer encoder (pre-norm), the attention baseline of the capacity tasks
(Bhattamishra et al., 2024): step t attends to steps 1..t only, so it predicts from every
position like the recurrent models and also works on the generative data.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from zf_lightning.models.common import InputEmbedding, check_head
from zf_lightning.models.deterministic import DeterministicModel
from zf_lightning.models.heads import HeadFactory
from zf_lightning.types import DataSpec

PositionKind = Literal["learned", "sinusoidal", "none"]


def sinusoidal_positions(steps: int, dim: int, device: torch.device | None = None) -> Tensor:
    """The fixed encoding of Vaswani et al.: sin/cos of position / 10000^(2i/dim), ``[steps, dim]``."""
    position = torch.arange(steps, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    out = torch.zeros(steps, dim, device=device)
    out[:, 0::2] = torch.sin(position * frequency)
    out[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return out


class PositionalEncoding(nn.Module):
    """Adds position information: ``learned`` (a table of ``max_len`` rows), ``sinusoidal``
    (fixed, any length) or ``none`` (the causal mask alone tells positions apart)."""

    def __init__(self, kind: PositionKind, dim: int, max_len: int) -> None:
        super().__init__()
        if kind not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"model.positions must be learned, sinusoidal or none, got {kind!r}")
        self.kind = kind
        self.max_len = max_len
        self.table = nn.Embedding(max_len, dim) if kind == "learned" else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.shape[1]
        if self.table is not None:
            if steps > self.max_len:
                raise ValueError(
                    f"a sequence of {steps} steps is longer than the learned position table "
                    f"(model.max_len={self.max_len}); raise model.max_len or use model.positions=sinusoidal"
                )
            return x + self.table.weight[:steps]
        if self.kind == "sinusoidal":
            return x + sinusoidal_positions(steps, x.shape[-1], x.device)
        return x


class Transformer(DeterministicModel):
    """Causal Transformer encoder over the embedded inputs; the output head reads every position.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)``.
        d_model: width (embedding, attention and residual stream).
        layers, heads: encoder depth and attention heads (``d_model`` divisible by ``heads``).
        ff_dim: feed-forward width (default ``4 * d_model``).
        positions: ``learned`` | ``sinusoidal`` | ``none``.
        max_len: rows of the learned position table (longest sequence, test lengths included).
        dropout: on the embedding and inside the encoder.
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, d_model: int = 64, layers: int = 2, heads: int = 4,
                 ff_dim: int | None = None, positions: PositionKind = "learned", max_len: int = 512,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"model.layers must be >= 1, got {layers}")
        if heads < 1 or d_model % heads:
            raise ValueError(f"model.d_model ({d_model}) must be divisible by model.heads ({heads})")
        self.spec = spec
        self.d_model = d_model
        self.embedding = InputEmbedding(spec, d_model, dropout)
        self.positions = PositionalEncoding(positions, d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim or 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.output_head = head(d_model, spec.output_dim)
        check_head(self.output_head, spec)

    def states(self, inputs: Tensor) -> Tensor:
        x = self.positions(self.embedding(inputs))
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        return self.encoder(x, mask=causal, is_causal=True)
