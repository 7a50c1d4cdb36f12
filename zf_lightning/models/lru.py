"""A stack of linear recurrent units (LRU, Orvieto et al., 2023), the state-space models of the
capacity tasks: each layer runs a complex diagonal linear recurrence

    x_t = lambda * x_{t-1} + gamma * (B u_t),   y_t = Re(C x_t) + D * u_t,

with lambda = exp(-exp(nu) + i exp(theta)) (stable by construction, |lambda| < 1) and the
normalizer gamma = sqrt(1 - |lambda|^2). Being linear in x, the recurrence is computed for all
steps at once by a parallel scan (log2 T vectorized steps instead of T); the step-by-step
loop is kept as the reference the tests hold the scan to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.common import InputEmbedding, check_head
from zf_lightning.models.deterministic import DeterministicModel
from zf_lightning.models.heads import HeadFactory
from zf_lightning.models.layers import fp32_forward
from zf_lightning.types import DataSpec, DeterministicStep


def diagonal_scan(lam: Tensor, inputs: Tensor) -> Tensor:
    """x_t = lam * x_{t-1} + inputs_t with x_0 = 0, for every t at once (Hillis-Steele scan).

    ``lam`` ``[N]`` and ``inputs`` ``[B, T, N]`` (complex). After the step with offset k,
    x_t holds the sum over the last 2k inputs, so log2(T) steps give the full prefix sums.
    """
    x = inputs
    power = lam  # lam ** offset
    offset = 1
    steps = inputs.shape[1]
    while offset < steps:
        x = torch.cat([x[:, :offset], x[:, offset:] + power * x[:, :-offset]], dim=1)
        power = power * power
        offset *= 2
    return x


def diagonal_recurrence(lam: Tensor, inputs: Tensor) -> Tensor:
    """The same recurrence one step at a time: the plain reference for ``diagonal_scan``."""
    x = torch.zeros_like(inputs[:, 0])
    out = []
    for u_t in inputs.unbind(1):
        x = lam * x + u_t
        out.append(x)
    return torch.stack(out, 1)


class LRULayer(nn.Module):
    """One linear recurrent unit from ``width`` features to ``state_dim`` complex states and back.

    Eigenvalue moduli start uniform in the ring [r_min, r_max] and phases in [0, max_phase]
    (the paper's initialization); B and C are complex Gaussian, D real.
    """

    def __init__(self, width: int, state_dim: int, r_min: float = 0.4, r_max: float = 0.99,
                 max_phase: float = 2 * math.pi) -> None:
        super().__init__()
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"model.r_min and model.r_max must satisfy 0 <= r_min < r_max < 1, got {r_min}, {r_max}")
        u1, u2 = torch.rand(state_dim), torch.rand(state_dim)
        modulus_sq = u1 * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(modulus_sq)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2 + 1e-6))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1.0 - modulus_sq))
        self.B_re = nn.Parameter(torch.randn(state_dim, width) / math.sqrt(2 * width))
        self.B_im = nn.Parameter(torch.randn(state_dim, width) / math.sqrt(2 * width))
        self.C_re = nn.Parameter(torch.randn(width, state_dim) / math.sqrt(state_dim))
        self.C_im = nn.Parameter(torch.randn(width, state_dim) / math.sqrt(state_dim))
        self.D = nn.Parameter(torch.randn(width))

    def eigenvalues(self) -> Tensor:
        """lambda ``[N]`` (complex), modulus exp(-exp(nu)) < 1."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def drive(self, u: Tensor) -> Tensor:
        """gamma * (B u), complex, for inputs ``[..., width]``."""
        scale = torch.exp(self.gamma_log)
        return torch.complex(F.linear(u, self.B_re * scale[:, None]), F.linear(u, self.B_im * scale[:, None]))

    def readout(self, states: Tensor, u: Tensor) -> Tensor:
        """Re(C x) + D u."""
        return F.linear(states.real, self.C_re) - F.linear(states.imag, self.C_im) + self.D * u

    @fp32_forward
    def forward(self, u: Tensor, parallel: bool = True) -> Tensor:
        """``u`` ``[B, T, width]`` -> ``[B, T, width]``; ``parallel=False`` runs the step-by-step loop.
        Under autocast it runs in fp32: complex states have no bf16 form, and the state is long-lived."""
        states = (diagonal_scan if parallel else diagonal_recurrence)(self.eigenvalues(), self.drive(u))
        return self.readout(states, u)

    @fp32_forward
    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One step: ``u`` ``[n, width]``, complex state ``x`` ``[n, N]`` -> (output, new state)."""
        x = self.eigenvalues() * x + self.drive(u)
        return self.readout(x, u), x


class LRUBlock(nn.Module):
    """Pre-norm residual block: u + dropout(GLU(W GELU(LRU(LayerNorm(u)))))."""

    def __init__(self, width: int, state_dim: int, r_min: float, r_max: float, max_phase: float,
                 dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lru = LRULayer(width, state_dim, r_min, r_max, max_phase)
        self.out = nn.Linear(width, 2 * width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, u: Tensor, parallel: bool = True) -> Tensor:
        return self.finish(u, self.lru(self.norm(u), parallel))

    def finish(self, u: Tensor, y: Tensor) -> Tensor:
        """The residual branch after the recurrence: u + dropout(GLU(W GELU(y)))."""
        return u + self.dropout(F.glu(self.out(F.gelu(y)), dim=-1))

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the block: ``u`` ``[n, width]``, this layer's complex state ``x``."""
        y, x = self.lru.step(self.norm(u), x)
        return self.finish(u, y), x


class LRU(DeterministicModel, DeterministicStep):
    """Stack of LRU blocks over the embedded inputs; the output head reads every step.

    The state for ``step`` is one complex vector per layer; the update is deterministic (with
    dropout 0 or in eval mode), so SIRE applies.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)``.
        d_model: width of the residual stream.
        state_dim: complex states per layer (default ``d_model``).
        layers: number of blocks.
        r_min, r_max, max_phase: eigenvalue initialization (modulus ring and phase range).
        dropout: on the embedding and each block's output.
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, d_model: int = 64, state_dim: int | None = None,
                 layers: int = 2, r_min: float = 0.4, r_max: float = 0.99, max_phase: float = 2 * math.pi,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"model.layers must be >= 1, got {layers}")
        self.spec = spec
        self.d_model = d_model
        self.embedding = InputEmbedding(spec, d_model, dropout)
        self.blocks = nn.ModuleList(
            LRUBlock(d_model, state_dim or d_model, r_min, r_max, max_phase, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output_head = head(d_model, spec.output_dim)
        check_head(self.output_head, spec)

    def states(self, inputs: Tensor, parallel: bool = True) -> Tensor:
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x, parallel)
        return self.norm(x)

    def initial_state(self, n: int) -> list[Tensor]:
        """Zero complex states, one ``[n, state_dim]`` per layer."""
        device = self.norm.weight.device
        return [torch.zeros(n, block.lru.nu_log.shape[0], dtype=torch.complex64, device=device)
                for block in self.blocks]

    def step(self, x: Tensor, state: list[Tensor], z: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """One step of the whole stack (``z`` is ignored: no latents); the same arithmetic as
        ``states`` with the recurrence unrolled by one."""
        u = self.embedding(x)
        new_state = []
        for block, layer_state in zip(self.blocks, state, strict=True):
            u, layer_state = block.step(u, layer_state)
            new_state.append(layer_state)
        return self.output_head(self.norm(u)), new_state

    def state_vector(self, state: list[Tensor]) -> Tensor:
        """Every layer's complex state as real and imaginary parts, ``[n, 2 * layers * state_dim]``."""
        return torch.cat([torch.view_as_real(x).flatten(1) for x in state], dim=-1)
