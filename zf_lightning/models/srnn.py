"""SRNN (Fraccaro et al., NeurIPS 2016), Table 1's "SRNN (smooth + Resq)".

Generation: a deterministic layer d_t = RNN(d_{t-1}, u_t) over the inputs u_t =
``inputs[:, t]``, a state-space latent chain p(z_t | z_{t-1}, d_t) (z_0 = 0) and the
emission p(x_t | z_t, d_t) of the frame ``targets[:, t]``.

Inference: a_t = RNN over [d_t; x_t] run backwards (smoothing: a_t has read x_{t:T}) or
forwards (``filtering``), and q(z_t | z_{t-1}, a_t). With ``resq`` the posterior mean is the
prior mean plus a learned residual, so the KL only has to pay for what the data adds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.common import InputEmbedding, StepSampler, check_head, reverse_padded
from zf_lightning.models.distributions import reparameterize
from zf_lightning.models.heads import HeadFactory
from zf_lightning.models.latent import LatentPath, latent_noise, latent_terms
from zf_lightning.models.layers import GaussianMLP
from zf_lightning.models.rnn import make_rnn
from zf_lightning.types import DataSpec, LatentVariableModel, SequenceBatch, StepTerms


class SRNN(nn.Module, LatentVariableModel, StepSampler):
    """Stochastic RNN with a deterministic and a state-space latent layer.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)`` for p(x_t | z_t, d_t).
        emb_dim: input embedding size (inputs feed d_t; targets feed the inference RNN).
        rnn_dim, z_dim, mlp_dim: sizes of d_t and a_t, of z_t, and of the MLPs' hidden layer.
        rnn: ``lstm`` or ``gru`` (the paper used GRUs) for both recurrent layers.
        filtering: infer z_t from the past and present only (forward inference RNN).
        resq: posterior mean = prior mean + residual (the paper's best variant).
        dropout: on the input embedding.
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, emb_dim: int = 64, rnn_dim: int = 128, z_dim: int = 32,
                 mlp_dim: int = 64, rnn: str = "gru", filtering: bool = False, resq: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.rnn_dim = rnn_dim
        self.z_dim = z_dim
        self.mlp_dim = mlp_dim
        self.filtering = filtering
        self.resq = resq
        self.embedding = InputEmbedding(spec, emb_dim, dropout)
        self.forward_rnn = make_rnn(rnn, emb_dim, rnn_dim)
        self.inference_rnn = make_rnn(rnn, rnn_dim + emb_dim, rnn_dim)  # over [d_t; emb(x_t)]
        self.prior = GaussianMLP(z_dim + rnn_dim, mlp_dim, z_dim)  # [z_{t-1}; d_t]
        self.posterior = GaussianMLP(z_dim + rnn_dim, mlp_dim, z_dim)  # [z_{t-1}; a_t]
        self.decoder = nn.Sequential(nn.Linear(z_dim + rnn_dim, mlp_dim), nn.ReLU())  # [z_t; d_t]
        self.output_head = head(mlp_dim, spec.dim)
        check_head(self.output_head, spec)

    # ------------------------------------------------------------------ pieces
    def inference_states(self, batch: SequenceBatch, d: Tensor) -> Tensor:
        """a_t for every step: the inference RNN over [d_t; emb(x_t)], backwards unless filtering."""
        features = torch.cat([d, self.embedding(batch.targets)], dim=-1)
        if self.filtering:
            return self.inference_rnn(features)[0]
        lengths = batch.lengths
        return reverse_padded(self.inference_rnn(reverse_padded(features, lengths))[0], lengths)

    def emission(self, z: Tensor, d: Tensor) -> Tensor:
        """Head parameters of p(x_t | z_t, d_t)."""
        return self.output_head(self.decoder(torch.cat([z, d], dim=-1)))

    # ------------------------------------------------------------------ forward
    def posterior_path(self, batch: SequenceBatch, noise: Tensor) -> LatentPath:
        """Sample z_{1:T} ~ q(z_t | z_{t-1}, a_t) with the given N(0, I) noise [B, T, z_dim]."""
        B, T = batch.mask.shape
        Z, M = self.z_dim, self.mlp_dim
        # the deterministic layers and their projections into prior and posterior, all steps at once
        d = self.forward_rnn(self.embedding(batch.inputs))[0]
        a = self.inference_states(batch, d)
        p_first, q_first = self.prior.first, self.posterior.first
        prior_from_d = F.linear(d, p_first.weight[:, Z:], p_first.bias)
        post_from_a = F.linear(a, q_first.weight[:, Z:], q_first.bias)
        w_z = torch.cat([p_first.weight[:, :Z], q_first.weight[:, :Z]], dim=0)  # one product from z_{t-1}

        z = batch.mask.new_zeros(B, Z)
        zs, params_p, params_q = [], [], []
        for t in range(T):
            from_z = z @ w_z.t()
            mean_p, logvar_p = self.prior.from_hidden_preactivation(prior_from_d[:, t] + from_z[:, :M])
            mean_q, logvar_q = self.posterior.from_hidden_preactivation(post_from_a[:, t] + from_z[:, M:])
            if self.resq:
                mean_q = mean_p + mean_q
            z = reparameterize(mean_q, logvar_q, noise[:, t])
            zs.append(z)
            params_p.append(torch.cat([mean_p, logvar_p], dim=-1))
            params_q.append(torch.cat([mean_q, logvar_q], dim=-1))

        mean_p, logvar_p = torch.stack(params_p, 1).chunk(2, dim=-1)
        mean_q, logvar_q = torch.stack(params_q, 1).chunk(2, dim=-1)
        return LatentPath(d, torch.stack(zs, 1), mean_p, logvar_p, mean_q, logvar_q)

    def forward(self, batch: SequenceBatch, noise: Tensor | None = None) -> StepTerms:
        """Per-step terms for one posterior path; ``noise`` [B, T, z_dim] reproduces a path."""
        path = self.posterior_path(batch, latent_noise(noise, batch.mask, self.z_dim))
        params = self.emission(path.z, path.states)
        return latent_terms(path, self.output_head.nll(params, batch.targets), batch.mask)

    # ------------------------------------------------------------------ sampling
    def initial_state(self, n: int) -> tuple[Any, Tensor]:
        """(the forward RNN's state, z_{t-1}): the RNN's zero state and z_0 = 0."""
        return None, self.prior.first.weight.new_zeros(n, self.z_dim)

    def step(self, x: Tensor, state: tuple[Any, Tensor], z: Tensor | None = None) -> tuple[Tensor, Any]:
        """d_t from x, then z_t (``z``, or drawn from p(z_t | z_{t-1}, d_t)) and the emission."""
        rnn_state, z_prev = state
        d, rnn_state = self.forward_rnn(self.embedding(x).unsqueeze(1), rnn_state)
        d = d.squeeze(1)
        if z is None:
            mean_p, logvar_p = self.prior(torch.cat([z_prev, d], dim=-1))
            z = reparameterize(mean_p, logvar_p, torch.randn_like(mean_p))
        return self.emission(z, d), (rnn_state, z)
