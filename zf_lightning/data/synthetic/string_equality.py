"""String equality: two bit strings and a separator; label 1 when they are equal.

Tokens: bits 0 and 1, separator ``2``, end ``3``. A sequence of size n is
``a_1 .. a_n SEP b_1 .. b_n END`` (2n + 2 steps), labelled at END. Half the examples are
equal; the others differ in 1 .. ``max_differences`` positions (uniform), flipped in the
second string. Few differences keep the strings close, but counting is not blind to them: an odd
number of flips makes the total number of ones odd (``chance_accuracy``: 0.75 with up to 2
differences), and comparing the ones on each side catches every flip that does not cancel.
"""

from __future__ import annotations

import math

import numpy as np

from zf_lightning.data.synthetic.base import ClassificationTask

SEP, END = 2, 3


class StringEquality(ClassificationTask):
    """Args: max_differences: the most positions in which unequal strings differ."""

    classes = 2

    def __init__(self, max_differences: int = 2) -> None:
        if max_differences < 1:
            raise ValueError(f"data.task.max_differences must be >= 1, got {max_differences}")
        self.max_differences = max_differences

    def vocab_size(self, max_size: int) -> int:
        return 4

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        first = rng.integers(0, 2, size=size)
        second = first.copy()
        equal = bool(rng.integers(0, 2))
        if not equal:
            changes = int(rng.integers(1, min(self.max_differences, size) + 1))
            second[rng.choice(size, size=changes, replace=False)] ^= 1
        return np.concatenate([first, [SEP], second, [END]]).astype(np.int64), int(equal)

    def chance_accuracy(self, size: int) -> float:
        """Exact: from the counts, only T, the total number of ones, matters. Equal strings give
        T = 2 Bin(n, 1/2); c flips of random bits give T = 2 Bin(n - c, 1/2) + c (the flipped bits
        move out of the shared part), so the best rule picks the likelier class at each T."""
        flips = range(1, min(self.max_differences, size) + 1)
        accuracy = 0.0
        for total in range(2 * size + 1):
            equal = math.comb(size, total // 2) / 2**size if total % 2 == 0 else 0.0
            unequal = sum(math.comb(size - c, (total - c) // 2) / 2 ** (size - c) for c in flips
                          if (total - c) % 2 == 0 and 0 <= (total - c) // 2 <= size - c) / len(flips)
            accuracy += max(equal, unequal) / 2
        return accuracy

    def label(self, tokens: np.ndarray) -> int:
        split = int(np.flatnonzero(tokens == SEP)[0])
        return int(list(tokens[:split]) == list(tokens[split + 1:-1]))
