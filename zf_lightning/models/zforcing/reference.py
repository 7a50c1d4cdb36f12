"""A plain, readable step-by-step Z-Forcing, in the shape of the authors' code.

Every quantity is computed inside the time loop from the model's own parameters, with
no folding or batching tricks. It is the ground truth the fast ``ZForcing.forward`` is
tested against (same parameters and noise → same terms) and the "straightforward"
baseline of the speed benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zf_lightning.models.common import mask_terms
from zf_lightning.models.distributions import gaussian_kl, gaussian_log_prob, reparameterize
from zf_lightning.models.layers import lstm_pointwise
from zf_lightning.models.zforcing.model import ZForcing
from zf_lightning.types import SequenceBatch, StepTerms


def reference_cell(model: ZForcing, emb_t: Tensor, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step written out in full: the cell reads [emb(x_t); z_map(z_t)] (or CLN)."""
    cell = model.cell
    if cell.cond_layer_norm:
        gain, bias = torch.clamp(model.z_map(z), -3.0, 3.0).chunk(2, dim=-1)
        gx = F.layer_norm(emb_t @ cell.weight_ih.t(), (4 * cell.hidden_size,), cell.ln_ih.weight, cell.ln_ih.bias)
        gh = F.layer_norm(h @ cell.weight_hh.t(), (4 * cell.hidden_size,)) * (1.0 + gain) + bias
        gates = gx + gh
    else:
        cell_in = torch.cat([emb_t, model.z_map(z)], dim=-1)
        gates = cell_in @ cell.weight_ih.t() + h @ cell.weight_hh.t() + cell.bias
    return lstm_pointwise(gates, c)


def reference_forward(model: ZForcing, batch: SequenceBatch, noise: Tensor) -> StepTerms:
    """Z-Forcing's per-step terms computed one step at a time (see the module docstring)."""
    B, T = batch.mask.shape
    b_all = model.backward_states(batch)
    h = batch.mask.new_zeros(B, model.rnn_dim)
    c = torch.zeros_like(h)
    nll, kl, aux, bwd, log_p, log_q = [], [], [], [], [], []
    for t in range(T):
        b = b_all[:, t]
        mean_p, logvar_p = model.prior(h)
        mean_q, logvar_q = model.posterior(torch.cat([h, b], dim=-1))
        z = reparameterize(mean_q, logvar_q, noise[:, t])
        kl.append(gaussian_kl(mean_q, logvar_q, mean_p, logvar_p))
        log_p.append(gaussian_log_prob(z, mean_p, logvar_p))
        log_q.append(gaussian_log_prob(z, mean_q, logvar_q))
        aux.append(model.aux_cost(h, z, b))
        bwd.append(model.backward_head.nll(model.backward_head(b), batch.inputs[:, t]))
        h, c = reference_cell(model, model.embedding(batch.inputs[:, t]), z, h, c)
        nll.append(model.output_head.nll(model.output_head(h), batch.targets[:, t]))
    terms = StepTerms(
        nll=torch.stack(nll, 1),
        kl=torch.stack(kl, 1),
        aux=torch.stack(aux, 1),
        bwd=torch.stack(bwd, 1),
        log_p_z=torch.stack(log_p, 1),
        log_q_z=torch.stack(log_q, 1),
    )
    return mask_terms(terms, batch.mask)
