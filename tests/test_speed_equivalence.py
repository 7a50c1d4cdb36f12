"""The fast Z-Forcing path against the step-by-step reference and against checkpoints written
before the speed work: same terms, same gradients, same parameter names and shapes.

``tests/test_zforcing.py`` already holds fast == reference (terms and gradients) for the
head/CLN/aux variants on one batch; this file adds what that test does not cover: stored
pre-change checkpoints, the weighted training loss (bwd weight included), unmasked and
single-step batches, wider hidden sizes, the optional compiled step and the GMM head.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_model
from zf_lightning.models.reference import reference_forward
from zf_lightning.types import SequenceBatch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "zforcing_small.pt"
TERMS = ("nll", "kl", "aux", "bwd", "log_p_z", "log_q_z")


def _fixture() -> dict[str, dict]:
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", sorted(_fixture()))
def test_checkpoint_from_before_the_speed_work_loads_and_gives_the_same_terms(name: str) -> None:
    entry = _fixture()[name]
    model = make_model(entry["kind"], seed=1234, **entry["options"])  # other init: the state dict must win
    model.load_state_dict(entry["state_dict"], strict=True)  # same names and shapes
    batch = SequenceBatch(**entry["batch"])
    with torch.no_grad():
        terms = model(batch, entry["noise"])
        ref = reference_forward(model, batch, entry["noise"])
    for term in TERMS:
        torch.testing.assert_close(getattr(terms, term), entry["terms"][term], atol=1e-5, rtol=1e-5, msg=term)
        torch.testing.assert_close(getattr(ref, term), entry["terms"][term], atol=1e-5, rtol=1e-5, msg=term)
    assert (entry["terms"]["kl"][batch.mask > 0] > 0).all()  # the stored terms are not trivial
