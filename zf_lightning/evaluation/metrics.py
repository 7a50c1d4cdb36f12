"""Measures of what a latent-variable sequence model learned: perplexity, posterior
collapse (active units) and whether the latents carry a label (a linear probe).

Pure functions on arrays or tensors, so training, evaluation and reports share them.
Labels below zero mean "unlabelled" (the text data modules' convention) and are ignored
by the probe and the majority rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

ArrayLike = np.ndarray | Tensor | Sequence[float] | Sequence[int]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def perplexity(total_nll_nats: float | Tensor, n_tokens: float | Tensor) -> float:
    """``exp(total NLL / tokens)``: the per-word perplexity from a summed NLL (or a bound on it).

    Returns ``inf`` rather than overflowing when the per-token NLL is huge (early training).
    """
    n = float(n_tokens)
    if n <= 0:
        raise ValueError(f"n_tokens must be positive, got {n}")
    per_token = float(total_nll_nats) / n
    return math.exp(per_token) if per_token < 700.0 else math.inf


def latent_variances(posterior_means: ArrayLike) -> np.ndarray:
    """Variance across data points of each latent dimension's posterior mean, ``[Z]``."""
    means = _numpy(posterior_means).astype(np.float64)
    if means.ndim != 2:
        raise ValueError(f"posterior_means must be [N, Z], got shape {means.shape}")
    if means.shape[0] < 2:
        raise ValueError("need at least two data points to measure how posterior means vary")
    return means.var(axis=0)


def active_units(posterior_means: ArrayLike, threshold: float = 0.01) -> int:
    """Number of latent dimensions in use (Burda et al. 2016).

    A dimension is active when ``Var_x(E_q[z | x]) > threshold``: its posterior mean moves
    with the data. A collapsed dimension has a posterior equal to the prior whatever the
    input, so its mean is constant. For sequence models pass one row per real time step
    (see ``masked_steps``).
    """
    return int((latent_variances(posterior_means) > threshold).sum())


def masked_steps(features: Tensor, mask: Tensor) -> Tensor:
    """The real steps of a padded batch, ``[B, T, D]`` and ``[B, T]`` -> ``[N, D]``."""
    _check_masked(features, mask)
    return features[mask > 0.5]


def masked_time_average(features: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sequence's real steps, ``[B, T, D]`` and ``[B, T]`` -> ``[B, D]``.

    Padding is excluded, so a sequence's summary does not depend on the batch it was in.
    An all-padding row gives zeros.
    """
    _check_masked(features, mask)
    weights = mask.to(features.dtype).unsqueeze(-1)
    total = (features * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0)


def _check_masked(features: Tensor, mask: Tensor) -> None:
    if features.dim() != 3 or mask.shape != features.shape[:2]:
        raise ValueError(
            "expected features [B, T, D] and mask [B, T], "
            f"got {tuple(features.shape)} and {tuple(mask.shape)}"
        )


def _labelled(x: np.ndarray | None, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    keep = y >= 0
    return (None if x is None else x[keep]), y[keep]


def majority_rate(train_y: ArrayLike, test_y: ArrayLike) -> float:
    """Test accuracy of always predicting the most frequent training label: the probe's floor."""
    _, train = _labelled(None, _numpy(train_y).reshape(-1))
    _, test = _labelled(None, _numpy(test_y).reshape(-1))
    if len(train) == 0 or len(test) == 0:
        raise ValueError("majority_rate needs labelled training and test examples")
    values, counts = np.unique(train, return_counts=True)
    return float((test == values[np.argmax(counts)]).mean())


def probe_accuracy(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    seed: int = 0,
    max_iter: int = 5000,
) -> float:
    """Test accuracy of a logistic-regression probe fit on ``train_x`` ``[N, D]``.

    Features are standardized (latent scales differ by orders of magnitude between a
    collapsed and a used dimension) and the regression is L2-regularized (sklearn's
    default C=1), so the probe reads what is linearly present rather than memorizing.
    With a single training class it predicts that class.
    """
    x_train, y_train = _labelled(_numpy(train_x).astype(np.float64), _numpy(train_y).reshape(-1))
    x_test, y_test = _labelled(_numpy(test_x).astype(np.float64), _numpy(test_y).reshape(-1))
    assert x_train is not None and x_test is not None
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"probe features must be [N, D] with equal D, got {x_train.shape} and {x_test.shape}"
        )
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError("probe_accuracy needs labelled training and test examples")
    if len(np.unique(y_train)) < 2:
        return float((y_test == y_train[0]).mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    probe.fit(x_train, y_train)
    return float((probe.predict(x_test) == y_test).mean())
