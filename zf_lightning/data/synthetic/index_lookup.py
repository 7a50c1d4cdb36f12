"""Index lookup: N symbols, then a query position; the label is the symbol at that position.

Tokens: symbols ``0 .. symbols-1``; the query "position p" (0-based) is token ``symbols + p``.
A sequence of size N is ``s_0 s_1 ... s_{N-1} q`` (N + 1 steps), labelled ``s_p`` at ``q``.
A one-layer Transformer of width O(log N) solves it; a recurrent model needs a state linear
in N (Bhattamishra et al., 2024).
"""

from __future__ import annotations

import numpy as np

from zf_lightning.data.synthetic.base import ClassificationTask, majority_copy_accuracy


class IndexLookup(ClassificationTask):
    """Args: symbols: alphabet size (= the number of classes)."""

    def __init__(self, symbols: int = 4) -> None:
        if symbols < 2:
            raise ValueError(f"data.task.symbols must be >= 2, got {symbols}")
        self.symbols = symbols
        self.classes = symbols

    def vocab_size(self, max_size: int) -> int:
        return self.symbols + max_size

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        string = rng.integers(0, self.symbols, size=size)
        position = int(rng.integers(0, size))
        return np.append(string, self.symbols + position).astype(np.int64), int(string[position])

    def chance_accuracy(self, size: int) -> float:
        """Without order the query position points nowhere, so the best guess is the most frequent
        of the N symbols: the label is one of them, picked uniformly (above ``1 / classes``)."""
        return majority_copy_accuracy(size, self.classes)

    def label(self, tokens: np.ndarray) -> int:
        position = int(tokens[-1]) - self.symbols
        if not 0 <= position < len(tokens) - 1:
            raise ValueError(f"the last token {int(tokens[-1])} is not a query position of this sequence")
        return int(tokens[position])
