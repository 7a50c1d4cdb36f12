"""scripts/shortcut_rules.py: each order-using rule on hand-made sequences whose answer is known,
and the committed results/capacity_shortcuts agrees with what the script measures now on one
study (the Dyck rules at 16 brackets, where "opens first and closes last" is the 1-layer
Transformer's best cell)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rules() -> ModuleType:
    return load_script("shortcut_rules")


def test_each_rule_on_sequences_with_known_answers(rules: ModuleType) -> None:
    # string equality: a SEP(2) b END(3)
    assert rules.same_ones(np.array([1, 0, 1, 2, 0, 1, 1, 3])) and not rules.same_ones(np.array([1, 0, 2, 1, 1, 3]))
    # Dyck: ( 0, ) 1, [ 2, ] 3, END 4
    assert rules.opens_first_closes_last(np.array([0, 2, 1, 3, 4]))  # "([)]": opens first, closes last
    assert not rules.no_mismatched_neighbours(np.array([0, 2, 1, 3, 4]))  # "[)" next to each other
    assert rules.no_mismatched_neighbours(np.array([0, 1, 2, 3, 4]))
    assert not rules.opens_first_closes_last(np.array([1, 0, 2, 3, 4]))
    # nearest neighbour, 2-bit vectors: x1 y1 x2 y2 QUERY q
    stored = rules.query_is_stored(2)
    assert stored(np.array([0, 1, 2, 1, 1, 3, 4, 1, 1])) and not stored(np.array([0, 1, 2, 1, 1, 3, 4, 0, 0]))


def test_the_committed_dyck_rows_are_what_the_script_measures(rules: ModuleType,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "RULES", [r for r in rules.RULES if r[0] == "capacity_dyck"])
    monkeypatch.setattr(rules, "study_lengths", lambda study: ["16"])
    with (ROOT / "results" / "capacity_shortcuts" / "rules.csv").open(newline="") as fh:
        committed = [r for r in csv.DictReader(fh) if r["study"] == "capacity_dyck" and r["length"] == "16"]
    assert rules.measure() == committed
    assert [r["value"] for r in committed] == ["0.584", "0.834"]
