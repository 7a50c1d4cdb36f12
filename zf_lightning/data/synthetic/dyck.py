"""Bounded Dyck-(2, 2) membership: two bracket types nested at most two deep.

Tokens: ``(`` 0, ``)`` 1, ``[`` 2, ``]`` 3, end 4. A sequence of size n is n brackets then
END (n + 1 steps; n even), labelled at END: 1 when the brackets are a well-nested word of
depth <= 2, else 0. Positives are uniform over the language's words of length n. Negatives
are near misses of a positive, the same length: ``swap`` (the default) exchanges two
different symbols, so the bracket counts stay those of a member and no counter solves it;
``substitute`` changes one symbol, which always leaves the language but unbalances one bracket
type, so counts alone decide it (``chance_accuracy`` 1.0). A
recurrent model needs only constant state; a one-layer Transformer needs width linear in n.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np

from zf_lightning.data.synthetic.base import ClassificationTask

OPEN = (0, 2)
CLOSER = {0: 1, 2: 3}  # the closing bracket of each opening one
END = 4
NegativeKind = Literal["substitute", "swap"]
_REDRAWS = 1000


@cache
def completions(remaining: int, max_depth: int) -> tuple[tuple[int, ...], ...]:
    """``table[r][d]``: words of r symbols that close a prefix at depth d without exceeding
    ``max_depth``, for r up to ``remaining`` (exact integers, built bottom-up)."""
    table = [tuple(int(d == 0) for d in range(max_depth + 1))]
    for _ in range(remaining):
        last = table[-1]
        table.append(tuple((last[d - 1] if d > 0 else 0) + (len(OPEN) * last[d + 1] if d < max_depth else 0)
                           for d in range(max_depth + 1)))
    return tuple(table)


def is_member(tokens: np.ndarray | list[int], max_depth: int = 2) -> bool:
    """Stack recogniser: every closer matches the innermost opener, depth <= ``max_depth``, all closed."""
    stack: list[int] = []
    for token in tokens:
        token = int(token)
        if token in CLOSER:
            stack.append(token)
            if len(stack) > max_depth:
                return False
        elif not stack or CLOSER[stack.pop()] != token:
            return False
    return not stack


class BoundedDyck(ClassificationTask):
    """Args: negative: ``swap`` | ``substitute`` near misses; max_depth: nesting bound (2)."""

    classes = 2

    def __init__(self, negative: NegativeKind = "swap", max_depth: int = 2) -> None:
        if negative not in ("substitute", "swap"):
            raise ValueError(f"data.task.negative must be substitute or swap, got {negative!r}")
        if max_depth < 1:
            raise ValueError(f"data.task.max_depth must be >= 1, got {max_depth}")
        self.negative = negative
        self.max_depth = max_depth

    def vocab_size(self, max_size: int) -> int:
        return 5

    def check_size(self, size: int) -> str | None:
        if size < 2 or size % 2:
            return "Dyck words have an even length >= 2"
        return None

    def positive(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """A word drawn uniformly from the words of this length (counting completions)."""
        table = completions(size, self.max_depth)
        stack: list[int] = []
        out = []
        for step in range(size):
            after = table[size - step - 1]  # completions of what follows this symbol
            depth = len(stack)
            opens = len(OPEN) * after[depth + 1] if depth < self.max_depth else 0
            closes = after[depth - 1] if depth > 0 else 0
            if rng.random() < opens / (opens + closes):
                token = OPEN[int(rng.integers(0, len(OPEN)))]
                stack.append(token)
            else:
                token = CLOSER[stack.pop()]
            out.append(token)
        return np.array(out, dtype=np.int64)

    def near_miss(self, word: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The same word with one symbol changed (or two different symbols swapped), out of the language."""
        for _ in range(_REDRAWS):
            miss = word.copy()
            if self.negative == "substitute":
                position = int(rng.integers(0, len(word)))
                miss[position] = (word[position] + int(rng.integers(1, 4))) % 4
            else:
                i, j = rng.choice(len(word), size=2, replace=False)
                miss[i], miss[j] = word[j], word[i]
            if not is_member(miss, self.max_depth):
                return miss
        raise ValueError(f"no {self.negative} near miss found for {word.tolist()}")

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        word = self.positive(size, rng)
        member = bool(rng.integers(0, 2))
        brackets = word if member else self.near_miss(word, rng)
        return np.append(brackets, END).astype(np.int64), int(member)

    def chance_accuracy(self, size: int) -> float:
        """Substituted negatives break a bracket type's open/close balance, so counts alone decide
        (1.0); swapped ones hold the same counts as the member they came from, so counts tell
        nothing (0.5)."""
        return 1.0 if self.negative == "substitute" else 0.5

    def label(self, tokens: np.ndarray) -> int:
        return int(is_member(tokens[:-1], self.max_depth))
