"""One-sentence-per-line text files as a data module; a sentence's label is its file's index."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from zf_lightning.data.cache import resolve_path
from zf_lightning.data.text.base import WordDataModule, WordOptions, shuffled
from zf_lightning.data.text.cache import SPLITS
from zf_lightning.data.text.tokens import tokenize


def _file_signature(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; a file that is not text (a binary file, another encoding)
    is refused, naming it, rather than turning its bytes into vocabulary."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start} is not valid UTF-8); "
            "sentence files must be plain UTF-8 text, one sentence per line"
        ) from None
    if "\x00" in text:
        raise ValueError(f"{path} is not text: it holds NUL bytes (offset {text.index(chr(0))}); "
                         "sentence files must be plain UTF-8 text, one sentence per line")
    # as reading the file in text mode did: universal newlines, lines split at "\n" only
    return text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n").split("\n") if text else []


def _split_indices(n: int, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into consecutive parts of the given fractions."""
    perm = rng.permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    n_val = min(n_val, n - n_train)
    return [perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]]



class SentencesDataModule(WordDataModule):
    """One-sentence-per-line files; a sentence's label is the index of its file.

    E.g. ``files=[rt-polarity.pos, rt-polarity.neg]`` gives positive = 0, negative = 1.
    The train/val/test split is drawn with ``seed``; ``stratify`` splits each file
    separately so every split keeps the label proportions. Empty lines are skipped.
    """

    cache_name = "sentences"

    def __init__(
        self,
        files: Sequence[str],
        split: Sequence[float] = (0.8, 0.1, 0.1),
        stratify: bool = True,
        vocab_size: int = 10000,
        **options: Unpack[WordOptions],
    ) -> None:
        super().__init__(vocab_size=vocab_size, **options)
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        if not files:
            raise ValueError("SentencesDataModule needs at least one file (one sentence per line)")
        self.files = [resolve_path(f) for f in files]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"sentence file(s) not found: {missing}. Expected plain-text files with one sentence "
                "per line (e.g. ../shared/data/rt-polarity/rt-polarity.pos); relative paths are "
                "resolved against the directory you launched from."
            )
        fractions = [float(x) for x in split]
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split must be three non-negative fractions (train, val, test) summing to 1, got {split}"
            )
        self.split = fractions
        self.stratify = stratify

    @property
    def label_names(self) -> list[str]:
        return [f.name for f in self.files]

    def _data_dir(self) -> Path:
        return self.files[0].parent

    def _corpus_settings(self) -> dict[str, Any]:
        files = [_file_signature(f) for f in self.files]
        return {"files": files, "split": self.split, "stratify": self.stratify}

    def _read_corpus(self) -> dict[str, tuple[list[list[str]], list[int]]]:
        rng = np.random.default_rng(self.seed)
        lines: list[str] = []
        labels: list[int] = []
        groups: list[np.ndarray] = []
        for label, path in enumerate(self.files):
            file_lines = [line for line in _read_lines(path) if line.strip()]
            if not file_lines:
                raise ValueError(f"{path} holds no sentences (it is empty or blank); every file in data.files "
                                 "needs at least one sentence, one per line")
            groups.append(np.arange(len(lines), len(lines) + len(file_lines)))
            lines += file_lines
            labels += [label] * len(file_lines)
        if not self.stratify:
            groups = [np.arange(len(lines))]
        parts: dict[str, list[int]] = {name: [] for name in SPLITS}
        for group in groups:
            for name, idx in zip(SPLITS, _split_indices(len(group), self.split, rng), strict=True):
                parts[name] += group[idx].tolist()
        return {
            name: shuffled([tokenize(lines[i]) for i in idx], [labels[i] for i in idx], rng)
            for name, idx in parts.items()
        }
