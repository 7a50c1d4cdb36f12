"""VRNN (Chung et al., NeurIPS 2015), Table 1's VRNN-I-Gauss / VRNN-Gauss / VRNN-GMM.

Published form, with x_t the frame generated at step t and h_{t-1} the state before it:
prior p(z_t | h_{t-1}) (or N(0, I) for VRNN-I), posterior q(z_t | phi_x(x_t), h_{t-1}),
decoder p(x_t | phi_z(z_t), h_{t-1}), recurrence h_t = f([phi_x(x_t); phi_z(z_t)], h_{t-1}).

Mapped to our batches (``inputs[:, t]`` is seen before ``targets[:, t]`` is scored):
x_t = ``targets[:, t]``, and the state s_t that plays h_{t-1} at step t is
s_t = f([phi_x(inputs[:, t]); phi_z(z_{t-1})], s_{t-1}) with z_{-1} contributing zeros.
For next-frame data (``inputs[:, t] = targets[:, t-1]``) this is exactly the VRNN
recurrence; ``inputs[:, 0]`` is the conditioning frame every model sees first. The
posterior at step t therefore reads the present target and the past, never the future.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.common import InputEmbedding, StepSampler, check_head
from zf_lightning.models.distributions import reparameterize
from zf_lightning.models.heads import HeadFactory
from zf_lightning.models.latent import LatentPath, latent_noise, latent_terms
from zf_lightning.models.layers import GaussianMLP, ZLSTMCell, lstm_pointwise
from zf_lightning.types import DataSpec, LatentVariableModel, SequenceBatch, StepTerms


def relu_features(first: nn.Module, hidden: int, out: int) -> nn.Sequential:
    """A two-layer ReLU feature extractor whose first layer is given (a Linear or an input embedding)."""
    return nn.Sequential(first, nn.ReLU(), nn.Linear(hidden, out), nn.ReLU())


class VRNN(nn.Module, LatentVariableModel, StepSampler):
    """Variational RNN with an LSTM recurrence.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)`` for p(x_t | phi_z(z_t), h_{t-1}).
        emb_dim: width of the features phi_x(x) and phi_z(z).
        rnn_dim, z_dim, mlp_dim: recurrent state, latent and hidden-layer sizes.
        independent_prior: VRNN-I, a fixed N(0, I) prior instead of p(z_t | h_{t-1}).
        dropout: on the input embedding (the first layer of phi_x).
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, emb_dim: int = 64, rnn_dim: int = 128, z_dim: int = 32,
                 mlp_dim: int = 64, independent_prior: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.rnn_dim = rnn_dim
        self.z_dim = z_dim
        self.emb_dim = emb_dim
        self.independent_prior = independent_prior
        self.phi_x = relu_features(InputEmbedding(spec, mlp_dim, dropout), mlp_dim, emb_dim)
        self.phi_z = relu_features(nn.Linear(z_dim, mlp_dim), mlp_dim, emb_dim)
        self.prior = None if independent_prior else GaussianMLP(rnn_dim, mlp_dim, z_dim)
        self.posterior = GaussianMLP(rnn_dim + emb_dim, mlp_dim, z_dim)  # input [h_{t-1}; phi_x(x_t)]
        self.decoder = nn.Sequential(nn.Linear(emb_dim + rnn_dim, mlp_dim), nn.ReLU())  # [phi_z(z_t); h_{t-1}]
        self.output_head = head(mlp_dim, spec.dim)
        check_head(self.output_head, spec)
        # the cell reads [phi_x(x); phi_z(z)]: its input columns, then its "z" columns
        self.cell = ZLSTMCell(emb_dim, emb_dim, rnn_dim)

    # ------------------------------------------------------------------ pieces
    def prior_params(self, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(z_t | h_{t-1}); zeros (N(0, I)) for VRNN-I."""
        if self.prior is None:
            zeros = h_prev.new_zeros(*h_prev.shape[:-1], self.z_dim)
            return zeros, zeros
        return self.prior(h_prev)

    def advance(self, x_gates: Tensor, phi_z_prev: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One recurrence step from the input's precomputed gates and the previous phi_z(z)."""
        gates = x_gates + self.cell.hidden_gates(F.linear(h, self.cell.weight_hh), phi_z_prev)
        return lstm_pointwise(gates, c)

    def emission(self, phi_z: Tensor, h_prev: Tensor) -> Tensor:
        """Head parameters of p(x_t | phi_z(z_t), h_{t-1})."""
        return self.output_head(self.decoder(torch.cat([phi_z, h_prev], dim=-1)))

    # ------------------------------------------------------------------ forward
    def posterior_path(self, batch: SequenceBatch, noise: Tensor) -> LatentPath:
        """Sample z_{1:T} ~ q(z_t | phi_x(x_t), h_{t-1}) with the given N(0, I) noise [B, T, z_dim]."""
        B, T = batch.mask.shape
        H = self.rnn_dim
        # what does not depend on the latent path, for all steps at once
        x_gates = self.cell.input_gates(self.phi_x(batch.inputs))
        post_first = self.posterior.first
        post_from_x = F.linear(self.phi_x(batch.targets), post_first.weight[:, H:], post_first.bias)
        w_post_h = post_first.weight[:, :H]

        h = batch.mask.new_zeros(B, H)
        c = torch.zeros_like(h)
        phi_z = batch.mask.new_zeros(B, self.emb_dim)
        hs, zs, params_q = [], [], []
        for t in range(T):
            h, c = self.advance(x_gates[:, t], phi_z, h, c)
            mean_q, logvar_q = self.posterior.from_hidden_preactivation(post_from_x[:, t] + h @ w_post_h.t())
            z = reparameterize(mean_q, logvar_q, noise[:, t])
            phi_z = self.phi_z(z)
            hs.append(h)
            zs.append(z)
            params_q.append(torch.cat([mean_q, logvar_q], dim=-1))

        h_prev = torch.stack(hs, 1)
        mean_q, logvar_q = torch.stack(params_q, 1).chunk(2, dim=-1)
        return LatentPath(h_prev, torch.stack(zs, 1), *self.prior_params(h_prev), mean_q, logvar_q)

    def forward(self, batch: SequenceBatch, noise: Tensor | None = None) -> StepTerms:
        """Per-step terms for one posterior path; ``noise`` [B, T, z_dim] reproduces a path."""
        path = self.posterior_path(batch, latent_noise(noise, batch.mask, self.z_dim))
        params = self.emission(self.phi_z(path.z), path.states)
        return latent_terms(path, self.output_head.nll(params, batch.targets), batch.mask)

    # ------------------------------------------------------------------ sampling
    def initial_state(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """(h, c, phi_z(z_{t-1})), all zeros."""
        h = self.cell.weight_hh.new_zeros(n, self.rnn_dim)
        return h, torch.zeros_like(h), h.new_zeros(n, self.emb_dim)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor, Tensor], z: Tensor | None = None) -> tuple[Tensor, Any]:
        """Advance h with x and the previous z, then emit from z_t (``z``, or drawn from the prior)."""
        h, c, phi_z = state
        h, c = self.advance(self.cell.input_gates(self.phi_x(x)), phi_z, h, c)
        if z is None:
            mean_p, logvar_p = self.prior_params(h)
            z = reparameterize(mean_p, logvar_p, torch.randn_like(mean_p))
        phi_z = self.phi_z(z)
        return self.emission(phi_z, h), (h, c, phi_z)
