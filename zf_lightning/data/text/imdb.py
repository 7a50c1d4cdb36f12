"""The IMDB review corpus (aclImdb) as a data module, one sequence per sentence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Unpack

import numpy as np

from zf_lightning.data.cache import resolve_path
from zf_lightning.data.text.base import WordDataModule, WordOptions, shuffled
from zf_lightning.data.text.cache import SPLITS
from zf_lightning.data.text.tokens import UNLABELLED, split_sentences, tokenize

IMDB_LAYOUT = (
    "<root>/train/pos/*.txt, <root>/train/neg/*.txt, <root>/test/pos/*.txt, <root>/test/neg/*.txt "
    "(optional <root>/train/unsup/*.txt), as unpacked from aclImdb_v1.tar.gz"
)


class ImdbDataModule(WordDataModule):
    """The IMDB review corpus (aclImdb), one sequence per sentence.

    Reviews are split into sentences (``split_sentences``) and tokenized (``tokenize``).
    Labels: positive = 1, negative = 0, unlabelled (``train/unsup``, only with
    ``use_unsup``, training split only) = -1. Validation reviews are held out of
    ``train`` by ``seed``, per label and by whole reviews, so no review's sentences are in
    both. ``max_reviews_per_class`` takes a seeded subset of every folder, for quick runs.
    """

    cache_name = "imdb"
    LABELS: ClassVar[dict[str, int]] = {"neg": 0, "pos": 1}

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        use_unsup: bool = False,
        max_reviews_per_class: int | None = None,
        vocab_size: int = 20000,
        **options: Unpack[WordOptions],
    ) -> None:
        super().__init__(vocab_size=vocab_size, **options)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if max_reviews_per_class is not None and max_reviews_per_class < 1:
            raise ValueError(f"max_reviews_per_class must be >= 1 or null, got {max_reviews_per_class}")
        self.root = resolve_path(root)
        self.val_fraction = val_fraction
        self.use_unsup = use_unsup
        self.max_reviews_per_class = max_reviews_per_class
        self._check_layout()

    @property
    def label_names(self) -> list[str]:
        return ["neg", "pos"]

    def _folders(self) -> list[str]:
        unsup = ["train/unsup"] if self.use_unsup else []
        return ["train/pos", "train/neg", "test/pos", "test/neg", *unsup]

    def _check_layout(self) -> None:
        """Fail early, showing the expected layout next to what is actually there."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"IMDB root {self.root} does not exist. Expected the aclImdb tree: {IMDB_LAYOUT}"
            )
        missing = [
            folder
            for folder in self._folders()
            if not (self.root / folder).is_dir() or next((self.root / folder).glob("*.txt"), None) is None
        ]
        if missing:
            found = sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir())[:20]
            hint = ""
            if (self.root / "aclImdb").is_dir():
                hint = f" Did you mean root={self.root / 'aclImdb'}?"
            raise FileNotFoundError(
                f"{self.root} is not an aclImdb tree: missing or empty {missing}. Expected: {IMDB_LAYOUT}. "
                f"Found in {self.root}: {found or 'nothing'}.{hint}"
            )

    def _data_dir(self) -> Path:
        return self.root

    def _review_files(self, folder: str, rng: np.random.Generator) -> list[Path]:
        files = sorted((self.root / folder).glob("*.txt"))
        if self.max_reviews_per_class is not None and len(files) > self.max_reviews_per_class:
            keep = np.sort(rng.permutation(len(files))[: self.max_reviews_per_class])
            files = [files[i] for i in keep]
        return files

    def _corpus_settings(self) -> dict[str, Any]:
        counts = {folder: sum(1 for _ in (self.root / folder).glob("*.txt")) for folder in self._folders()}
        return {
            "root": str(self.root),
            "files_per_folder": counts,
            "val_fraction": self.val_fraction,
            "use_unsup": self.use_unsup,
            "max_reviews_per_class": self.max_reviews_per_class,
        }

    @staticmethod
    def _sentences(files: Sequence[Path], label: int) -> tuple[list[list[str]], list[int]]:
        sentences: list[list[str]] = []
        for f in files:
            review = f.read_text(encoding="utf-8", errors="replace")
            sentences += [tokenize(s) for s in split_sentences(review)]
        return sentences, [label] * len(sentences)

    def _read_corpus(self) -> dict[str, tuple[list[list[str]], list[int]]]:
        rng = np.random.default_rng(self.seed)
        parts: dict[str, tuple[list[list[str]], list[int]]] = {name: ([], []) for name in SPLITS}

        def add(name: str, files: Sequence[Path], label: int) -> None:
            sentences, labels = self._sentences(files, label)
            parts[name][0].extend(sentences)
            parts[name][1].extend(labels)

        for sentiment, label in self.LABELS.items():
            train_files = self._review_files(f"train/{sentiment}", rng)
            n_val = round(self.val_fraction * len(train_files))
            order = rng.permutation(len(train_files))
            add("val", [train_files[i] for i in sorted(order[:n_val])], label)
            add("train", [train_files[i] for i in sorted(order[n_val:])], label)
            add("test", self._review_files(f"test/{sentiment}", rng), label)
        if self.use_unsup:
            add("train", self._review_files("train/unsup", rng), UNLABELLED)
        return {name: shuffled(*parts[name], rng) for name in SPLITS}
