"""LGSSM data: the Kalman filter against the dense joint Gaussian, batch layout, seeding."""

from __future__ import annotations

import math

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from zf_lightning.conf import CONF_DIR
from zf_lightning.data.lgssm import (
    LgssmDataModule,
    dense_log_likelihood,
    joint_gaussian,
    kalman_log_likelihood,
)

CONF = CONF_DIR / "data" / "lgssm.yaml"


def _spd(dim: int, gen: torch.Generator, floor: float = 0.1) -> torch.Tensor:
    m = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return m @ m.T / dim + floor * torch.eye(dim, dtype=torch.float64)


def _random_params(state_dim: int, obs_dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.randn(state_dim, state_dim, generator=gen, dtype=torch.float64) / math.sqrt(state_dim)
    C = torch.randn(obs_dim, state_dim, generator=gen, dtype=torch.float64)
    m0 = torch.randn(state_dim, generator=gen, dtype=torch.float64)
    return A, C, _spd(state_dim, gen), _spd(obs_dim, gen), m0, _spd(state_dim, gen)


@pytest.mark.parametrize(("state_dim", "obs_dim", "steps"), [(2, 3, 5), (3, 1, 6), (1, 2, 1), (4, 2, 4)])
def test_kalman_matches_dense_joint_gaussian(state_dim: int, obs_dim: int, steps: int) -> None:
    params = _random_params(state_dim, obs_dim, seed=state_dim * 10 + obs_dim)
    x = 2.0 * torch.randn(7, steps, obs_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kalman = kalman_log_likelihood(x, *params)
    dense = dense_log_likelihood(x, *params)
    assert kalman.shape == (7,) and kalman.dtype == torch.float64
    torch.testing.assert_close(kalman, dense, rtol=0, atol=1e-6)


def test_kalman_detects_wrong_parameters() -> None:
    """The check above must be able to fail: another transition gives another density."""
    A, C, Q, R, m0, P0 = _random_params(2, 2, seed=3)
    x = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert (
        kalman_log_likelihood(x, 0.5 * A, C, Q, R, m0, P0) - dense_log_likelihood(x, A, C, Q, R, m0, P0)
    ).abs().max() > 1e-3


def _module(**overrides: object) -> LgssmDataModule:
    args = dict(state_dim=2, obs_dim=3, seq_len=6, num_train=16, num_val=8, num_test=10, batch_size=4, seed=5)
    args.update(overrides)
    return LgssmDataModule(**args)  # type: ignore[arg-type]


def test_batches_shift_targets_into_inputs() -> None:
    dm = _module()
    dm.setup("fit")
    assert dm.spec.kind == "real" and dm.spec.dim == 3 and dm.spec.dims_per_step == 3
    assert dm.spec.unit == "sequence"
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape == (4, 6, 3) and batch.targets.shape == (4, 6, 3)
    assert batch.inputs.dtype == torch.float32
    assert torch.all(batch.inputs[:, 0] == 0)
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert torch.all(batch.mask == 1) and batch.labels is None
    # The test loader keeps order, so exact log-likelihoods line up with its batches.
    test_targets = torch.cat([b.targets for b in dm.test_dataloader()])
    assert torch.equal(test_targets, dm.sequences("test"))
    assert len(dm.train_set) == 16 and len(dm.val_set) == 8 and len(dm.test_set) == 10


def test_exact_log_likelihood_per_split() -> None:
    dm = _module()
    for split, n in [("train", 16), ("val", 8), ("test", 10)]:
        exact = dm.exact_log_likelihood(split)
        assert exact.shape == (n,) and exact.dtype == torch.float64 and torch.isfinite(exact).all()
        torch.testing.assert_close(exact, dense_log_likelihood(dm.sequences(split), *dm.params.as_tuple()))
    with pytest.raises(ValueError, match="split"):
        dm.exact_log_likelihood("training")


def test_samples_follow_the_model_the_filter_scores() -> None:
    """The sampler draws from the joint Gaussian the filter scores: moments and mean log-likelihood."""
    steps, obs_dim, n = 5, 2, 10000
    dm = _module(obs_dim=obs_dim, seq_len=steps, num_test=n)
    x = dm.sequences("test").to(torch.float64).reshape(n, steps * obs_dim)
    mean, cov = joint_gaussian(steps, *dm.params.as_tuple())
    # Sample moments against the model's, within 5 standard errors per entry.
    var = torch.diagonal(cov)
    assert torch.all((x.mean(0) - mean).abs() < 5 * torch.sqrt(var / n))
    emp_cov = torch.cov(x.T)
    cov_se = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert torch.all((emp_cov - cov).abs() < 5 * cov_se)
    # E[log p(x)] = minus the joint entropy.
    exact = dm.exact_log_likelihood("test")
    neg_entropy = -0.5 * (steps * obs_dim * (1 + math.log(2 * math.pi)) + float(torch.logdet(cov)))
    se = float(exact.std() / math.sqrt(n))
    assert abs(float(exact.mean()) - neg_entropy) < 4 * se


def test_reference_metrics_report_exact_nll() -> None:
    dm = _module()
    metrics = dm.reference_metrics()
    assert metrics["test/exact_nll"] == pytest.approx(float(-dm.exact_log_likelihood("test").mean()))
    assert metrics["val/exact_nll"] == pytest.approx(float(-dm.exact_log_likelihood("val").mean()))
    assert dm.sample_length() == 6


def test_seed_determinism_and_independent_splits() -> None:
    a, b = _module(), _module()
    for split in ("train", "val", "test"):
        assert torch.equal(a.sequences(split), b.sequences(split))
    torch.testing.assert_close(a.params.A, b.params.A)
    c = _module(seed=6)
    assert not torch.equal(a.sequences("test"), c.sequences("test"))
    assert not torch.allclose(a.params.A, c.params.A)
    # More training sequences change neither the parameters nor the held-out data.
    d = _module(num_train=40)
    assert torch.equal(a.sequences("test"), d.sequences("test"))
    assert torch.equal(a.params.C, d.params.C)


def test_transition_is_scaled_rotation_or_given() -> None:
    dm = _module(state_dim=3, transition_scale=0.8)
    A = dm.params.A
    torch.testing.assert_close(A @ A.T, 0.64 * torch.eye(3, dtype=torch.float64))
    given = [[0.5, 0.1], [0.0, 0.7]]
    dm = _module(transition=given, emission=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(dm.params.A, torch.tensor(given, dtype=torch.float64))
    assert dm.params.C[2].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="transition"):
        _module(transition=[[1.0, 0.0]])


def test_hydra_config_instantiates() -> None:
    cfg = OmegaConf.load(CONF)
    cfg.num_train, cfg.num_val, cfg.num_test = 8, 4, 4
    cfg.transition = [[0.9, 0.0], [0.0, 0.5]]
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, LgssmDataModule)
    assert dm.spec.dim == cfg.obs_dim
    torch.testing.assert_close(dm.params.A, torch.tensor([[0.9, 0.0], [0.0, 0.5]], dtype=torch.float64))
    assert dm.exact_log_likelihood("test").shape == (4,)
