"""Words: the tokenizer, the sentence splitter and the vocabulary (with its special tokens)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
UNLABELLED = -1

_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word is a run of letters/digits, possibly joined by inner apostrophes or hyphens
# ("don't", "co-writer"); every other non-space character is a token of its own.
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*|\S")
# Sentence ends: a line break, or whitespace after . ! ? (optionally followed by a closing
# quote or bracket).
_SENTENCE_BREAK = re.compile(r"\n+|(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


def tokenize(text: str) -> list[str]:
    """Split text into lower-cased word and punctuation tokens.

    The rule, kept simple so results are easy to reproduce: HTML line breaks (``<br />``)
    become spaces, the text is lower-cased, and tokens are runs of letters/digits (inner
    apostrophes and hyphens stay inside the word) or single punctuation characters.
    """
    return _TOKEN.findall(_LINE_BREAK.sub(" ", text).lower())


def split_sentences(review: str) -> list[str]:
    """Split a review into sentences: at HTML line breaks, newlines and after ``. ! ?``.

    Abbreviations ("Mr. Smith") are split too; that is the price of a rule with no model.
    """
    text = _LINE_BREAK.sub("\n", review)
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


class Vocab:
    """Token <-> id map: the four specials (``<pad>`` = 0, ``<unk>``, ``<bos>``, ``<eos>``)
    followed by words, most frequent first."""

    def __init__(self, words: Sequence[str]) -> None:
        tokens = list(SPECIALS) + list(words)
        if len(set(tokens)) != len(tokens):
            raise ValueError("Vocab words must be unique and must not repeat the special tokens")
        self.tokens: list[str] = tokens
        self._index: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_words: int, min_count: int = 1) -> Vocab:
        """Keep the ``max_words`` most frequent words (ties broken alphabetically, so the
        result does not depend on corpus order) that occur at least ``min_count`` times."""
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        counts = Counter(tok for sent in sentences for tok in sent if tok not in SPECIALS)
        kept = (item for item in counts.items() if item[1] >= min_count)
        ranked = sorted(kept, key=lambda kv: (-kv[1], kv[0]))
        return cls([word for word, _ in ranked[:max_words]])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(tuple(self.tokens))

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    @property
    def bos_id(self) -> int:
        return self._index[BOS]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids; words outside the vocabulary map to ``<unk>``."""
        unk = self.unk_id
        return [self._index.get(tok, unk) for tok in tokens]

    def ids_to_tokens(self, ids: Iterable[int], stop_at_eos: bool = True) -> list[str]:
        """Tokens for ``ids``, skipping ``<pad>``/``<bos>`` and stopping at ``<eos>``."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return out

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """Space-joined text for ``ids`` (see ``ids_to_tokens``)."""
        return " ".join(self.ids_to_tokens(ids, stop_at_eos=stop_at_eos))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in the cache and in checkpoints."""
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        tokens = list(data["tokens"])
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"not a Vocab: the first tokens must be {SPECIALS}, got {tokens[:4]}")
        return cls(tokens[len(SPECIALS) :])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
