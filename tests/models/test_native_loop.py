"""The C++ step loops (``zf_lightning.models.zforcing.native``) against the Python ones.

Both run the same buffers through the same ATen kernels and products in the same order, so the
terms and every gradient must be equal bit for bit, for every model option that reaches the
plain recurrence. These tests build the extension on first use (tens of seconds on a cold
cache, then cached) and are marked ``native``; without a C++ compiler or ninja they are skipped.
The fallback (no build: the Python loops, one log line) is tested without building anything.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.helpers import assert_second_backward_doubles, make_batch, make_model
from zf_lightning.models import heads
from zf_lightning.models.zforcing import model as zforcing_model
from zf_lightning.models.zforcing import native
from zf_lightning.models.zforcing.model import NATIVE_LOOP_DEFAULT, ZForcing
from zf_lightning.models.zforcing.recurrence import plain_recurrence, step_ops
from zf_lightning.types import DataSpec, SequenceBatch, StepTerms

TERMS = ("nll", "kl", "aux", "bwd", "log_p_z", "log_q_z")
ODD = {"emb_dim": 5, "rnn_dim": 9, "z_dim": 4, "mlp_dim": 6}
WEIGHTS = {"kl": 0.3, "aux": 0.7, "bwd": 1.9, "iw": 0.5}


def _can_build() -> bool:
    from torch.utils.cpp_extension import is_ninja_available

    return shutil.which(os.environ.get("CXX", "c++")) is not None and is_ninja_available()


needs_build = pytest.mark.skipif(not _can_build(), reason="no C++ compiler or ninja to build the native loop")


@pytest.fixture(scope="module")
def ops() -> object:
    """The built extension; a failed build fails the test (a compiler is there, so it should build)."""
    loops = native.native_loops()
    assert loops is not None, "the native loop did not build (see the log)"
    return loops


def _loss(terms: StepTerms, mask: Tensor) -> Tensor:
    per_step = terms.nll + WEIGHTS["kl"] * terms.kl + WEIGHTS["aux"] * terms.aux + WEIGHTS["bwd"] * terms.bwd
    per_step = per_step + WEIGHTS["iw"] * (terms.log_q_z - terms.log_p_z)
    return (per_step * mask).sum(1).mean()


def _run(model: ZForcing, batch: SequenceBatch, noise: Tensor, use_native: bool, seed: int = 0
         ) -> tuple[list[Tensor], list[Tensor | None]]:
    """Terms and every parameter gradient of the weighted loss, with the native loop on or off."""
    model.native_loop = use_native
    torch.manual_seed(seed)  # dropout draws the same masks in both runs
    terms = model(batch, noise)
    params = list(model.parameters())
    grads = torch.autograd.grad(_loss(terms, batch.mask), params, allow_unused=True)
    return [getattr(terms, name) for name in TERMS], list(grads)


def _assert_identical(model: ZForcing, batch: SequenceBatch, noise: Tensor) -> None:
    py_terms, py_grads = _run(model, batch, noise, use_native=False)
    nat_terms, nat_grads = _run(model, batch, noise, use_native=True)
    for name, a, b in zip(TERMS, py_terms, nat_terms, strict=True):
        assert torch.equal(a, b), name
    names = [n for n, _ in model.named_parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in py_grads) >= len(names) - 2  # gradients flow
    for name, a, b in zip(names, py_grads, nat_grads, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


def _ragged(batch: SequenceBatch, lengths: list[int]) -> SequenceBatch:
    mask = (torch.arange(batch.mask.shape[1]).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    return SequenceBatch(batch.inputs, batch.targets, mask, batch.labels)


# every head kind, both aux inputs, both aux losses and reductions, and the posterior's output
# clamp off, default and tight enough to bind
OPTIONS = [
    ("real", {"aux_input": "h_z", "aux_loss": "gaussian", "aux_reduction": "sum"}, 8.0),
    ("real", {"aux_input": "z", "aux_loss": "l2", "aux_reduction": "mean"}, None),
    ("binary", {"aux_input": "z", "aux_loss": "gaussian", "aux_reduction": "mean"}, 0.3),
    ("binary", {"aux_input": "h_z", "aux_loss": "l2", "aux_reduction": "sum"}, 8.0),
    ("tokens", {"aux_input": "h_z", "aux_loss": "gaussian", "aux_reduction": "sum"}, 0.3),
    ("tokens", {"aux_input": "z", "aux_loss": "l2", "aux_reduction": "sum", "dropout": 0.3}, None),
]


@needs_build
@pytest.mark.native
@pytest.mark.parametrize(("kind", "options", "clamp"), OPTIONS)
def test_native_loop_equals_the_python_loop_bit_for_bit(ops: object, kind: str, options: dict, clamp: float | None
                                                       ) -> None:
    model = make_model(kind, **options, **ODD)
    model.posterior.clamp = clamp
    batch = _ragged(make_batch(kind, B=4, T=6, seed=3), [6, 1, 3, 5])
    noise = 3 * torch.randn(4, 6, model.z_dim, generator=torch.Generator().manual_seed(4))
    _assert_identical(model, batch, noise)
    if clamp == 0.3:  # the clamp binds somewhere, so its mask is exercised
        model.native_loop = True
        assert (model.infer(batch, noise).mean_q.abs() == clamp).any()


@needs_build
@pytest.mark.native
def test_native_loop_equals_the_python_loop_for_the_gmm_head_one_step_and_float64(ops: object) -> None:
    torch.manual_seed(7)
    model = ZForcing(DataSpec("real", 3, "sequence", 3), heads.GMMHead, **ODD)
    _assert_identical(model, _ragged(make_batch("real", B=3, T=5, D=3, seed=8), [5, 2, 4]), torch.randn(3, 5, 4))
    one = make_batch("real", B=2, T=1, ragged=False, seed=6)
    model = make_model("real", **ODD)
    py_terms, _ = _run(model, one, torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1)), False)
    nat_terms, _ = _run(model, one, torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1)), True)
    assert all(torch.equal(a, b) for a, b in zip(py_terms, nat_terms, strict=True))
    model = make_model("real", **ODD).double()
    batch = make_batch("real", seed=9)
    batch = SequenceBatch(batch.inputs.double(), batch.targets.double(), batch.mask.double(), batch.labels)
    _assert_identical(model, batch, torch.randn(3, 7, 4, dtype=torch.float64))


@needs_build
@pytest.mark.native
def test_native_loop_in_evaluation_equals_the_python_loop_and_the_training_terms(ops: object) -> None:
    model = make_model("binary", **ODD)
    batch = make_batch("binary", seed=9)
    noise = torch.randn(3, 7, model.z_dim)
    with torch.no_grad():  # the backward-only buffers hold one step
        model.native_loop = False
        py = model(batch, noise)
        model.native_loop = True
        nat = model(batch, noise)
    trained = model(batch, noise)
    for name in TERMS:
        assert torch.equal(getattr(py, name), getattr(nat, name)), name
        torch.testing.assert_close(getattr(nat, name), getattr(trained, name).detach(), msg=name)


@needs_build
@pytest.mark.native
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_native_recurrence_passes_gradcheck(ops: object, clamp: float | None) -> None:
    """Finite differences in float64 against the hand-written backward run by the native loop."""
    g = torch.Generator().manual_seed(2)
    H, M, Z, T, B = 3, 4, 2, 4, 2

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    pre, w_h = rand(4 * H + M, T, B, scale=4.0), rand(4 * H + M, H, scale=0.7)
    w_post, b_post, w_z = rand(2 * Z, M), rand(2 * Z), rand(4 * H, Z, scale=0.7)
    noise = torch.randn(T, Z, B, generator=g, dtype=torch.float64)

    def run(*args: Tensor) -> tuple[Tensor, ...]:
        return plain_recurrence(*args[:1], noise, *args[1:], step_ops(False), 1.0 / 3.0, 3.0, clamp, ops)

    assert torch.autograd.gradcheck(run, (pre, w_h, w_post, b_post, w_z))
    python = plain_recurrence(pre, noise, w_h, w_post, b_post, w_z, step_ops(False), 1.0 / 3.0, 3.0, clamp)
    for a, b in zip(run(pre, w_h, w_post, b_post, w_z), python, strict=True):
        assert torch.equal(a, b)


@needs_build
@pytest.mark.native
def test_native_loop_backward_twice_through_a_retained_graph_doubles_the_gradients(ops: object) -> None:
    model = make_model("real", native_loop=True, **ODD)
    batch = make_batch("real")
    loss = _loss(model(batch, torch.randn(3, 7, model.z_dim)), batch.mask)
    assert_second_backward_doubles(model, loss)


def test_a_failed_build_logs_once_and_the_model_runs_the_python_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})

    def no_compiler(path: Path, verbose: bool) -> None:
        raise RuntimeError("Error building extension 'zf_native_loop'\nc++: not found")

    monkeypatch.setattr(native, "_build", no_compiler)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.native_loops() is None
        assert native.native_loops() is None  # not retried, not logged again
    assert [r.getMessage() for r in caplog.records] == [
        "native Z-Forcing loop unavailable, using the Python loop (RuntimeError: c++: not found)"
    ]
    model = make_model("real", native_loop=True, **ODD)
    batch = make_batch("real")
    noise = torch.randn(3, 7, model.z_dim)
    terms = model(batch, noise)
    model.native_loop = False
    for name in TERMS:
        assert torch.equal(getattr(terms, name), getattr(model(batch, noise), name)), name


def test_the_native_loop_is_not_built_when_off_nor_for_cln_or_compiled_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def never() -> None:
        raise AssertionError("native_loops called")

    monkeypatch.setattr(zforcing_model, "native_loops", never)
    batch = make_batch("real")
    for options in ({"native_loop": False}, {"cond_layer_norm": True}, {"compile_step": "aot_eager"}):
        model = make_model("real", **options, **ODD)
        model(batch, torch.randn(3, 7, model.z_dim)).nll.sum().backward()


def test_native_loop_default_is_the_config_default_and_adds_no_state() -> None:
    from omegaconf import OmegaConf

    from zf_lightning.conf import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "model" / "zforcing.yaml")
    assert cfg.native_loop is NATIVE_LOOP_DEFAULT
    assert make_model("real").native_loop is NATIVE_LOOP_DEFAULT
    on, off = make_model("real", native_loop=True), make_model("real", native_loop=False)
    assert on.state_dict().keys() == off.state_dict().keys()  # checkpoints load either way
    off.load_state_dict(on.state_dict(), strict=True)


@needs_build
@pytest.mark.native
def test_native_loop_under_autocast_equals_the_python_loop_and_bf16_weights_keep_python(ops: object) -> None:
    model = make_model("real", **ODD)
    batch = make_batch("real", seed=13)
    noise = torch.randn(3, 7, model.z_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the recurrence runs in fp32 either way
        assert model._native(torch.ones(1, dtype=torch.bfloat16)) is ops
        _assert_identical(model, batch, noise)
    half = make_model("real", **ODD).to(torch.bfloat16)
    assert half._native(torch.ones(1, dtype=torch.bfloat16)) is None  # the C++ loops are float and double only


@needs_build
@pytest.mark.native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("joint", [False, True])
def test_gaussian_kernels_equal_the_python_gaussian_nll(
    ops: object, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, joint: bool
) -> None:
    """The C++ Gaussian terms and gradients equal the Python ones bit for bit, on strided views of a
    wider product (as the heads read them) and with a gradient for x (as the log-densities of z)."""
    from zf_lightning.models import distributions

    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 6, generator=g, dtype=dtype, requires_grad=not joint)
    base = (2 * torch.randn(3, 7, 15, generator=g, dtype=dtype)).requires_grad_()
    params = base[:, 1:6, 2:14]  # strides along both leading dimensions differ from a dense tensor's
    grad = torch.randn(3, 5, generator=g, dtype=dtype)
    inputs = (base,) if joint else (x, base)

    def run() -> tuple[Tensor, ...]:
        if joint:
            out = distributions.gaussian_nll_params(x, params)
        else:
            out = distributions.gaussian_nll(x, *params.chunk(2, dim=-1))
        return (out, *torch.autograd.grad(out, inputs, grad))

    used: list[bool] = []
    real = distributions._native

    def spy(*args: Tensor) -> object:
        found = real(*args)
        used.append(found is not None)
        return found

    monkeypatch.setattr(distributions, "_native", spy)
    native_out = run()
    assert used == [True]  # the kernels ran
    monkeypatch.setattr(distributions, "_native", lambda *args: None)
    python_out = run()
    for a, b in zip(native_out, python_out, strict=True):
        assert torch.equal(a, b)
