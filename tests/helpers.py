"""Small builders shared by the unit tests (tiny models and batches, seeded)."""

from __future__ import annotations

import torch

from zf_lightning.models import BernoulliHead, CategoricalHead, GaussianHead, ZForcing
from zf_lightning.types import DataSpec, SequenceBatch

HEADS = {"real": GaussianHead, "binary": BernoulliHead, "tokens": CategoricalHead}


def make_batch(kind: str = "real", B: int = 3, T: int = 7, D: int = 5, ragged: bool = True,
               seed: int = 0) -> SequenceBatch:
    """A batch with lengths T, T-2 and 2 (ragged) and random contents of the given kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "tokens":
        x = torch.randint(0, D, (B, T), generator=g)
        y = torch.randint(0, D, (B, T), generator=g)
    elif kind == "binary":
        x = (torch.rand(B, T, D, generator=g) > 0.5).float()
        y = (torch.rand(B, T, D, generator=g) > 0.5).float()
    else:
        x = torch.randn(B, T, D, generator=g)
        y = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T)
    if ragged:
        mask[1, T - 2:] = 0
        mask[2, 2:] = 0
    return SequenceBatch(x, y, mask, labels=torch.arange(B))


def make_model(kind: str = "real", D: int = 5, seed: int = 0, **kwargs) -> ZForcing:
    torch.manual_seed(seed)
    spec = DataSpec(kind, D, "word" if kind == "tokens" else "sequence", 1 if kind == "tokens" else D)
    sizes = {"emb_dim": 7, "rnn_dim": 6, "z_dim": 3, "mlp_dim": 4} | kwargs
    return ZForcing(spec, HEADS[kind], **sizes)

