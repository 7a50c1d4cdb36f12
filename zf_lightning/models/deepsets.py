"""DeepSets (Zaheer et al., 2017), the invariant-by-construction baseline of the set tasks:
rho(pool_i phi(x_i)) with pool a sum or a mean.

To fit the sequence contract it predicts at every step from the prefix read so far (the pooled
prefix, a cumulative sum), so ``forward`` gives ``StepTerms`` like every other model and the
objective counts the labelled step only (the other steps' targets are ``IGNORE_TARGET``). The
prediction at the last step reads the whole set, and a sum does not depend on the order of its
terms (up to float rounding). The running sum is also a recurrence that is exactly order-free,
so DeepSets declares a ``DeterministicStep`` whose SIRE penalty is 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from zf_lightning.models.common import InputEmbedding, check_head
from zf_lightning.models.deterministic import DeterministicModel
from zf_lightning.models.heads import HeadFactory
from zf_lightning.models.layers import relu_mlp
from zf_lightning.types import DataSpec, DeterministicStep

Pooling = Literal["sum", "mean"]
# (running sum of phi [n, H], elements read [n, 1])
DeepSetsState = tuple[Tensor, Tensor]


class DeepSets(DeterministicModel, DeterministicStep):
    """phi: embedding + MLP per element; pool: sum or mean over the elements read; rho: MLP; head.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)``.
        emb_dim: input embedding (token lookup or linear map of real frames).
        hidden: width of phi's and rho's layers (phi's output is ``hidden`` too).
        phi_layers, rho_layers: layers of each MLP (>= 1).
        pooling: ``sum`` (can count: parity, sums) or ``mean`` (sees proportions only).
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, emb_dim: int = 32, hidden: int = 64,
                 phi_layers: int = 2, rho_layers: int = 2, pooling: Pooling = "sum") -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"model.pooling must be 'sum' or 'mean', got {pooling!r}")
        self.spec = spec
        self.pooling = pooling
        self.embedding = InputEmbedding(spec, emb_dim)
        self.phi = relu_mlp(emb_dim, hidden, hidden, phi_layers)
        self.rho = relu_mlp(hidden, hidden, hidden, rho_layers)
        self.output_head = head(hidden, spec.output_dim)
        check_head(self.output_head, spec)

    def _readout(self, total: Tensor, count: Tensor) -> Tensor:
        pooled = total / count.clamp_min(1.0) if self.pooling == "mean" else total
        return self.rho(pooled)

    def states(self, inputs: Tensor) -> Tensor:
        """rho(pool(phi(x_1..x_t))) at every step t: the prefix pooled with a cumulative sum."""
        total = torch.cumsum(self.phi(self.embedding(inputs)), dim=1)
        count = torch.arange(1, inputs.shape[1] + 1, device=total.device, dtype=total.dtype)
        return self._readout(total, count.view(1, -1, 1))

    def initial_state(self, n: int) -> DeepSetsState:
        device = self.output_head.proj.weight.device
        return torch.zeros(n, self.rho[0].in_features, device=device), torch.zeros(n, 1, device=device)

    def step(self, x: Tensor, state: DeepSetsState, z: Tensor | None = None) -> tuple[Tensor, DeepSetsState]:
        """Add one element to the running sum (``z`` is ignored: no latents)."""
        total, count = state
        total, count = total + self.phi(self.embedding(x)), count + 1.0
        return self.output_head(self._readout(total, count)), (total, count)

    def state_vector(self, state: DeepSetsState) -> Tensor:
        return torch.cat(state, dim=-1)
