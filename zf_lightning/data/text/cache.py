"""Checking a built text cache folder (vocabulary and encoded splits) before it is used."""

from __future__ import annotations

import json
from pathlib import Path

from zf_lightning.data.text.encoded import EncodedSplit
from zf_lightning.data.text.tokens import Vocab

SPLITS: tuple[str, ...] = ("train", "val", "test")


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

