"""TIMIT (LDC93S1) with the SRNN / Z-Forcing protocol.

- 16 kHz; the files are read as distributed (NIST SPHERE ``.WAV``) or as the common
  converted copies (``.WAV.wav``, ``.wav``); any case of directory and file names.
- 5 % of the training utterances are held out for validation by a seeded shuffle
  (seed 1234): 231 of 4,620 on the full corpus, leaving 4,389. Every test utterance is
  used (1,680).
- One scalar mean and standard deviation over the remaining training audio, applied to
  every split.
- Training: the training audio concatenated and cut into sequences of 40 frames of 200
  samples (0.5 s); targets are the next frame.
- Validation and test: full utterances trimmed to a multiple of 200 samples,
  inputs = frames[:-1], targets = frames[1:], padded with masks; the metric is the
  log-likelihood per utterance. ``eval_chunk_frames=40`` reproduces the authors'
  evaluation instead (40-frame chunks, state reset at each, metric per chunk), which is
  an approximation of the per-utterance likelihood.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from zf_lightning.data.audio.cache import AudioCorpus
from zf_lightning.data.audio.common import AudioDataModule, AudioOptions
from zf_lightning.data.audio.framing import Normalizer, StreamChunks, Utterances, seeded_holdout
from zf_lightning.data.audio.io import describe_folder

log = logging.getLogger(__name__)

TIMIT_LAYOUT = (
    "the LDC TIMIT tree: <root>/TRAIN/DR1..DR8/<SPEAKER>/<SENTENCE>.WAV and "
    "<root>/TEST/DR1..DR8/<SPEAKER>/<SENTENCE>.WAV (any letter case; converted copies "
    "named <SENTENCE>.WAV.wav or <SENTENCE>.wav are accepted)"
)
FULL_CORPUS = {"train": 4620, "test": 1680}
_DIALECT = re.compile(r"^dr\d+$", re.IGNORECASE)


def _child_dirs(folder: Path) -> dict[str, Path]:
    """Visible sub-folders keyed by lower-cased name."""
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def locate_timit(root: Path) -> Path:
    """The folder holding TRAIN and TEST: ``root`` itself or its single sub-folder that does
    (e.g. ``root/TIMIT`` or ``root/data``, as some copies nest the tree)."""
    if {"train", "test"} <= set(_child_dirs(root)):
        return root
    nested = [p for p in _child_dirs(root).values() if {"train", "test"} <= set(_child_dirs(p))]
    if len(nested) == 1:
        log.info("TIMIT tree found one level down, at %s", nested[0])
        return nested[0]
    raise ValueError(f"{root} is not a TIMIT tree. Expected {TIMIT_LAYOUT}; {describe_folder(root)}")


def _preferred(paths: list[Path]) -> Path:
    """One file per utterance: the converted copy (``X.WAV.wav``) over the NIST original when
    both exist, since copies exist because some readers failed on the originals."""
    return sorted(paths, key=lambda p: (-len(p.name), p.name))[0]


def find_timit_files(root: Path) -> tuple[Path, dict[str, list[str]]]:
    """The tree's base folder and its utterances per split (paths relative to the base).

    Files sit exactly at ``<SPLIT>/DR<n>/<SPEAKER>/<SENTENCE>.wav`` (case-insensitive);
    other files (``.PHN``, ``.TXT``, ...) are ignored.
    """
    base = locate_timit(root)
    splits: dict[str, list[str]] = {}
    for split in ("train", "test"):
        split_dir = _child_dirs(base)[split]
        utterances: dict[tuple[str, str, str], list[Path]] = {}
        for dialect in _child_dirs(split_dir).values():
            if not _DIALECT.match(dialect.name):
                continue
            for speaker in _child_dirs(dialect).values():
                for f in sorted(speaker.iterdir()):
                    if f.is_file() and f.name.lower().endswith(".wav") and not f.name.startswith("."):
                        key = (dialect.name.upper(), speaker.name.upper(), f.name.split(".")[0].upper())
                        utterances.setdefault(key, []).append(f)
        if not utterances:
            found = describe_folder(split_dir)
            raise ValueError(f"{split_dir} holds no utterances. Expected {TIMIT_LAYOUT}; {found}")
        rels = [_preferred(paths).relative_to(base).as_posix() for paths in utterances.values()]
        splits[split] = sorted(rels, key=lambda r: (r.upper(), r))
    for split, count in FULL_CORPUS.items():
        if len(splits[split]) != count:
            log.info("TIMIT %s: %d utterances (the full corpus has %d)", split, len(splits[split]), count)
    return base, splits


class TimitDataModule(AudioDataModule):
    """TIMIT under the SRNN / Z-Forcing protocol (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        sample_rate: int = 16000,
        frame_size: int = 200,
        seq_frames: int = 40,
        val_fraction: float = 0.05,
        seed: int = 1234,
        eval_chunk_frames: int | None = None,
        **options: Unpack[AudioOptions],
    ) -> None:
        super().__init__(root, sample_rate=sample_rate, frame_size=frame_size, cache_dir=cache_dir, **options)
        self.seq_frames = seq_frames
        self.val_fraction = val_fraction
        self.seed = seed
        self.eval_chunk_frames = eval_chunk_frames
        self.num_train_files = 0
        self.split_files: dict[str, list[str]] = {}

    @property
    def unit(self) -> str:  # type: ignore[override]
        """Per utterance for the paper's full-utterance evaluation, per chunk when chunked."""
        return "utterance" if self.eval_chunk_frames is None else "sequence"

    def _prepare(self) -> AudioCorpus:
        self._check_root("TIMIT", TIMIT_LAYOUT)
        base, splits = find_timit_files(self.root)
        self.num_train_files = len(splits["train"])
        files = splits["train"] + splits["test"]
        return self._open_or_build(base, files, "timit", int(self.sample_rate or 16000))

    def _build_splits(self, corpus: AudioCorpus) -> dict[str, Any]:
        if self.num_train_files < 2:
            raise ValueError(f"TIMIT needs at least 2 training utterances, found {self.num_train_files}")
        train_idx, val_idx = seeded_holdout(self.num_train_files, self.val_fraction, self.seed)
        test_idx = np.arange(self.num_train_files, len(corpus.files))
        self.split_files = {
            name: [corpus.files[i] for i in idx]
            for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
        }
        self.stats = corpus.file_stats(train_idx)
        self.normalizer = Normalizer.from_stats(self.stats)
        fs, norm, stream = self.frame_size, self.normalizer, corpus.stream
        self.train_set = StreamChunks(stream, corpus.segments(train_idx), fs, self.seq_frames, norm)
        chunk = self.eval_chunk_frames
        self.val_set = Utterances(stream, corpus.segments(val_idx), fs, norm, chunk_frames=chunk)
        self.test_set = Utterances(stream, corpus.segments(test_idx), fs, norm, chunk_frames=chunk)
        if len(self.train_set) == 0:
            raise ValueError(
                f"TIMIT training audio ({corpus.lengths()[train_idx].sum()} samples) is shorter than "
                f"one {self.seq_frames}-frame sequence"
            )
        return {
            "settings": {
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "frame_size": fs,
                "seq_frames": self.seq_frames,
                "eval_chunk_frames": self.eval_chunk_frames,
            },
            "utterances": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "val_files": self.split_files["val"],
            "items": {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)},
        }
