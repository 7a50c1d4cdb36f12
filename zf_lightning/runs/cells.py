"""A sweep over a list of cells: the jobs of Hydra's basic sweeper (the product of
``hydra.sweeper.params`` and the command line's sweeps), each run once per cell, a cell being
a fixed set of overrides such as ``model=rnn width=8 data.length=64``.

A product cannot name scattered cells of a grid (e.g. the cells of a capacity heatmap still
improving when their budget ended), and a study that continues only those needs to list them.
Selected with ``override /hydra/sweeper: cells`` (``zf_lightning/conf/hydra/sweeper/cells.yaml``);
the sweeper class lives in ``hydra_plugins/zf_lightning_cells`` because Hydra loads sweepers only
from that namespace.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser


def parse_cells(cells: Sequence[str]) -> list[list[str]]:
    """Each cell's overrides, checked: parseable, no sweeps, no key twice, no cell twice."""
    parser = OverridesParser.create()
    parsed, seen = [], set()
    for i, cell in enumerate(cells):
        overrides = parser.parse_overrides(str(cell).split())
        if not overrides:
            raise ValueError(f"hydra.sweeper.cells[{i}] is empty")
        keys = [o.get_key_element() for o in overrides]
        if any(o.is_sweep_override() for o in overrides):
            raise ValueError(f"hydra.sweeper.cells[{i}] ({cell!r}) sweeps a value; a cell fixes one value per key")
        if len(set(keys)) != len(keys):
            raise ValueError(f"hydra.sweeper.cells[{i}] ({cell!r}) sets a key twice")
        jobs = tuple(sorted(f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides))
        if jobs in seen:
            raise ValueError(f"hydra.sweeper.cells[{i}] ({cell!r}) is listed twice")
        seen.add(jobs)
        parsed.append([f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides])
    return parsed


def cell_jobs(jobs: list[list[str]], cells: list[list[str]], swept: set[str]) -> list[list[str]]:
    """Every job once per cell, cells outermost; a cell may not set a key the sweep sets."""
    for cell in cells:
        clash = swept & {c.split("=", 1)[0] for c in cell}
        if clash:
            raise ValueError(f"the cell {' '.join(cell)!r} sets {sorted(clash)}, which the sweep sets too")
    return [cell + job for cell in cells for job in jobs]
