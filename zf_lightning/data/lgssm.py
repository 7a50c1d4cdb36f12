"""Sequences from a linear-Gaussian state-space model, with their exact log-likelihood.

    s_1 ~ N(m0, P0),   s_t = A s_{t-1} + w_t,  w_t ~ N(0, Q),
    x_t = C s_t + v_t,  v_t ~ N(0, R).

A latent-variable model trained on these sequences can be compared with the truth: the
Kalman filter gives log p(x_1:T) exactly, so the gap between a model's ELBO / IWAE bound
and the exact log-likelihood is a number instead of a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Unpack

import numpy as np
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal
from torch.utils.data import Dataset

from zf_lightning.data.base import LoaderOptions, SequenceDataModule, SequenceItem
from zf_lightning.types import DataSpec

SPLITS = ("train", "val", "test")
# Independent random streams (numpy SeedSequence entropy [seed, stream]) so that changing
# one split's size never changes the parameters or the other splits.
_PARAM_STREAM = 0
_SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class LgssmParams:
    """Parameters of the model, float64: A [S, S], C [D, S], Q [S, S], R [D, D], m0 [S], P0 [S, S]."""

    A: Tensor
    C: Tensor
    Q: Tensor
    R: Tensor
    m0: Tensor
    P0: Tensor

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.A, self.C, self.Q, self.R, self.m0, self.P0


def _symmetrize(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def kalman_log_likelihood(
    x: Tensor, A: Tensor, C: Tensor, Q: Tensor, R: Tensor, m0: Tensor, P0: Tensor
) -> Tensor:
    """Exact log p(x_1:T) per sequence, ``x`` [N, T, D] -> [N] float64.

    Predictive decomposition log p(x_1:T) = sum_t log N(x_t; C m_t|t-1, C P_t|t-1 C^T + R),
    evaluated with Cholesky solves in float64. Covariances do not depend on the data, so
    they are propagated once and shared by all N sequences.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [N, T, D], got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    A, C, Q, R, m0, P0 = (t.to(device=x.device, dtype=torch.float64) for t in (A, C, Q, R, m0, P0))
    n, steps, obs_dim = x.shape
    eye = torch.eye(A.shape[0], dtype=torch.float64, device=x.device)
    mean = m0.expand(n, -1)  # [N, S] predictive mean of s_t
    cov = P0  # [S, S] predictive covariance of s_t
    total = x.new_zeros(n)
    log_2pi = math.log(2.0 * math.pi)
    for t in range(steps):
        innov_cov = _symmetrize(C @ cov @ C.T + R)
        chol = torch.linalg.cholesky(innov_cov)
        innov = x[:, t] - mean @ C.T  # [N, D]
        white = torch.linalg.solve_triangular(chol, innov.T, upper=False)  # [D, N]
        log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
        total = total - 0.5 * (white.pow(2).sum(0) + log_det + obs_dim * log_2pi)
        # Gain K = P C^T S^-1, computed as (S^-1 C P)^T with the Cholesky factor.
        gain = torch.cholesky_solve(C @ cov, chol).T  # [S, D]
        mean = mean + innov @ gain.T
        # Joseph form keeps the filtered covariance symmetric positive definite.
        keep = eye - gain @ C
        cov = keep @ cov @ keep.T + gain @ R @ gain.T
        mean = mean @ A.T
        cov = _symmetrize(A @ cov @ A.T + Q)
    return total


def joint_gaussian(
    steps: int, A: Tensor, C: Tensor, Q: Tensor, R: Tensor, m0: Tensor, P0: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean [T*D] and covariance [T*D, T*D] of the stacked observations x_1:T (float64)."""
    A, C, Q, R, m0, P0 = (t.to(torch.float64) for t in (A, C, Q, R, m0, P0))
    means = [m0]
    marg_covs = [P0]
    for _ in range(1, steps):
        means.append(A @ means[-1])
        marg_covs.append(A @ marg_covs[-1] @ A.T + Q)
    # Cov(s_t, s_u) = A^(t-u) Cov(s_u) for t >= u.
    blocks: list[list[Tensor]] = [[R] * steps for _ in range(steps)]
    for u in range(steps):
        cross = marg_covs[u]
        for t in range(u, steps):
            block = C @ cross @ C.T + (R if t == u else 0.0)
            blocks[t][u] = block
            blocks[u][t] = block.T
            cross = A @ cross
    joint_cov = _symmetrize(torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0))
    return torch.cat([C @ m for m in means]), joint_cov


def dense_log_likelihood(
    x: Tensor, A: Tensor, C: Tensor, Q: Tensor, R: Tensor, m0: Tensor, P0: Tensor
) -> Tensor:
    """log p(x_1:T) from the joint Gaussian of all T*D observations, ``x`` [N, T, D] -> [N].

    O((T*D)^3): a reference for short sequences, independent of the filter's recursions.
    """
    x = x.to(torch.float64)
    n, steps, obs_dim = x.shape
    mean, cov = joint_gaussian(steps, *(t.to(x.device) for t in (A, C, Q, R, m0, P0)))
    return MultivariateNormal(mean, covariance_matrix=cov).log_prob(x.reshape(n, steps * obs_dim))


def sample_lgssm(params: LgssmParams, num_sequences: int, seq_len: int, rng: np.random.Generator) -> Tensor:
    """Draw ``num_sequences`` observation sequences [N, T, D] (float64) from the model."""
    A, C, Q, R, m0, P0 = (p.numpy() for p in params.as_tuple())
    chol_q, chol_r, chol_p0 = (np.linalg.cholesky(m) for m in (Q, R, P0))
    state_dim, obs_dim = A.shape[0], C.shape[0]
    state = m0 + rng.standard_normal((num_sequences, state_dim)) @ chol_p0.T
    out = np.empty((num_sequences, seq_len, obs_dim))
    for t in range(seq_len):
        if t > 0:
            state = state @ A.T + rng.standard_normal((num_sequences, state_dim)) @ chol_q.T
        out[:, t] = state @ C.T + rng.standard_normal((num_sequences, obs_dim)) @ chol_r.T
    return torch.from_numpy(out)


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


class ShiftedSequences(Dataset):
    """Fixed-length sequences x [N, T, D] as items (inputs=[0, x_1..x_{T-1}], targets=x_1..x_T)."""

    def __init__(self, sequences: Tensor) -> None:
        self.targets = sequences
        self.inputs = torch.cat([torch.zeros_like(sequences[:, :1]), sequences[:, :-1]], dim=1)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> SequenceItem:
        return self.inputs[index], self.targets[index], None


def _matrix(values: Sequence[Sequence[float]], shape: tuple[int, int], name: str) -> np.ndarray:
    """Turn a config list (possibly an OmegaConf ListConfig) into a checked float64 matrix."""
    matrix = np.array([[float(v) for v in row] for row in values], dtype=np.float64)
    if matrix.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {matrix.shape}")
    return matrix


class LgssmDataModule(SequenceDataModule):
    """Synthetic LGSSM sequences whose exact log-likelihood is known (``exact_log_likelihood``).

    ``A`` is ``transition_scale`` times a random rotation (spectral radius ``transition_scale``:
    stable, oscillating dynamics) unless ``transition`` gives the matrix; ``C`` has N(0, 1/S)
    entries unless ``emission`` gives it. Q, R and P0 are isotropic with standard deviations
    ``process_noise``, ``obs_noise`` and ``init_std``; m0 = 0. Every sequence is scored from its
    first observation: inputs start with a zero frame, so a model's bound on the targets is
    comparable with the exact log p(x_1:T).
    """

    def __init__(
        self,
        state_dim: int = 2,
        obs_dim: int = 4,
        seq_len: int = 20,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 500,
        transition_scale: float = 0.95,
        transition: Sequence[Sequence[float]] | None = None,
        emission: Sequence[Sequence[float]] | None = None,
        process_noise: float = 0.5,
        obs_noise: float = 0.3,
        init_std: float = 1.0,
        seed: int = 0,
        **loader: Unpack[LoaderOptions],
    ) -> None:
        super().__init__(**loader)
        if min(state_dim, obs_dim, seq_len) < 1:
            raise ValueError("state_dim, obs_dim and seq_len must be >= 1")
        if min(num_train, num_val, num_test) < 1:
            raise ValueError("num_train, num_val and num_test must be >= 1")
        if min(process_noise, obs_noise, init_std) <= 0:
            raise ValueError("process_noise, obs_noise and init_std must be > 0")
        self.state_dim, self.obs_dim, self.seq_len = state_dim, obs_dim, seq_len
        self.split_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.params = self._build_params(
            transition_scale, transition, emission, process_noise, obs_noise, init_std
        )
        self._sequences: dict[str, Tensor] = {}
        self._exact: dict[str, Tensor] = {}

    def _build_params(
        self,
        transition_scale: float,
        transition: Sequence[Sequence[float]] | None,
        emission: Sequence[Sequence[float]] | None,
        process_noise: float,
        obs_noise: float,
        init_std: float,
    ) -> LgssmParams:
        rng = np.random.default_rng([self.seed, _PARAM_STREAM])
        s, d = self.state_dim, self.obs_dim
        # Both random matrices are always drawn so a given matrix never shifts the other.
        A = transition_scale * random_rotation(s, rng)
        C = rng.standard_normal((d, s)) / math.sqrt(s)
        if transition is not None:
            A = _matrix(transition, (s, s), "transition")
        if emission is not None:
            C = _matrix(emission, (d, s), "emission")
        as_t = torch.from_numpy
        return LgssmParams(
            A=as_t(A),
            C=as_t(C),
            Q=process_noise**2 * torch.eye(s, dtype=torch.float64),
            R=obs_noise**2 * torch.eye(d, dtype=torch.float64),
            m0=torch.zeros(s, dtype=torch.float64),
            P0=init_std**2 * torch.eye(s, dtype=torch.float64),
        )

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="real", dim=self.obs_dim, unit="sequence", dims_per_step=self.obs_dim)

    def sequences(self, split: str) -> Tensor:
        """The observations of a split, [N, T, D] float32, in loader order (drawn once, cached)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._sequences:
            rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[split]])
            drawn = sample_lgssm(self.params, self.split_sizes[split], self.seq_len, rng)
            self._sequences[split] = drawn.to(torch.float32)
        return self._sequences[split]

    def exact_log_likelihood(self, split: str) -> Tensor:
        """Exact log p(x_1:T) of every sequence of a split, [N] float64, in loader order.

        Evaluated on the float32 values the model sees, so the comparison is like for like.
        """
        if split not in self._exact:
            self._exact[split] = kalman_log_likelihood(self.sequences(split), *self.params.as_tuple())
        return self._exact[split]

    def reference_metrics(self) -> dict[str, float]:
        """Exact NLL per sequence (mean over the split), logged next to the model's bounds."""
        return {
            f"{split}/exact_nll": float(-self.exact_log_likelihood(split).mean()) for split in ("val", "test")
        }

    def sample_length(self) -> int:
        return self.seq_len

    def setup(self, stage: str | None = None) -> None:
        self.train_set = ShiftedSequences(self.sequences("train"))
        self.val_set = ShiftedSequences(self.sequences("val"))
        self.test_set = ShiftedSequences(self.sequences("test"))
