"""The LightningModule's objective, schedules, units and non-finite handling."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import make_batch, make_model
from zf_lightning.lit import Constant, Delayed, LinearRamp, SequenceLitModule
from zf_lightning.types import DataSpec, HasAuxCost, HasBackwardCost, SequenceBatch, StepTerms

ADAM = partial(torch.optim.Adam, lr=1e-3)


def test_constant_schedule() -> None:
    assert Constant(0.7)(0) == Constant(0.7)(10**6) == 0.7


def test_paper_kl_annealing_reaches_one_after_16000_updates() -> None:
    ramp = LinearRamp(start=0.2, increment=5e-5, end=1.0)
    assert ramp(0) == pytest.approx(0.2)
    assert ramp(8000) == pytest.approx(0.6)
    assert ramp(15999) < 1.0
    assert ramp(16000) == pytest.approx(1.0)
    assert ramp(10**7) == 1.0


def test_ramp_can_go_down_and_rejects_negative_increment() -> None:
    down = LinearRamp(start=1.0, increment=0.25, end=0.5)
    assert [down(s) for s in range(4)] == [1.0, 0.75, 0.5, 0.5]
    with pytest.raises(ValueError, match="magnitude"):
        LinearRamp(start=0.0, increment=-1.0, end=1.0)


def test_delayed_weight_is_off_then_ramps_to_its_value() -> None:
    ramped = Delayed(value=0.4, after=3, ramp=4)
    assert [ramped(s) for s in range(9)] == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert [Delayed(value=0.4, after=2)(s) for s in range(4)] == [0.0, 0.0, 0.4, 0.4]
    with pytest.raises(ValueError, match="update counts >= 0"):
        Delayed(value=1.0, after=-1)


class FixedTerms(nn.Module, HasAuxCost, HasBackwardCost):
    """A stand-in model returning given per-step terms (to check the objective's arithmetic)."""

    backward_cost = True

    def aux_cost(self, h_prev: Tensor, z: Tensor, b: Tensor) -> Tensor:
        return self.terms.aux

    def __init__(self, terms: StepTerms) -> None:
        super().__init__()
        self.terms = terms
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch: SequenceBatch) -> StepTerms:
        t = self.terms
        return StepTerms(t.nll * self.scale, t.kl, t.aux, t.bwd, t.log_p_z, t.log_q_z)


def fixed_module(per_token: bool = False, **kwargs) -> tuple[SequenceLitModule, SequenceBatch]:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    terms = StepTerms(
        nll=torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]),
        kl=torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]),
        aux=torch.tensor([[2.0, 2.0, 2.0], [2.0, 0.0, 0.0]]),
        bwd=torch.tensor([[3.0, 3.0, 3.0], [3.0, 0.0, 0.0]]),
        log_p_z=torch.zeros(2, 3),
        log_q_z=torch.zeros(2, 3),
    )
    batch = SequenceBatch(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), mask)
    spec = DataSpec("real", 4, "word" if per_token else "utterance", 4)
    return SequenceLitModule(FixedTerms(terms), spec, ADAM, **kwargs), batch


def test_loss_is_weighted_masked_sum_averaged_over_sequences() -> None:
    lit, batch = fixed_module(kl_weight=Constant(0.5), aux_weight=Constant(2.0), bwd_weight=0.1)
    loss, sums = lit.objective(batch, lit.weights(0))
    # sequence sums: nll 6 and 4, kl 1.5 and 1, aux 6 and 2, bwd 9 and 3
    expected = ((6 + 0.75 + 12 + 0.9) + (4 + 0.5 + 4 + 0.3)) / 2
    assert float(loss) == pytest.approx(expected)
    assert sums["nll"].tolist() == [6.0, 4.0]


def test_bwd_cost_counts_only_while_aux_weight_is_positive() -> None:
    lit, _ = fixed_module(aux_weight=LinearRamp(start=0.0, increment=0.5, end=1.0), bwd_weight=0.3)
    assert lit.weights(0)["bwd"] == 0.0
    assert lit.weights(1)["bwd"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("bwd_weight", "aux_weight", "on"),
    [(0.0, Constant(1.0), False), (0.3, Constant(0.0), False), (0.3, LinearRamp(0.0, 0.5, 1.0), True)],
)
def test_the_backward_head_runs_only_where_a_loss_reads_it(bwd_weight: float, aux_weight, on: bool) -> None:
    """Z-Forcing's bwd term costs a head as wide as the inputs; the objective switches it off where
    its weight is 0 (or the aux weight that gates it never rises), and the loss is the same either way."""
    batch = make_batch("tokens")
    lit = SequenceLitModule(make_model("tokens"), make_model("tokens").spec, ADAM, aux_weight=aux_weight,
                            bwd_weight=bwd_weight)
    assert lit.model.backward_cost is on
    torch.manual_seed(3)
    loss, sums = lit.objective(batch, lit.weights(5))
    assert bool((sums["bwd"] != 0).any()) is on
    if on:
        return
    grads = torch.autograd.grad(loss, list(lit.model.parameters()), allow_unused=True)
    lit.model.backward_cost = True  # the head computed but weighed 0, as before it could be switched off
    torch.manual_seed(3)
    loss_with_head, _ = lit.objective(batch, lit.weights(5))
    grads_with_head = torch.autograd.grad(loss_with_head, list(lit.model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, loss_with_head)
    for g, g_head in zip(grads, grads_with_head, strict=True):
        if g is None:
            assert g_head is None or not g_head.any()
        else:
            torch.testing.assert_close(g, g_head)


def test_a_positive_bwd_weight_needs_a_model_with_the_backward_cost() -> None:
    class AuxOnly(nn.Module, HasAuxCost):
        def aux_cost(self, h_prev: Tensor, z: Tensor, b: Tensor) -> Tensor:
            return torch.zeros(z.shape[:2])

    model = AuxOnly()
    spec = DataSpec("real", 4, "utterance", 4)
    with pytest.raises(ValueError, match="bwd weight"):
        SequenceLitModule(model, spec, ADAM, aux_weight=Constant(1.0), bwd_weight=0.5)
    with pytest.raises(ValueError, match="bwd_weight must be >= 0"):
        SequenceLitModule(model, spec, ADAM, bwd_weight=-0.1)


@pytest.mark.parametrize("per_token", [False, True])
def test_epoch_metrics_are_in_the_data_units(per_token: bool) -> None:
    lit, batch = fixed_module(per_token=per_token)
    _, sums = lit.objective(batch, {"kl": 1.0, "aux": 0.0, "bwd": 0.0})
    lit._accumulate("test", batch, sums)
    m = lit.epoch_metrics("test")
    total, sequences, steps = 10.0 + 2.5, 2, 4
    unit = steps if per_token else sequences
    assert m["test/nll"] == pytest.approx(10.0 / unit)
    assert m["test/kl"] == pytest.approx(2.5 / unit)
    assert m["test/neg_elbo"] == pytest.approx(total / unit)
    assert m["test/elbo"] == pytest.approx(-total / unit)
    assert m["test/nats_per_step"] == pytest.approx(total / steps)
    assert m["test/bpd"] == pytest.approx(total / steps / (4 * math.log(2)))
    assert m["test/loss"] == pytest.approx(total / sequences)
    assert ("test/ppl" in m) == per_token
    if per_token:
        assert m["test/ppl"] == pytest.approx(math.exp(total / steps), rel=1e-5)


@pytest.mark.parametrize("per_token", [False, True])
def test_the_validation_objective_is_the_loss_at_the_settled_weights(per_token: bool) -> None:
    """Whatever the update, val/objective weighs the terms as the schedules end (KL 1, aux 2, bwd
    0.1 here), in the bound's units; the test split has none."""
    lit, batch = fixed_module(per_token=per_token, kl_weight=LinearRamp(start=0.2, increment=0.1, end=1.0),
                              aux_weight=LinearRamp(start=0.0, increment=0.5, end=2.0), bwd_weight=0.1)
    assert lit.settled_weights() == {"kl": 1.0, "aux": 2.0, "bwd": 0.1}
    for split in ("val", "test"):
        _, sums = lit.objective(batch, {"kl": 1.0, "aux": 0.0, "bwd": 0.0})
        lit._accumulate(split, batch, sums)
    unit = 4 if per_token else 2
    # sums over both sequences: nll 10, kl 2.5, aux 8, bwd 12
    assert lit.epoch_metrics("val")["val/objective"] == pytest.approx((10 + 2.5 + 2 * 8 + 0.1 * 12) / unit)
    assert "test/objective" not in lit.epoch_metrics("test")


def test_aux_weight_on_a_model_without_aux_cost_is_a_clear_error() -> None:
    class NoAux(nn.Module):
        def forward(self, batch: SequenceBatch) -> StepTerms:  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="ablation=plain"):
        SequenceLitModule(NoAux(), DataSpec("real", 2, "sequence", 2), ADAM, aux_weight=Constant(1.0))


def test_nonfinite_losses_are_skipped_counted_and_stop_the_run() -> None:
    lit, batch = fixed_module(max_consecutive_nonfinite=3)
    lit.model.terms.nll[0, 0] = float("nan")
    lit.log = lambda *a, **k: None  # no trainer attached in this unit test
    assert lit.training_step(batch, 0) is None
    assert lit.training_step(batch, 1) is None
    assert (lit.nonfinite_total, lit.nonfinite_streak) == (2, 2)
    with pytest.raises(FloatingPointError, match="3 consecutive updates"):
        lit.training_step(batch, 2)


def test_finite_step_resets_the_streak_and_returns_a_differentiable_loss() -> None:
    model = make_model("real")
    lit = SequenceLitModule(model, model.spec, ADAM, aux_weight=Constant(1.0))
    lit.log = lambda *a, **k: None
    lit.nonfinite_streak = 5
    loss = lit.training_step(make_batch("real"), 0)
    assert loss is not None and loss.requires_grad and torch.isfinite(loss)
    assert lit.nonfinite_streak == 0
