"""The sweeper of ``override /hydra/sweeper: cells``: Hydra's basic sweeper, every job of it run
once per listed cell (the cell logic: ``zf_lightning.runs.cells``)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override

from zf_lightning.runs.cells import cell_jobs, parse_cells


class CellSweeper(BasicSweeper):
    """Hydra's basic sweeper, every job of it run once per cell (cells outermost, in list order)."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 cells: Sequence[str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.cells = parse_cells(list(cells or []))
        if not self.cells:
            raise ValueError("hydra.sweeper.cells lists no cells: name at least one, e.g. 'model=rnn width=8'")

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:  # type: ignore[override]
        every = cell_jobs(BasicSweeper.split_arguments(overrides, None)[0], self.cells,
                          {o.get_key_element() for o in overrides})
        size = max_batch_size if max_batch_size not in (None, -1) else max(len(every), 1)
        return [every[i:i + size] for i in range(0, len(every), size)]
