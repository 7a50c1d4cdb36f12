"""Word-level text: the machinery shared by the corpus data modules (``sentences``, ``imdb``).

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

import logging
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Unpack

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
from zf_lightning.data.text.cache import SPLITS, cache_problem
from zf_lightning.data.text.encoded import EncodedSplit, TokenSequenceDataset
from zf_lightning.data.text.tokens import UNLABELLED, Vocab, tokenize
from zf_lightning.types import DataSpec

log = logging.getLogger(__name__)

# Bump when tokenize/split_sentences/encoding change, so stale caches are rebuilt.
TEXT_PIPELINE_VERSION = 1

LengthPolicy = Literal["drop", "truncate"]


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



def shuffled(
    sentences: list[list[str]], labels: list[int], rng: np.random.Generator
) -> tuple[list[list[str]], list[int]]:
    """Mix labels within a split, so a partial pass (e.g. ``limit_test_batches``) sees all."""
    order = rng.permutation(len(sentences))
    return [sentences[i] for i in order], [labels[i] for i in order]
