"""Encoded sentences as two flat arrays (ids and offsets) plus labels, and the dataset that
turns one into ``<bos> w_1 .. w_n`` inputs and ``w_1 .. w_n <eos>`` targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zf_lightning.data.base import SequenceItem


class EncodedSplit:
    """One split as flat arrays: sentence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.

    Flat arrays keep the cache small and let it be memory-mapped instead of loaded.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) != len(labels) + 1:
            raise ValueError("offsets must have one more entry than labels")
        self.ids = ids
        self.offsets = offsets
        self.labels = labels

    @classmethod
    def from_lists(cls, sentences: Sequence[Sequence[int]], labels: Sequence[int]) -> EncodedSplit:
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((i for s in sentences for i in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids, offsets, np.asarray(labels, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        return len(self.labels)

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def save(self, directory: Path, name: str) -> None:
        for part in ("ids", "offsets", "labels"):
            np.save(directory / f"{name}_{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, directory: Path, name: str) -> EncodedSplit:
        ids, offsets, labels = (
            np.load(directory / f"{name}_{part}.npy", mmap_mode="r") for part in ("ids", "offsets", "labels")
        )
        return cls(ids, offsets, labels)


class TokenSequenceDataset(Dataset):
    """Turns encoded sentences into ``(inputs, targets, label)`` with ``<bos>``/``<eos>``."""

    def __init__(self, split: EncodedSplit, bos_id: int, eos_id: int, max_len: int | None) -> None:
        self.split = split
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> SequenceItem:
        words = torch.from_numpy(np.array(self.split.sentence(index), dtype=np.int64))
        full = torch.cat([torch.tensor([self.bos_id]), words, torch.tensor([self.eos_id])])
        inputs, targets = full[:-1], full[1:]
        if self.max_len is not None:
            inputs, targets = inputs[: self.max_len], targets[: self.max_len]
        return inputs, targets, int(self.split.labels[index])
