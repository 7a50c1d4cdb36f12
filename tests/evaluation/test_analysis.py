"""Collapse and probe measures: perplexity, active units, linear probe, masked averages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zf_lightning.evaluation.metrics import (
    active_units,
    latent_variances,
    majority_rate,
    masked_steps,
    masked_time_average,
    perplexity,
    probe_accuracy,
)


def test_perplexity_is_exp_of_nll_per_word() -> None:
    # Four words predicted with probabilities 1/2, 1/4, 1/8, 1/2: 7 bits in total.
    probs = torch.tensor([0.5, 0.25, 0.125, 0.5])
    total_nll = -probs.log().sum()
    assert perplexity(total_nll, 4) == pytest.approx(2 ** (7 / 4), rel=1e-6)
    assert perplexity(float(total_nll), torch.tensor(4)) == pytest.approx(2 ** (7 / 4), rel=1e-6)
    # A uniform guess over V words has perplexity V.
    assert perplexity(10 * math.log(50), 10) == pytest.approx(50.0)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_active_units_counts_dimensions_whose_mean_moves() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    means = np.stack(
        [
            rng.normal(0, 1.0, n),  # used
            rng.normal(3, 0.5, n),  # used, offset does not matter
            rng.normal(0, 0.2, n),  # variance 0.04: used
            rng.normal(0, 0.05, n),  # variance 0.0025: collapsed
            np.full(n, 0.7),  # constant: collapsed
        ],
        axis=1,
    )
    assert active_units(means) == 3
    assert active_units(torch.from_numpy(means).float()) == 3
    assert active_units(means, threshold=0.1) == 2
    assert active_units(means, threshold=1e-4) == 4
    variances = latent_variances(means)
    assert variances.shape == (5,) and variances[4] < 1e-20
    assert variances[0] == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError):
        active_units(means[:, 0])


def test_probe_finds_a_planted_label_and_not_a_random_one() -> None:
    rng = np.random.default_rng(1)
    n, dim = 1200, 16
    z = rng.normal(size=(2 * n, dim))
    z[:, 5] *= 40.0  # a loud uninformative dimension: standardization must cope
    planted = (z[:, 3] + 0.2 * rng.normal(size=2 * n) > 0).astype(int)
    acc = probe_accuracy(z[:n], planted[:n], z[n:], planted[n:], seed=0)
    assert acc > 0.9
    unrelated = rng.integers(0, 2, size=2 * n)
    chance = probe_accuracy(z[:n], unrelated[:n], z[n:], unrelated[n:], seed=0)
    assert abs(chance - 0.5) < 0.07
    assert abs(majority_rate(unrelated[:n], unrelated[n:]) - 0.5) < 0.07


def test_probe_accepts_tensors_ignores_unlabelled_and_handles_one_class() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert probe_accuracy(x, y, x, y, seed=0) == 1.0
    y_partial = torch.tensor([0, -1, 0, -1, 1, -1, 1, -1])  # -1: unlabelled, ignored
    assert probe_accuracy(x, y_partial, x, y_partial, seed=0) == 1.0
    assert probe_accuracy(x[:4], y[:4], x, y, seed=0) == 0.5  # only class 0 seen: predicts 0
    with pytest.raises(ValueError):
        probe_accuracy(x, y, x[:, :0], y, seed=0)


def test_majority_rate() -> None:
    assert majority_rate([0, 0, 1], [0, 1, 1, 1]) == 0.25
    assert majority_rate(np.array([2, 2, 1, -1, -1, -1]), torch.tensor([2, 1, -1])) == 0.5
    with pytest.raises(ValueError):
        majority_rate([-1], [0])


def test_masked_time_average_ignores_padding() -> None:
    features = torch.tensor(
        [
            [[1.0, 10.0], [3.0, 20.0], [100.0, 100.0]],
            [[5.0, -5.0], [-100.0, 100.0], [-100.0, 100.0]],
            [[7.0, 7.0], [7.0, 7.0], [7.0, 7.0]],
        ]
    )
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    avg = masked_time_average(features, mask)
    assert torch.allclose(avg, torch.tensor([[2.0, 15.0], [5.0, -5.0], [0.0, 0.0]]))
    steps = masked_steps(features, mask)
    assert torch.equal(steps, torch.tensor([[1.0, 10.0], [3.0, 20.0], [5.0, -5.0]]))
    with pytest.raises(ValueError):
        masked_time_average(features, mask[:, :2])
