"""Nearest neighbour: k (vector, label) pairs, then a query vector close to one of them; the
label is the label of the stored vector nearest to the query (Hamming distance).

Vectors are ``dim`` bits (tokens 0 and 1), labels are tokens ``2 .. 2 + labels - 1``, and the
query marker is token ``2 + labels``. A sequence of size k is

    x_1[1..dim] y_1  x_2[1..dim] y_2  ...  x_k[1..dim] y_k  QUERY  q[1..dim]

(k (dim + 1) + 1 + dim steps), labelled at the last query bit with the class of the nearest
x_i. The stored vectors are distinct; the query is one of them with ``flips`` bits flipped,
redrawn until its nearest stored vector is unique.
"""

from __future__ import annotations

import numpy as np

from zf_lightning.data.synthetic.base import ClassificationTask, majority_copy_accuracy

_REDRAWS = 1000


class NearestNeighbor(ClassificationTask):
    """Args: dim: bits per vector; labels: classes; flips: bits flipped to make the query."""

    def __init__(self, dim: int = 8, labels: int = 2, flips: int = 1) -> None:
        if dim < 1 or labels < 2 or not 0 <= flips <= dim:
            raise ValueError(f"data.task needs dim >= 1, labels >= 2 and 0 <= flips <= dim; got {dim}, {labels}, "
                             f"{flips}")
        self.dim = dim
        self.classes = labels
        self.flips = flips
        self.query_token = 2 + labels

    def vocab_size(self, max_size: int) -> int:
        return 3 + self.classes

    def check_size(self, size: int) -> str | None:
        if size < 1:
            return "sizes must be >= 1"
        most = 2 ** (self.dim - 1)
        if size > most:
            return f"at most 2^(dim - 1) = {most} stored vectors of {self.dim} bits (raise data.task.dim)"
        return None

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        for _ in range(_REDRAWS):
            codes = rng.choice(2**self.dim, size=size, replace=False)
            vectors = (codes[:, None] >> np.arange(self.dim)) & 1  # [k, dim] distinct bit vectors
            labels = rng.integers(0, self.classes, size=size)
            query = vectors[int(rng.integers(0, size))].copy()
            query[rng.choice(self.dim, size=self.flips, replace=False)] ^= 1
            distances = np.abs(vectors - query).sum(1)
            nearest = np.flatnonzero(distances == distances.min())
            if len(nearest) == 1:
                pairs = np.concatenate([vectors, 2 + labels[:, None]], axis=1).reshape(-1)
                tokens = np.concatenate([pairs, [self.query_token], query])
                return tokens.astype(np.int64), int(labels[nearest[0]])
        raise ValueError(f"nearest_neighbor: no query with a unique nearest vector among {size} vectors of "
                         f"{self.dim} bits in {_REDRAWS} draws; raise data.task.dim or lower the length")

    def chance_accuracy(self, size: int) -> float:
        """Without order no label can be tied to its vector, so the best guess is the most frequent
        of the k stored labels: the label is one of them, picked uniformly (above ``1 / classes``)."""
        return majority_copy_accuracy(size, self.classes)

    def label(self, tokens: np.ndarray) -> int:
        split = int(np.flatnonzero(tokens == self.query_token)[-1])
        pairs, query = tokens[:split].reshape(-1, self.dim + 1), tokens[split + 1:]
        best, best_label, tied = None, -1, False
        for row in pairs:  # exhaustive: every stored vector's distance to the query
            distance = sum(int(a) != int(b) for a, b in zip(row[: self.dim], query, strict=True))
            if best is None or distance < best:
                best, best_label, tied = distance, int(row[self.dim]) - 2, False
            elif distance == best:
                tied = True
        if tied:
            raise ValueError("the query has two nearest vectors: the label is undefined")
        return best_label
