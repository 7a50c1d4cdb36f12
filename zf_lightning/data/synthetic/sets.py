"""Set tasks (Cohen-Karlik, Ben David and Globerson, NeurIPS 2020; Zaheer et al., 2017): a set of
size n is n steps, one element per step, in a random order; the label, a function of the set
alone, is the target of the last step. Training sizes are small, test sizes larger, so the tasks
measure length generalization (``test/acc_len<n>``) and, since order carries no information,
how invariant a model is (``test/perm_flip_rate``). Formats: docs/sets.md.

Labels are classes, or for sums and maxima a real value (``regression=true``: a Gaussian head on
the label).
Sums are classified over every sum the largest allowed set can have, so a sum larger than any
seen in training is a class the model never saw: see docs/sets.md.
"""

from __future__ import annotations

import numpy as np

from zf_lightning.data.synthetic.base import ClassificationTask


def check_modulus(modulus: int | None, regression: bool) -> None:
    """A sum's label options (``data.task`` of every sum task): a modulus of at least 2, and
    regression only on the plain sum."""
    if modulus is not None and modulus < 2:
        raise ValueError(f"data.task.modulus must be >= 2 (or null for the plain sum), got {modulus}")
    if regression and modulus is not None:
        raise ValueError("data.task.regression=true predicts the plain sum as a real value; set data.task.modulus=null "
                         f"(got {modulus}: the sum modulo m is a class label)")


def sum_distribution(element: np.ndarray, size: int, modulus: int | None = None) -> np.ndarray:
    """The distribution of the sum of ``size`` independent elements drawn from ``element`` (the
    probabilities of the values 0, 1, ...), over 0 .. (len - 1) size, or modulo ``modulus``."""
    if modulus is not None:
        folded = np.zeros(modulus)
        np.add.at(folded, np.arange(element.size) % modulus, element)
        out = np.eye(1, modulus).ravel()
        for _ in range(size):
            out = sum(p * np.roll(out, value) for value, p in enumerate(folded))
        return out
    out = np.ones(1)
    for _ in range(size):
        out = np.convolve(out, element)
    return out


class SetTask(ClassificationTask):
    """Elements are the tokens ``0 .. values-1``, drawn uniformly and independently (a multiset).

    Labels are skewed (large sets have large sums and maxima), so validation and test sets are
    not class-balanced (``balanced = False``): they follow the task's own distribution.
    """

    balanced = False
    sets = True

    def __init__(self, values: int) -> None:
        if values < 2:
            raise ValueError(f"data.task.values must be >= 2, got {values}")
        self.values = values

    def vocab_size(self, max_size: int) -> int:
        return self.values

    def elements(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.values, size=size).astype(np.int64)

    def guess_accuracy(self, size: int) -> float | None:
        """The most frequent label's probability, from the labels' exact distribution at ``size``."""
        return float(self.label_distribution(size).max())

    def guess_mae(self, size: int) -> float | None:
        """For a label regressed as a value (the label is its index in the distribution): the mean
        absolute distance to the distribution's median, the constant with the least expected error."""
        if not self.regression:
            return None
        probs = self.label_distribution(size)
        median = int(np.searchsorted(np.cumsum(probs), 0.5))
        return float(probs @ np.abs(np.arange(probs.size) - median))

    def label_distribution(self, size: int) -> np.ndarray:
        """The probability of each label (or plain value) over sets of ``size`` uniform elements."""
        raise NotImplementedError(f"{type(self).__name__} does not derive its label distribution")


class SetSum(SetTask):
    """The label is the sum of the elements: one class per possible sum ``0 .. (values-1) max_size``,
    or, with ``modulus``, the sum modulo it (``modulus`` classes; parity is values=2, modulus=2),
    or, with ``regression``, the plain sum as a real value.

    Args: values: element alphabet (0 .. values-1); max_size: the largest set any split may hold
    (it fixes the number of classes, so it must cover ``data.test_lengths``; unused with a
    modulus or regression); modulus: None for the plain sum. A plain sum larger than every
    training sum is a class never trained on, which a modulus avoids (every class occurs at
    every size), and so does regression (a real output has no unseen classes; whether a model
    extrapolates the sum is what the test sizes measure).
    """

    def __init__(self, values: int = 10, max_size: int = 100, modulus: int | None = None,
                 regression: bool = False) -> None:
        super().__init__(values)
        if max_size < 1:
            raise ValueError(f"data.task.max_size must be >= 1, got {max_size}")
        check_modulus(modulus, regression)
        self.max_size = max_size
        self.modulus = modulus
        self.regression = regression
        self.classes = modulus if modulus is not None else (values - 1) * max_size + 1

    def check_size(self, size: int) -> str | None:
        if self.modulus is None and not self.regression and size > self.max_size:
            return f"larger than data.task.max_size={self.max_size}, which fixes the classes (the possible sums)"
        return super().check_size(size)

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        tokens = self.elements(size, rng)
        total = int(tokens.sum())
        return tokens, total % self.modulus if self.modulus is not None else total

    def label(self, tokens: np.ndarray) -> int:
        total = 0
        for t in tokens:
            total += int(t)
            while self.modulus is not None and total >= self.modulus:
                total -= self.modulus
        return total

    def label_distribution(self, size: int) -> np.ndarray:
        return sum_distribution(np.full(self.values, 1.0 / self.values), size, self.modulus)


class SetParity(SetTask):
    """Bits; the label is the parity of the number of ones. Class-balanced (two classes)."""

    balanced = True
    classes = 2

    def __init__(self) -> None:
        super().__init__(values=2)

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        tokens = self.elements(size, rng)
        return tokens, int(np.bitwise_xor.reduce(tokens))

    def label(self, tokens: np.ndarray) -> int:
        ones = sum(1 for t in tokens if int(t) == 1)
        return ones % 2

    def label_distribution(self, size: int) -> np.ndarray:
        return sum_distribution(np.full(2, 0.5), size, modulus=2)


class SetMax(SetTask):
    """The label is the largest element: one of ``values`` classes, or with ``regression`` a real
    value (the sets' precursor experiments regress the maximum of digits with a squared error)."""

    def __init__(self, values: int = 50, regression: bool = False) -> None:
        super().__init__(values)
        self.classes = values
        self.regression = regression

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        tokens = self.elements(size, rng)
        return tokens, int(tokens.max())

    def label(self, tokens: np.ndarray) -> int:
        best = int(tokens[0])
        for t in tokens[1:]:
            best = int(t) if int(t) > best else best
        return best

    def label_distribution(self, size: int) -> np.ndarray:
        """P(max = k) = P(max <= k) - P(max <= k - 1), with P(max <= k) = ((k + 1) / values)^size."""
        at_most = (np.arange(1, self.values + 1) / self.values) ** size
        return np.diff(at_most, prepend=0.0)


class SetUniqueCount(SetTask):
    """The label is the number of distinct elements minus one (``values`` classes: 1 .. values)."""

    def __init__(self, values: int = 20) -> None:
        super().__init__(values)
        self.classes = values

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        tokens = self.elements(size, rng)
        return tokens, int(np.unique(tokens).size) - 1

    def label(self, tokens: np.ndarray) -> int:
        seen: list[int] = []
        for t in tokens:
            if int(t) not in seen:
                seen.append(int(t))
        return len(seen) - 1

    def label_distribution(self, size: int) -> np.ndarray:
        """Distinct values after each draw: a new one with probability (values - distinct) / values."""
        distinct = np.eye(1, self.values + 1).ravel()
        new = (self.values - np.arange(self.values + 1)) / self.values
        for _ in range(size):
            distinct = distinct * (1 - new) + np.roll(distinct * new, 1)
        return distinct[1:]
