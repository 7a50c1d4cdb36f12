"""scripts/tight_bounds.py: the table of importance-sampled bounds pairs rows by seed on every
bound, with a t-interval, and leaves out seeds a row does not share with the baseline."""

from __future__ import annotations

import csv
import re

from tests.helpers import REPO, load_script


def test_rows_are_paired_by_seed_on_each_bound_with_a_t_interval() -> None:
    script = load_script("tight_bounds")

    def line(row: str, seed: str, elbo: float, iwae_10: float) -> dict[str, str]:
        return {"row": row, "seed": seed, "elbo": str(elbo), "iwae_1": str(elbo), "iwae_10": str(iwae_10)}

    lines = [line("base", "1", 1.0, 1.0), line("base", "2", 2.0, 2.0), line("base", "3", 3.0, 3.0),
             line("new", "1", 1.1, 2.0), line("new", "2", 2.3, 3.0), line("new", "3", 3.2, 4.0),
             line("new", "4", 9.0, 9.0)]
    table = script.markdown(lines, "test", [1, 10], "base")
    # differences 0.1, 0.3, 0.2 (seed 4 has no partner): mean 0.2, se 0.1 / sqrt(3), t(2) = 4.303
    pair = "+0.200 [-0.048, 0.448], n=3"
    assert f"| (new) − (base) | {pair} | {pair} | +1.0 [1.0, 1.0], n=3 |" in table
    assert "| base | 3 | 2.0 ± 1.0 | 2.0 ± 1.0 | 2.0 ± 1.0 |" in table
    assert "| new | 4 |" in table


def test_no_baseline_gives_the_row_table_alone() -> None:
    script = load_script("tight_bounds")
    lines = [{"row": "a", "seed": "1", "elbo": "-4.5", "iwae_1": "-4.5"}]
    table = script.markdown(lines, "val", [1], None)
    assert "| a | 1 | -4.5 | -4.5 |" in table and "Paired" not in table


def test_each_committed_bounds_table_is_what_the_script_writes_from_its_csv() -> None:
    script = load_script("tight_bounds")
    tables = sorted((REPO / "results").glob("*/bounds.md"))
    assert tables, "no results/*/bounds.md committed"
    for table in tables:
        with (table.parent / "bounds.csv").open() as handle:
            lines = list(csv.DictReader(handle))
        text = table.read_text()
        samples = [int(name.removeprefix("iwae_")) for name in lines[0] if name.startswith("iwae_")]
        split = re.search(r"\((\w+) split\)", text).group(1)  # type: ignore[union-attr]
        baseline = re.search(r"\(row\) − \((.+?)\) on each bound", text)
        assert text == script.markdown(lines, split, samples, baseline.group(1) if baseline else None), table
