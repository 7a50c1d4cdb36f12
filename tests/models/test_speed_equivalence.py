"""The fast Z-Forcing path against the step-by-step reference and against checkpoints written
before the speed work: same terms, same gradients, same parameter names and shapes.

``tests/models/test_zforcing.py`` already holds fast == reference (terms and gradients of the unit-weight
loss) for head x CLN x aux variants on one batch; this file covers what that test does not: stored
pre-change checkpoints, the weighted training loss with the bwd cost and the importance-weight
terms, other raggedness (unmasked, one-step sequences), sizes where every width differs, the GMM
head, the optional compiled step, evaluation without gradients and the deferred-gradient linear map.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers import assert_second_backward_doubles, make_batch, make_model
from zf_lightning.models import heads
from zf_lightning.models.zforcing.cell import LoopLinear
from zf_lightning.models.zforcing.model import ZForcing
from zf_lightning.models.zforcing.recurrence import lstm_into, step_ops
from zf_lightning.models.zforcing.reference import reference_forward
from zf_lightning.types import DataSpec, SequenceBatch, StepTerms

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "zforcing_small.pt"
TERMS = ("nll", "kl", "aux", "bwd", "log_p_z", "log_q_z")
# sizes where emb, rnn, z and mlp all differ, so a transposed or misplaced block cannot pass
ODD = {"emb_dim": 5, "rnn_dim": 9, "z_dim": 4, "mlp_dim": 6}


def _fixture() -> dict[str, dict]:
    return torch.load(FIXTURE, weights_only=True)


def _ragged(batch: SequenceBatch, lengths: list[int]) -> SequenceBatch:
    mask = (torch.arange(batch.mask.shape[1]).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    return SequenceBatch(batch.inputs, batch.targets, mask, batch.labels)


def _loss(terms: StepTerms, mask: Tensor, w: dict[str, float]) -> Tensor:
    """The LightningModule's weighted loss plus the importance-weight terms (every path gets gradient)."""
    per_step = terms.nll + w["kl"] * terms.kl + w["aux"] * terms.aux + w["bwd"] * terms.bwd
    per_step = per_step + w["iw"] * (terms.log_q_z - terms.log_p_z)
    return (per_step * mask).sum(1).mean()


def _assert_same_loss_and_grads(
    model: ZForcing, batch: SequenceBatch, noise: Tensor, w: dict[str, float], untrained: int = 2
) -> None:
    """Terms, loss and every parameter gradient equal; at most ``untrained`` parameters get none."""
    params = [p for p in model.parameters() if p.requires_grad]
    fast_terms = model(batch, noise)
    fast = torch.autograd.grad(_loss(fast_terms, batch.mask, w), params, allow_unused=True)
    ref_terms = reference_forward(model, batch, noise)
    ref = torch.autograd.grad(_loss(ref_terms, batch.mask, w), params, allow_unused=True)
    for name in TERMS:
        torch.testing.assert_close(getattr(fast_terms, name), getattr(ref_terms, name), atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(_loss(fast_terms, batch.mask, w), _loss(ref_terms, batch.mask, w), atol=1e-5, rtol=1e-5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    trained = 0
    for name, gf, gr in zip(names, fast, ref, strict=True):
        if gr is None or torch.count_nonzero(gr) == 0:
            assert gf is None or torch.count_nonzero(gf) == 0, name
            continue
        trained += 1
        torch.testing.assert_close(gf, gr, atol=1e-5, rtol=1e-4, msg=name)
    assert trained >= len(names) - untrained, "parameters without a gradient"  # so the test can fail



@pytest.mark.parametrize("name", sorted(_fixture()))
def test_checkpoint_from_before_the_speed_work_loads_and_gives_the_same_terms(name: str) -> None:
    entry = _fixture()[name]
    model = make_model(entry["kind"], seed=1234, **entry["options"])  # other init: the state dict must win
    model.load_state_dict(entry["state_dict"], strict=True)  # same names and shapes
    batch = SequenceBatch(**entry["batch"])
    with torch.no_grad():
        terms = model(batch, entry["noise"])
    grad_terms = model(batch, entry["noise"])  # the training path (deferred gradients) computes the same
    for term in TERMS:
        torch.testing.assert_close(getattr(terms, term), entry["terms"][term], atol=1e-5, rtol=1e-5, msg=term)
        torch.testing.assert_close(getattr(grad_terms, term), entry["terms"][term], atol=1e-5, rtol=1e-5, msg=term)
    assert (entry["terms"]["kl"][batch.mask > 0] > 0).all()  # the stored terms are not trivial


WEIGHTS = {"kl": 0.3, "aux": 0.7, "bwd": 1.9, "iw": 0.5}
# every head with and without CLN; both aux inputs for each CLN mode
LOSS_VARIANTS = [
    ("real", False, "h_z"),
    ("real", True, "z"),
    ("binary", False, "z"),
    ("binary", True, "h_z"),
    ("tokens", False, "h_z"),
    ("tokens", True, "z"),
]


@pytest.mark.parametrize(("kind", "cln", "aux_input"), LOSS_VARIANTS)
def test_weighted_loss_and_every_gradient_match_the_reference(kind: str, cln: bool, aux_input: str) -> None:
    model = make_model(kind, cond_layer_norm=cln, aux_input=aux_input, aux_loss="l2" if cln else "gaussian", **ODD)
    batch = _ragged(make_batch(kind, B=4, T=6, seed=3), [6, 1, 3, 5])
    noise = torch.randn(4, 6, model.z_dim, generator=torch.Generator().manual_seed(4))
    _assert_same_loss_and_grads(model, batch, noise, WEIGHTS)


@pytest.mark.parametrize("cln", [False, True])
def test_unmasked_and_single_step_batches_match_the_reference(cln: bool) -> None:
    model = make_model("real", cond_layer_norm=cln, **ODD)
    full = make_batch("real", B=2, T=5, ragged=False, seed=5)
    _assert_same_loss_and_grads(model, full, torch.randn(2, 5, model.z_dim), WEIGHTS)
    one = make_batch("real", B=2, T=1, ragged=False, seed=6)
    # one step: h_0 = 0 and b_0 reads one frame, so recurrent weights and the prior's first layer
    # get no gradient in either implementation
    _assert_same_loss_and_grads(model, one, torch.randn(2, 1, model.z_dim), WEIGHTS, untrained=6)


@pytest.mark.parametrize("cln", [False, True])
def test_gmm_head_matches_the_reference(cln: bool) -> None:
    torch.manual_seed(7)
    spec = DataSpec("real", 3, "sequence", 3)
    model = ZForcing(spec, heads.GMMHead, cond_layer_norm=cln, **ODD)
    batch = _ragged(make_batch("real", B=3, T=5, D=3, seed=8), [5, 2, 4])
    _assert_same_loss_and_grads(model, batch, torch.randn(3, 5, model.z_dim), WEIGHTS)


def test_compiled_step_is_off_by_default() -> None:
    model = make_model("real")
    assert model.compile_step is False
    assert model._ops == step_ops(False)
    assert model._ops.cell is lstm_into  # eager functions, nothing compiled


@pytest.mark.parametrize("cln", [False, True])
def test_compiled_step_matches_the_reference(cln: bool) -> None:
    """Dynamo + AOTAutograd capture of the step functions (aot_eager: the compiled path without codegen)."""
    model = make_model("real", cond_layer_norm=cln, compile_step="aot_eager", **ODD)
    batch = _ragged(make_batch("real", B=3, T=5, seed=11), [5, 3, 1])
    _assert_same_loss_and_grads(model, batch, torch.randn(3, 5, model.z_dim), WEIGHTS)


@pytest.mark.slow
def test_inductor_compiled_step_matches_the_reference() -> None:
    """The real compiled path (C++/Triton code generation); slow: about a minute of compiling on a CPU."""
    model = make_model("binary", cond_layer_norm=False, compile_step=True, **ODD)
    batch = make_batch("binary", seed=12)
    _assert_same_loss_and_grads(model, batch, torch.randn(3, 7, model.z_dim), WEIGHTS)


def test_evaluation_without_gradients_gives_the_training_terms() -> None:
    for cln in (False, True):
        model = make_model("binary", cond_layer_norm=cln, **ODD)
        batch = make_batch("binary", seed=9)
        noise = torch.randn(3, 7, model.z_dim)
        with torch.no_grad():
            evaluated = model(batch, noise)
        trained = model(batch, noise)
        for name in TERMS:
            torch.testing.assert_close(getattr(evaluated, name), getattr(trained, name).detach(), msg=name)


def test_backward_twice_through_a_retained_graph_doubles_the_gradients() -> None:
    model = make_model("real", **ODD)
    batch = make_batch("real")
    loss = _loss(model(batch, torch.randn(3, 7, model.z_dim)), batch.mask, WEIGHTS)
    assert_second_backward_doubles(model, loss)


def test_loop_linear_matches_f_linear_with_bias_base_and_unused_steps() -> None:
    """Deferred weight gradients equal autograd's per-step ones, also when some steps get no gradient."""
    g = torch.Generator().manual_seed(10)
    w = torch.randn(5, 3, generator=g, requires_grad=True)
    bias = torch.randn(5, generator=g, requires_grad=True)
    w2 = torch.randn(5, 5, generator=g, requires_grad=True)
    xs = [torch.randn(4, 3, generator=g, requires_grad=True) for _ in range(4)]
    bases = [torch.randn(4, 5, generator=g, requires_grad=True) for _ in range(4)]

    def run(deferred: bool) -> list[Tensor]:
        lin = LoopLinear(w, bias) if deferred else None
        lin2 = LoopLinear(w2) if deferred else None
        outs = []
        for t, (x, base) in enumerate(zip(xs, bases, strict=True)):
            y = lin.step(x) if lin else F.linear(x, w, bias)
            y2 = lin2.step(y.tanh(), base) if lin2 else base + F.linear(y.tanh(), w2)
            if t != 2:  # step 2 does not reach the loss
                outs.append((y2 * (t + 1)).sin().sum())
        return torch.autograd.grad(sum(outs), [w, bias, w2, *xs, *bases], allow_unused=True)

    for name, got, want in zip(["w", "bias", "w2", *"xxxx", *"bbbb"], run(True), run(False), strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0, name
        else:
            torch.testing.assert_close(got, want, msg=name)
    with pytest.raises(ValueError, match="own bias"):
        LoopLinear(w, bias).step(xs[0], bases[0])
