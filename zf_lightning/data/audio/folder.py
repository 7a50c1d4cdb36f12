"""Any folder of audio files (e.g. the Free Spoken Digit Dataset) as sequences of frames.

Files matching ``patterns`` under ``root`` are decoded to mono at ``sample_rate`` (files at
another rate are resampled; ``null`` keeps the first file's rate) and framed like TIMIT:
frames of ``frame_size`` samples, targets = the next frame, scalar statistics from the
training split.

Splits (``split``):
- ``random``: a seeded shuffle of the files; ``test_fraction`` of all files for test,
  then ``val_fraction`` of the rest for validation;
- ``regex``: files whose name matches ``test_pattern`` are the test set (FSDD's
  convention: ``'_[0-4]\\.wav$'``, index 0-4 of every speaker and digit); validation is
  ``val_fraction`` of the rest by seeded shuffle;
- ``speakers``: ``speaker_pattern``'s first group names the speaker; ``test_speakers``
  (and ``val_speakers``, else a seeded ``val_fraction`` of the remaining files) are held out.

Labels (``label_pattern``, first group, e.g. FSDD's digit ``'^(\\d+)_'``) ride along in
``SequenceBatch.labels``: integers as they are, other strings as indices into
``label_names`` (sorted).

One rule for all three patterns: each is searched (``re.search``) in the file's name, without
its folders (FSDD's ``recordings/0_jackson_0.wav`` is matched as ``0_jackson_0.wav``), so
``^`` anchors at the start of the name wherever the files sit under ``root``.

Defaults for short clips (FSDD digits are about 0.5 s, i.e. ~20 frames of 200 samples at
8 kHz): every split uses whole utterances, padded and masked (``train_mode=utterance``),
so no clip is cut and no sequence spans two recordings. For long recordings, set
``train_mode=stream`` (training rows of ``seq_frames`` frames from the concatenated
training audio, as for TIMIT) or ``max_train_frames`` (utterances cut into pieces).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from zf_lightning.data.audio.cache import AudioCorpus
from zf_lightning.data.audio.common import AudioDataModule, AudioOptions
from zf_lightning.data.audio.framing import Normalizer, StreamChunks, Utterances, seeded_holdout
from zf_lightning.data.audio.io import describe_folder, find_files, native_rate

DEFAULT_PATTERNS = ("*.wav", "*.flac", "*.sph", "*.mp3", "*.ogg")
SPLITS = ("random", "regex", "speakers")
TRAIN_MODES = ("utterance", "stream")


def _name(rel: str) -> str:
    """What the split and label patterns are matched against: the file name, without its folders."""
    return Path(rel).name


def _group(pattern: re.Pattern[str], rel: str, what: str) -> str:
    match = pattern.search(_name(rel))
    if match is None:
        raise ValueError(f"{what} {pattern.pattern!r} does not match the file name {_name(rel)!r} (of {rel!r})")
    return match.group(1) if pattern.groups else match.group(0)


class AudioFolderDataModule(AudioDataModule):
    """A directory of audio files, split by shuffle, by file-name regex or by speaker."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        sample_rate: int | None = 16000,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        frame_size: int = 200,
        split: str = "random",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        test_pattern: str | None = None,
        speaker_pattern: str | None = None,
        val_speakers: Sequence[str] = (),
        test_speakers: Sequence[str] = (),
        label_pattern: str | None = None,
        seed: int = 1234,
        train_mode: str = "utterance",
        seq_frames: int = 40,
        max_train_frames: int | None = None,
        eval_chunk_frames: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Unpack[AudioOptions],
    ) -> None:
        super().__init__(root, sample_rate=sample_rate, frame_size=frame_size, cache_dir=cache_dir, **options)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        if split == "regex" and not test_pattern:
            raise ValueError("split=regex needs test_pattern (a regex on file names)")
        if split == "speakers" and not (speaker_pattern and test_speakers):
            raise ValueError("split=speakers needs speaker_pattern (one group) and test_speakers")
        self.patterns = tuple(patterns)
        self.split = split
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.test_pattern = test_pattern
        self.speaker_pattern = speaker_pattern
        self.val_speakers = tuple(val_speakers)
        self.test_speakers = tuple(test_speakers)
        self.label_pattern = label_pattern
        self.seed = seed
        self.train_mode = train_mode
        self.seq_frames = seq_frames
        self.max_train_frames = max_train_frames
        self.eval_chunk_frames = eval_chunk_frames
        self.label_names: list[str] | None = None
        self.split_files: dict[str, list[str]] = {}

    def _layout(self) -> str:
        return f"a folder of audio files matching {list(self.patterns)}"

    def _prepare(self) -> AudioCorpus:
        self._check_root("audio folder", self._layout())
        files = find_files(self.root, self.patterns)
        if not files:
            found = describe_folder(self.root)
            raise ValueError(f"no audio files under {self.root}; expected {self._layout()}; {found}")
        rate = self.sample_rate if self.sample_rate is not None else native_rate(self.root / files[0])
        return self._open_or_build(self.root, files, "folder", int(rate))

    def _split_indices(self, files: list[str]) -> dict[str, np.ndarray]:
        """File indices of train/val/test under the configured split rule."""
        n = len(files)
        if self.split == "random":
            rest, test = seeded_holdout(n, self.test_fraction, self.seed)
        elif self.split == "regex":
            pattern = re.compile(str(self.test_pattern))
            is_test = np.array([bool(pattern.search(_name(f))) for f in files])
            rest, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        else:
            pattern = re.compile(str(self.speaker_pattern))
            speakers = np.array([_group(pattern, f, "speaker_pattern") for f in files])
            unknown = sorted(set(self.test_speakers + self.val_speakers) - set(speakers.tolist()))
            if unknown:
                named = sorted(set(speakers.tolist()))
                raise ValueError(f"speakers {unknown} not found; the file names give {named}")
            is_test = np.isin(speakers, self.test_speakers)
            rest, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
            if self.val_speakers:
                is_val = np.isin(speakers, self.val_speakers) & ~is_test
                train = np.flatnonzero(~is_test & ~is_val)
                return {"train": train, "val": np.flatnonzero(is_val), "test": test}
        keep, val = seeded_holdout(len(rest), self.val_fraction, self.seed + 1)
        split = {"train": rest[keep], "val": rest[val], "test": test}
        empty = [name for name, idx in split.items() if len(idx) == 0]
        if empty:
            raise ValueError(
                f"split={self.split!r} leaves {empty} empty for {n} files under {self.root} "
                f"(sizes: { {k: len(v) for k, v in split.items()} })"
            )
        return split

    def _labels(self, files: list[str]) -> np.ndarray | None:
        if self.label_pattern is None:
            return None
        pattern = re.compile(self.label_pattern)
        raw = [_group(pattern, f, "label_pattern") for f in files]
        if all(r.isdigit() for r in raw):
            return np.array([int(r) for r in raw], dtype=np.int64)
        self.label_names = sorted(set(raw))
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[r] for r in raw], dtype=np.int64)

    def _build_splits(self, corpus: AudioCorpus) -> dict[str, Any]:
        files = corpus.files
        idx = self._split_indices(files)
        labels = self._labels(files)
        self.split_files = {name: [files[i] for i in v] for name, v in idx.items()}
        self.stats = corpus.file_stats(idx["train"])
        self.normalizer = Normalizer.from_stats(self.stats)
        stream, fs, norm = corpus.stream, self.frame_size, self.normalizer

        def utterances(split: str, chunk: int | None) -> Utterances:
            split_labels = None if labels is None else labels[idx[split]]
            return Utterances(stream, corpus.segments(idx[split]), fs, norm, split_labels, chunk)

        if self.train_mode == "stream":
            self.train_set = StreamChunks(stream, corpus.segments(idx["train"]), fs, self.seq_frames, norm)
        else:
            self.train_set = utterances("train", self.max_train_frames)
        self.val_set = utterances("val", self.eval_chunk_frames)
        self.test_set = utterances("test", self.eval_chunk_frames)
        if len(self.train_set) == 0:
            raise ValueError(f"no training sequences: every training file is shorter than two frames of {fs}")
        return {
            "settings": {
                "split": self.split,
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
                "test_pattern": self.test_pattern,
                "speaker_pattern": self.speaker_pattern,
                "val_speakers": list(self.val_speakers),
                "test_speakers": list(self.test_speakers),
                "seed": self.seed,
                "frame_size": fs,
                "train_mode": self.train_mode,
                "seq_frames": self.seq_frames,
                "max_train_frames": self.max_train_frames,
                "eval_chunk_frames": self.eval_chunk_frames,
            },
            "files": {name: len(v) for name, v in idx.items()},
            "items": {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)},
            "label_names": self.label_names,
        }
