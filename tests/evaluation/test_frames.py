"""The bound split into near-silent frames and the rest (zf_lightning/evaluation/frames.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import load_script
from zf_lightning.data.base import pad_collate
from zf_lightning.evaluation.frames import quiet_frames, quiet_mask
from zf_lightning.types import SequenceBatch, StepTerms


class _Frames:
    """The part of a data module the analysis reads: one split of fixed sequences."""

    eval_batch_size = 2
    collate_fn = staticmethod(pad_collate)

    def __init__(self, sequences: list[Tensor]) -> None:
        self.items = [(x, x, None) for x in sequences]

    def dataset(self, split: str) -> list[Any]:
        return self.items


class _SquareModel(nn.Module):
    """nll = the frame's mean square, kl = 1 per real step: sums that are easy to check by hand."""

    def forward(self, batch: SequenceBatch) -> StepTerms:
        nll = batch.targets.pow(2).mean(dim=-1) * batch.mask
        return StepTerms.with_zeros(nll, kl=batch.mask.clone())


def test_quiet_frames_split_the_bound_and_their_parts_add_up_to_it() -> None:
    quiet, loud = torch.full((1, 4), 0.05), torch.full((1, 4), 2.0)  # mean squares 0.0025 and 4
    sequences = [torch.cat([quiet, loud, loud]), torch.cat([quiet, quiet])]  # the second is shorter
    metrics = quiet_frames(_SquareModel(), _Frames(sequences), "val", threshold=0.01)  # type: ignore[arg-type]
    assert metrics["val/quiet_fraction"] == pytest.approx(3 / 5)
    # sequence 1: one quiet frame (-(0.0025 + 1)), two loud (-(4 + 1) each); sequence 2: two quiet
    assert metrics["val/elbo_quiet"] == pytest.approx(-(3 * 1.0025) / 2)
    assert metrics["val/elbo_other"] == pytest.approx(-(2 * 5.0) / 2)
    assert metrics["val/nll_quiet"] == pytest.approx(3 * 0.0025 / 2)
    assert metrics["val/nll_other"] == pytest.approx(2 * 4.0 / 2)
    whole = -(0.0025 + 1 + 2 * 5.0 + 2 * 1.0025) / 2
    assert metrics["val/elbo_quiet"] + metrics["val/elbo_other"] == pytest.approx(whole)


def test_padding_is_neither_quiet_nor_other() -> None:
    batch = pad_collate([(torch.zeros(3, 2), torch.zeros(3, 2), None), (torch.zeros(1, 2), torch.zeros(1, 2), None)])
    assert quiet_mask(batch, 0.01).tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_token_targets_are_refused_with_what_was_given() -> None:
    tokens = torch.zeros(1, 3, dtype=torch.long)
    batch = SequenceBatch(inputs=tokens, targets=tokens, mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"real-valued frames.*shape \(1, 3\)"):
        quiet_mask(batch, 0.01)


def test_the_study_table_pairs_rows_by_seed_and_splits_each_difference_by_frame_kind() -> None:
    script = load_script("quiet_frames")

    def line(row: str, seed: str, quiet: float, other: float) -> dict[str, str]:
        return {"row": row, "seed": seed, "elbo": str(quiet + other), "elbo_quiet": str(quiet),
                "elbo_other": str(other), "quiet_fraction": "0.25", "nll_quiet": "0", "nll_other": "0"}

    lines = [line("base", "1", 100.0, -50.0), line("base", "2", 110.0, -40.0),
             line("new", "1", 130.0, -55.0), line("new", "2", 150.0, -45.0), line("new", "3", 0.0, 0.0)]
    table = script.markdown(lines, "test", 0.01, "base")
    # seeds 1 and 2 pair up (seed 3 has no partner): quiet +30 and +40, other -5 and -5
    assert "| (new) − (base) | 2 | 30.0 ± 7.1 | 35.0 ± 7.1 | -5.0 ± 0.0 |" in table
    assert "| base | 2 | 0.250 | 60.0 ± 14.1 | 105.0 ± 7.1 | -45.0 ± 7.1 |" in table
