"""Word-level text: tokenizer, vocabulary and data modules for sentence corpora and IMDB.

Every sentence becomes one sequence. With words ``w_1 .. w_n``::

    inputs  = [<bos>, w_1, ..., w_n]
    targets = [w_1, ..., w_n, <eos>]

so ``inputs[t]`` is what the model has seen before it predicts ``targets[t]`` (the repo's
convention). Sequences are at most ``max_len`` steps long (a sentence of ``n`` words takes
``n + 1`` steps); longer sentences are dropped or truncated (``length_policy``). A truncated
sentence keeps its first ``max_len`` words as targets and gets no ``<eos>``: it did not end
there, and teaching the model that it did would bias sentence lengths.

The vocabulary is built on the training split only (so held-out words become ``<unk>``,
as they would for unseen text) and, together with the encoded splits, cached in a directory
keyed by a hash of every setting that changes the result. Labels (file index, or sentiment
for IMDB) ride along in the batch for analysis only; ``-1`` marks unlabelled text.
"""

from __future__ import annotations

import json
import logging
import os
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

import numpy as np
import torch
from torch import Tensor

from zf_lightning.data.base import LoaderOptions, SequenceDataModule, SequenceItem
from zf_lightning.data.cache import (
    atomic_write_json,
    build_atomically,
    fallback_cache_dirs,
    first_writable,
    resolve_path,
    settings_key,
)
from zf_lightning.data.text.encoded import EncodedSplit, TokenSequenceDataset
from zf_lightning.data.text.tokens import UNLABELLED, Vocab, split_sentences, tokenize
from zf_lightning.types import DataSpec

log = logging.getLogger(__name__)

# Bump when tokenize/split_sentences/encoding change, so stale caches are rebuilt.
TEXT_PIPELINE_VERSION = 1

LengthPolicy = Literal["drop", "truncate"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

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


class WordOptions(LoaderOptions, total=False):
    """``WordDataModule``'s settings that its subclasses pass on unchanged (see its arguments)."""

    max_len: int | None
    length_policy: LengthPolicy
    min_len: int
    seed: int
    cache_dir: str | None


class WordDataModule(SequenceDataModule):
    """Shared machinery of the word-level modules: length policy, vocabulary, cache, spec.

    Subclasses read their corpus into tokenized train/val/test sentences with labels
    (``_read_corpus``) and describe what identifies it (``_corpus_settings``). Everything
    else, including the lazy build that makes ``spec`` available before ``setup``, is here.
    """

    cache_name = "text"

    def __init__(
        self,
        vocab_size: int = 10000,
        max_len: int | None = 64,
        length_policy: LengthPolicy = "drop",
        min_len: int = 1,
        seed: int = 0,
        cache_dir: str | None = None,
        **loader: Unpack[LoaderOptions],
    ) -> None:
        super().__init__(**loader)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 (steps per sequence) or null, got {max_len}")
        if length_policy not in ("drop", "truncate"):
            raise ValueError(f"length_policy must be 'drop' or 'truncate', got {length_policy!r}")
        if min_len < 0:
            raise ValueError(f"min_len must be >= 0, got {min_len}")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.length_policy = length_policy
        self.min_len = min_len
        self.seed = seed
        self.cache_dir = resolve_path(cache_dir) if cache_dir else None
        self._vocab: Vocab | None = None
        self._splits: dict[str, EncodedSplit] | None = None
        self._cache_path: Path | None = None

    # -- what subclasses provide -------------------------------------------------------

    @abstractmethod
    def _read_corpus(self) -> dict[str, tuple[list[list[str]], list[int]]]:
        """Tokenized sentences and labels for each of ``train``, ``val``, ``test``."""

    @abstractmethod
    def _corpus_settings(self) -> dict[str, Any]:
        """JSON-able description of the corpus and split settings (part of the cache key)."""

    @abstractmethod
    def _data_dir(self) -> Path:
        """Where the data lives; the default cache goes next to it when writable."""

    @property
    @abstractmethod
    def label_names(self) -> list[str]:
        """Name of each label id (``label_names[k]`` is label ``k``)."""

    # -- public API --------------------------------------------------------------------

    @property
    def vocab(self) -> Vocab:
        """The training vocabulary, built (or loaded from the cache) on first access."""
        self._ensure_built()
        assert self._vocab is not None
        return self._vocab

    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id

    @property
    def unk_id(self) -> int:
        return self.vocab.unk_id

    @property
    def bos_id(self) -> int:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int:
        return self.vocab.eos_id

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="tokens", dim=len(self.vocab), unit="word", dims_per_step=1)

    @property
    def cache_path(self) -> Path:
        """Directory holding this configuration's vocabulary and encoded splits."""
        self._ensure_built()
        assert self._cache_path is not None
        return self._cache_path

    def prepare_data(self) -> None:
        self._ensure_built()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_built()
        assert self._splits is not None
        datasets = {
            name: TokenSequenceDataset(split, self.bos_id, self.eos_id, self.max_len)
            for name, split in self._splits.items()
        }
        self.train_set, self.val_set, self.test_set = datasets["train"], datasets["val"], datasets["test"]

    def sample_first_input(self, n: int) -> Tensor:
        """Generation starts from ``<bos>``, the input every training sentence starts with."""
        return torch.full((n,), self.bos_id, dtype=torch.long)

    def sample_length(self) -> int:
        """Steps to generate: the longest training sequence (at most ``max_len``); text stops at ``<eos>``."""
        self._ensure_built()
        assert self._splits is not None
        offsets = np.asarray(self._splits["train"].offsets)
        longest = int(np.diff(offsets).max()) + 1 if len(offsets) > 1 else 1
        return min(longest, self.max_len) if self.max_len is not None else longest

    def encode_sentence(self, text: str) -> SequenceItem:
        """``(inputs, targets, label=None)`` for a raw sentence, tokenized like the corpus."""
        split = EncodedSplit.from_lists([self.vocab.encode(tokenize(text))], [UNLABELLED])
        inputs, targets, _ = TokenSequenceDataset(split, self.bos_id, self.eos_id, self.max_len)[0]
        return inputs, targets, None

    def decode(self, ids: Iterable[int]) -> str:
        return self.vocab.decode(ids)

    def write_samples(self, samples: Tensor, directory: Path, prefix: str = "samples") -> list[Path]:
        """Write token-id samples ``[N, T]`` as one decoded sentence per line (cut at ``<eos>``)."""
        if samples.dim() == 3 and samples.shape[-1] == 1:
            samples = samples.squeeze(-1)
        if samples.dim() != 2:
            raise ValueError(f"expected token ids [N, T], got shape {tuple(samples.shape)}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}.txt"
        lines = [self.vocab.decode(row.tolist()) for row in samples.detach().long().cpu()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [path]

    def state_dict(self) -> dict[str, Any]:
        """Stored in checkpoints, so a model can always be matched to its vocabulary."""
        return {"vocab": self.vocab.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "vocab" not in state_dict:
            return
        saved = Vocab.from_dict(state_dict["vocab"])
        if saved != self.vocab:
            raise ValueError(
                f"the checkpoint's vocabulary ({len(saved)} tokens) differs from the one built from "
                f"this data configuration ({len(self.vocab)} tokens, cache {self.cache_path}); "
                "use the data settings the model was trained with"
            )

    # -- building and caching ------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Everything that determines the vocabulary and the encoded splits."""
        return {
            "version": TEXT_PIPELINE_VERSION,
            "kind": type(self).__name__,
            "corpus": self._corpus_settings(),
            "vocab_size": self.vocab_size,
            "max_len": self.max_len,
            "length_policy": self.length_policy,
            "min_len": self.min_len,
            "seed": self.seed,
        }

    def _apply_length_policy(
        self, sentences: list[list[str]], labels: list[int]
    ) -> tuple[list[list[str]], list[int]]:
        """Drop short sentences and drop or truncate long ones (``max_len`` counts steps)."""
        kept_s: list[list[str]] = []
        kept_l: list[int] = []
        for sent, label in zip(sentences, labels, strict=True):
            if len(sent) < self.min_len:
                continue
            if self.max_len is not None and len(sent) + 1 > self.max_len:
                if self.length_policy == "drop":
                    continue
                sent = sent[: self.max_len]
            kept_s.append(sent)
            kept_l.append(label)
        return kept_s, kept_l

    def _ensure_built(self) -> None:
        if self._splits is not None:
            return
        settings = self.settings()
        root = first_writable(fallback_cache_dirs(self.cache_dir, self._data_dir()))
        path = root / f"{self.cache_name}-{settings_key(settings)}"
        problem = cache_problem(path) if (path / "done").exists() else "not built yet"
        if problem is not None:
            if (path / "done").exists():
                log.warning("the text cache %s is damaged (%s); rebuilding it", path, problem)
            log.info("building %s vocabulary and encoded splits in %s", type(self).__name__, path)
            build_atomically(path, lambda tmp: self._build_cache(tmp, settings),
                             complete=lambda folder: cache_problem(folder) is None)
        self._vocab = Vocab.load(path / "vocab.json")
        self._splits = {name: EncodedSplit.load(path, name) for name in SPLITS}
        self._cache_path = path

    def _build_cache(self, folder: Path, settings: dict[str, Any]) -> None:
        """Vocabulary, encoded splits and statistics into ``folder``; ``done`` marks it complete."""
        corpus = {name: self._apply_length_policy(*part) for name, part in self._read_corpus().items()}
        vocab = Vocab.build(corpus["train"][0], self.vocab_size)
        vocab.save(folder / "vocab.json")
        stats: dict[str, Any] = {"vocab": len(vocab)}
        for name in SPLITS:
            sentences, labels = corpus[name]
            EncodedSplit.from_lists([vocab.encode(s) for s in sentences], labels).save(folder, name)
            n_words = sum(len(s) for s in sentences)
            n_unk = sum(tok not in vocab for s in sentences for tok in s)
            stats[name] = {"sentences": len(sentences), "words": n_words, "unk_rate": n_unk / max(n_words, 1)}
        atomic_write_json(folder / "settings.json", {"settings": settings, "stats": stats}, indent=2)
        (folder / "done").touch()


def cache_problem(folder: Path) -> str | None:
    """Why a text cache folder cannot be used as it is (None: complete, and every split's arrays have
    the sizes recorded in settings.json when it was built)."""
    try:
        if not (folder / "done").exists():
            return "incomplete (no 'done' marker)"
        stats = json.loads((folder / "settings.json").read_text())["stats"]
        Vocab.load(folder / "vocab.json")
        for name in SPLITS:
            split = EncodedSplit.load(folder, name)
            expected = (stats[name]["sentences"], stats[name]["words"])
            if (len(split), len(split.ids)) != expected or int(split.offsets[-1]) != len(split.ids):
                return (f"split {name} holds {len(split)} sentences and {len(split.ids)} words, "
                        f"settings.json says {expected[0]} and {expected[1]}")
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable: {err}"
    return None


def _split_indices(n: int, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into consecutive parts of the given fractions."""
    perm = rng.permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    n_val = min(n_val, n - n_train)
    return [perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]]


def _shuffled(
    sentences: list[list[str]], labels: list[int], rng: np.random.Generator
) -> tuple[list[list[str]], list[int]]:
    """Mix labels within a split, so a partial pass (e.g. ``limit_test_batches``) sees all."""
    order = rng.permutation(len(sentences))
    return [sentences[i] for i in order], [labels[i] for i in order]


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
            name: _shuffled([tokenize(lines[i]) for i in idx], [labels[i] for i in idx], rng)
            for name, idx in parts.items()
        }


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
        return {name: _shuffled(*parts[name], rng) for name in SPLITS}
