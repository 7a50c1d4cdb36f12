"""From an int16 stream to normalised frames: fixed-length training rows and whole utterances.

Conventions shared by every audio data module (``F`` = frame size, 200 samples by default):

- a step is one frame of ``F`` consecutive samples, normalised as ``(x - mean) / std`` with
  the training split's scalar statistics;
- ``inputs[t]`` is frame t and ``targets[t]`` is frame t + 1 of the same audio, so the model
  always predicts the next frame;
- ``StreamChunks`` cuts rows of ``seq_frames`` input frames from (a virtual concatenation
  of) stream segments; a row's targets run one frame past its inputs, into the next row's
  audio, so every row has ``seq_frames`` scored steps;
- ``Utterances`` keeps each utterance whole, trimmed to a multiple of ``F``:
  ``inputs = frames[:-1]``, ``targets = frames[1:]`` (the first frame is never scored);
  padding and masks come from ``pad_collate``. ``chunk_frames`` splits utterances into
  chunks with the model state reset at each (the authors' evaluation, an approximation).

Datasets read only the samples an item needs, so memory does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zf_lightning.data.audio.cache import AudioStats, Int16Stream
from zf_lightning.data.audio.io import INT16_SCALE
from zf_lightning.data.base import SequenceItem


@dataclass(frozen=True)
class Normalizer:
    """int16 samples to ``(x - mean) / std`` in float32, and back to [-1, 1] audio."""

    mean: float
    std: float

    @classmethod
    def from_stats(cls, stats: AudioStats) -> Normalizer:
        return cls(mean=stats.mean, std=stats.std)

    def __call__(self, pcm: np.ndarray) -> Tensor:
        x = pcm.astype(np.float32) / np.float32(INT16_SCALE)
        return torch.from_numpy((x - np.float32(self.mean)) / np.float32(self.std))

    def invert(self, normalised: Tensor | np.ndarray) -> np.ndarray:
        """Back to float audio in the files' units (full scale = 1)."""
        x = normalised.detach().cpu().numpy() if isinstance(normalised, Tensor) else np.asarray(normalised)
        return (x.astype(np.float64) * self.std + self.mean).astype(np.float32)


def _check_segments(segments: np.ndarray) -> np.ndarray:
    seg = np.asarray(segments, dtype=np.int64).reshape(-1, 2)
    if (seg[:, 1] < 0).any():
        raise ValueError("segment lengths must be non-negative")
    return seg


class StreamChunks(Dataset):
    """Rows of ``seq_frames`` frames cut from the concatenation of ``segments`` of a stream.

    Row i covers virtual samples ``[i * R, i * R + R + F)`` with ``R = seq_frames * F``:
    inputs are its first ``seq_frames`` frames, targets the same audio one frame later.
    Segments are concatenated virtually (a row may span two files); nothing is copied.
    """

    def __init__(
        self,
        stream: Int16Stream,
        segments: np.ndarray,
        frame_size: int,
        seq_frames: int,
        normalizer: Normalizer,
    ) -> None:
        if frame_size < 1 or seq_frames < 1:
            raise ValueError(f"frame_size and seq_frames must be positive, got {frame_size}, {seq_frames}")
        self.stream = stream
        self.segments = _check_segments(segments)
        self.frame_size = frame_size
        self.seq_frames = seq_frames
        self.normalizer = normalizer
        self._starts = np.concatenate([[0], np.cumsum(self.segments[:, 1])])
        row = seq_frames * frame_size
        total = int(self._starts[-1])
        self._len = max(0, (total - frame_size) // row)

    def __len__(self) -> int:
        return self._len

    def read_virtual(self, start: int, stop: int) -> np.ndarray:
        """int16 samples ``[start, stop)`` of the concatenated segments."""
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        pieces: list[np.ndarray] = []
        pos = start
        while pos < stop:
            seg_start, seg_len = self.segments[k]
            offset = pos - int(self._starts[k])
            take = min(stop - pos, int(seg_len) - offset)
            if take > 0:
                pieces.append(self.stream.read(int(seg_start) + offset, int(seg_start) + offset + take))
                pos += take
            k += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getitem__(self, index: int) -> SequenceItem:
        if not 0 <= index < self._len:
            raise IndexError(index)
        row = self.seq_frames * self.frame_size
        start = index * row
        frames = self.normalizer(self.read_virtual(start, start + row + self.frame_size))
        frames = frames.view(self.seq_frames + 1, self.frame_size)
        return frames[:-1], frames[1:], None


class Utterances(Dataset):
    """Whole utterances (or chunks of them), inputs = frames[:-1], targets = frames[1:].

    Utterances shorter than two frames have nothing to score and are skipped
    (``num_skipped`` says how many). With ``chunk_frames`` each utterance is cut into
    pieces of at most ``chunk_frames`` scored steps; the union of the pieces' targets is
    exactly the whole utterance's targets, only the model state is reset between pieces.
    """

    def __init__(
        self,
        stream: Int16Stream,
        segments: np.ndarray,
        frame_size: int,
        normalizer: Normalizer,
        labels: Sequence[int] | None = None,
        chunk_frames: int | None = None,
    ) -> None:
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive or None, got {chunk_frames}")
        self.stream = stream
        self.segments = _check_segments(segments)
        self.frame_size = frame_size
        self.normalizer = normalizer
        if labels is not None and len(labels) != len(self.segments):
            raise ValueError(f"{len(labels)} labels for {len(self.segments)} utterances")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        steps = self.segments[:, 1] // frame_size - 1
        self.num_skipped = int((steps < 1).sum())
        items: list[tuple[int, int, int]] = []  # (utterance, first frame, scored steps)
        for u in np.flatnonzero(steps >= 1):
            n = int(steps[u])
            size = n if chunk_frames is None else chunk_frames
            items.extend((int(u), first, min(size, n - first)) for first in range(0, n, size))
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.items)

    def steps(self) -> np.ndarray:
        """Scored steps of every item, ``[len(self)]``."""
        return self.items[:, 2].copy()

    def __getitem__(self, index: int) -> SequenceItem:
        utt, first, n = (int(v) for v in self.items[index])
        start = int(self.segments[utt, 0]) + first * self.frame_size
        pcm = self.stream.read(start, start + (n + 1) * self.frame_size)
        frames = self.normalizer(pcm).view(n + 1, self.frame_size)
        label = None if self.labels is None else int(self.labels[utt])
        return frames[:-1], frames[1:], label


def seeded_holdout(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(count)`` into (kept, held out) by a seeded shuffle; both sorted.

    ``round(fraction * count)`` items are held out (at least one when ``fraction > 0``
    and at least one item stays). Same seed and count, same split, on every machine.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    n_out = round(fraction * count)
    if fraction > 0 and count >= 2:
        n_out = min(max(n_out, 1), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_out:]), np.sort(order[:n_out])
