"""Blizzard (VRNN's pipeline): one long stream of 16 kHz audio cut into 0.5 s rows.

All files under ``root`` (sorted by path) are decoded, resampled to 16 kHz and appended to
one int16 stream on disk, with an index of where each file starts. The stream is cut into
rows of 8,000 samples (40 frames of 200); rows are split by position, 90 % / 5 % / 5 %
(train / validation / test); one scalar mean and standard deviation come from the
training part. Targets are the same stream one frame later; the authors' iterator paired
a row with the next row of its batch layout (another stream), which we do not copy.

Split boundaries fall on row boundaries and no row reads across one, so each split loses
its last row (its targets would run into the next split). Datasets read rows from disk on
demand, so a 300-hour corpus (about 35 GB of int16) trains in bounded memory; preparing it
also works file by file and block by block.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Unpack

import numpy as np

from zf_lightning.data.audio.cache import AudioCorpus
from zf_lightning.data.audio.common import AudioDataModule, AudioOptions
from zf_lightning.data.audio.framing import Normalizer, StreamChunks
from zf_lightning.data.audio.io import describe_folder, find_files

DEFAULT_PATTERNS = ("*.wav", "*.flac", "*.mp3", "*.ogg", "*.sph")


def position_splits(total: int, row: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Sample ranges ``[start, stop)`` of train/val/test: whole rows split by position;
    the test range also takes the samples after the last whole row."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three positive numbers summing to 1, got {fractions}")
    rows = total // row
    n_train = int(rows * fractions[0])
    n_val = int(rows * fractions[1])
    b1, b2 = n_train * row, (n_train + n_val) * row
    return [(0, b1), (b1, b2), (b2, total)]


class BlizzardDataModule(AudioDataModule):
    """Blizzard 2013 (or any long single-speaker corpus) as one memory-mapped stream."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        sample_rate: int = 16000,
        frame_size: int = 200,
        seq_frames: int = 40,
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        batch_size: int = 128,
        **options: Unpack[AudioOptions],
    ) -> None:
        super().__init__(root, sample_rate=sample_rate, frame_size=frame_size, cache_dir=cache_dir,
                         batch_size=batch_size, **options)
        self.seq_frames = seq_frames
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.patterns = tuple(patterns)

    def _prepare(self) -> AudioCorpus:
        layout = f"a folder of audio files matching {list(self.patterns)}"
        self._check_root("Blizzard", layout)
        files = find_files(self.root, self.patterns)
        if not files:
            found = describe_folder(self.root)
            raise ValueError(f"no audio files under {self.root}; expected {layout}; {found}")
        return self._open_or_build(self.root, files, "blizzard", int(self.sample_rate or 16000))

    def _build_splits(self, corpus: AudioCorpus) -> dict[str, Any]:
        row = self.seq_frames * self.frame_size
        ranges = position_splits(len(corpus.stream), row, self.split_fractions)
        names = ("train", "val", "test")
        rows = {name: max(0, (b - a - self.frame_size) // row) for name, (a, b)
                in zip(names, ranges, strict=True)}
        empty = [name for name, n in rows.items() if n == 0]
        if empty:
            raise ValueError(
                f"Blizzard corpus of {len(corpus.stream)} samples "
                f"({len(corpus.stream) // row} rows of {row}) "
                f"leaves no rows for {empty} with split_fractions={list(self.split_fractions)}"
            )
        self.stats = corpus.range_stats(*ranges[0])
        self.normalizer = Normalizer.from_stats(self.stats)
        norm = self.normalizer
        self.train_set, self.val_set, self.test_set = (
            StreamChunks(corpus.stream, np.array([[a, b - a]]), self.frame_size, self.seq_frames, norm)
            for a, b in ranges
        )
        return {
            "settings": {
                "split_fractions": list(self.split_fractions),
                "frame_size": self.frame_size,
                "seq_frames": self.seq_frames,
            },
            "ranges": {name: list(r) for name, r in zip(names, ranges, strict=True)},
            "rows": rows,
        }
