"""Small builders shared by the unit tests (tiny models and batches, seeded)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from zf_lightning.models import BernoulliHead, CategoricalHead, GaussianHead, ZForcing
from zf_lightning.types import DataSpec, SequenceBatch

HEADS = {"real": GaussianHead, "binary": BernoulliHead, "tokens": CategoricalHead}
REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts") -> ModuleType:
    """A script of the repository (``scripts/<name>.py``; or of ``folder``) imported as a module,
    registered under its name (dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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



def assert_second_backward_doubles(model: nn.Module, loss: Tensor) -> None:
    """A second backward through a retained graph adds the same gradients again: nothing the
    first pass freed or overwrote in place is read by the second."""
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss.backward()
    for n, p in model.named_parameters():
        if n in once:
            torch.testing.assert_close(p.grad, 2 * once[n], msg=n)
