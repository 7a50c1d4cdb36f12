"""The SIRE regularizer (issue 16): zero for an order-free recurrence, positive otherwise, with
gradients to the recurrence's weights; its configuration errors and the refusal of models it
cannot regularize; and a short run that logs it and reports accuracy per test size and the flip
rate."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from tests.helpers import make_model
from zf_lightning.lit import SIRE, SequenceLitModule
from zf_lightning.models import LRU, RNN, CategoricalHead, DeepSets, Transformer
from zf_lightning.runs.pipeline import build_datamodule, build_module, train
from zf_lightning.types import IGNORE_TARGET, DataSpec, SequenceBatch

SPEC = DataSpec("tokens", 6, "label", 1, classes=2, sets=True)


def set_batch(lengths: list[int], seed: int = 0) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    inputs = torch.randint(0, 6, (len(lengths), T), generator=g)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).float()
    targets = torch.full_like(inputs, IGNORE_TARGET)
    targets[torch.arange(len(lengths)), torch.tensor(lengths) - 1] = 1
    return SequenceBatch(inputs, targets, mask)


BATCH = set_batch([7, 4, 2, 7, 5, 1, 6, 3])


@pytest.mark.parametrize("pair_source", ["same_set", "batch"])
def test_penalty_is_zero_for_a_recurrence_that_adds_embeddings(pair_source: str) -> None:
    # DeepSets' state is the running sum of the elements' features: exactly order-free (in float64
    # the two orders differ by rounding only)
    torch.manual_seed(0)
    model = DeepSets(SPEC, CategoricalHead, emb_dim=8, hidden=16).double()
    penalty = SIRE(states_per_batch=4, pairs_per_state=3, pair_source=pair_source)(model, BATCH)
    assert 0.0 <= float(penalty.detach()) < 1e-20


@pytest.mark.parametrize("build", [lambda: RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16),
                                   lambda: LRU(SPEC, CategoricalHead, d_model=8, layers=1)], ids=["lstm", "lru"])
def test_penalty_is_positive_for_an_order_sensitive_recurrence(build: Callable[[], torch.nn.Module]) -> None:
    torch.manual_seed(0)
    penalty = SIRE(states_per_batch=4, pairs_per_state=3)(build(), BATCH)
    assert float(penalty) > 1e-4


def test_comparing_the_output_part_of_an_lstms_state_compares_h_alone() -> None:
    """compare=output: the h of (h, c), what the output head reads; the h+c penalty adds the
    c part's gap to the same draws (same seed: the same states and pairs)."""
    torch.manual_seed(0)
    model = RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16)
    penalties = {}
    for compare in ("state", "output"):
        torch.manual_seed(1)
        penalties[compare] = float(SIRE(states_per_batch=4, pairs_per_state=3, compare=compare)(model, BATCH))
    assert 0 < penalties["output"] < penalties["state"]
    state = model.step(BATCH.inputs[:, 0], None)[1]
    assert torch.equal(model.output_vector(state), state[0][-1])
    assert torch.equal(model.state_vector(state), torch.cat([state[0][-1], state[1][-1]], -1))


def test_gradient_reaches_the_recurrence_and_descent_lowers_the_penalty() -> None:
    torch.manual_seed(0)
    model = RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16)
    sire = SIRE(states_per_batch=3, pairs_per_state=2)
    sire(model, BATCH).backward()
    for name in ("weight_hh_l0", "weight_ih_l0"):
        grad = getattr(model.rnn, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.embedding.proj.weight.grad.abs().sum() > 0
    assert model.output_head.proj.weight.grad is None  # the head does not enter the state
    # minimizing the penalty alone makes the LSTM more order-free on these states
    torch.manual_seed(1)
    before = float(SIRE(states_per_batch=8, pairs_per_state=8)(model, BATCH))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        sire(model, BATCH).backward()
        optimizer.step()
    torch.manual_seed(1)
    assert float(SIRE(states_per_batch=8, pairs_per_state=8)(model, BATCH)) < 0.5 * before


def test_same_set_pairs_come_from_the_state_s_own_set() -> None:
    # each sequence holds one repeated value: same-set pairs are (a, a), so even an LSTM's penalty is 0
    inputs = torch.arange(4).unsqueeze(1).expand(4, 5).contiguous()
    batch = SequenceBatch(inputs, torch.full_like(inputs, IGNORE_TARGET), torch.ones(4, 5))
    torch.manual_seed(0)
    model = RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16)
    assert float(SIRE(states_per_batch=3, pair_source="same_set")(model, batch)) == 0.0
    assert float(SIRE(states_per_batch=3, pairs_per_state=4, pair_source="batch")(model, batch)) > 0.0


@pytest.mark.parametrize(("kwargs", "key"), [({"states_per_batch": 0}, "regularizer.states_per_batch"),
                                             ({"pairs_per_state": 0}, "regularizer.pairs_per_state"),
                                             ({"pair_source": "dataset"}, "regularizer.pair_source"),
                                             ({"latent_path": "posterior"}, "regularizer.latent_path"),
                                             ({"compare": "c"}, "regularizer.compare")])
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SIRE(**kwargs)


def test_models_without_a_deterministic_step_are_refused() -> None:
    adam = lambda params: torch.optim.Adam(params)  # noqa: E731
    transformer = Transformer(SPEC, CategoricalHead, d_model=8, layers=1, heads=2)
    with pytest.raises(ValueError, match=r"regularizer=sire needs a model with a deterministic step function.*"
                                         r"Transformer.*no single-step function"):
        SequenceLitModule(transformer, SPEC, adam, regularizer=SIRE())
    zforcing = make_model("real", D=4)
    with pytest.raises(ValueError, match=r"ZForcing.*samples z_t.*regularizer\.latent_path=prior_mean"):
        SequenceLitModule(zforcing, DataSpec("real", 4, "sequence", 4), adam, regularizer=SIRE())


def test_zforcing_is_regularized_along_its_prior_mean_path() -> None:
    from zf_lightning.models import ZForcing

    torch.manual_seed(0)
    model = ZForcing(SPEC, CategoricalHead, emb_dim=8, rnn_dim=8, z_dim=3, mlp_dim=8)
    sire = SIRE(latent_path="prior_mean")
    SequenceLitModule(model, SPEC, lambda params: torch.optim.Adam(params), regularizer=sire)  # accepted
    penalty = sire(model, BATCH)
    assert float(penalty) > 0
    # the path is deterministic (z_t is the prior mean): the same step from the same state twice,
    # without reseeding, gives the same state, while the model's own step samples z_t
    path = model.mean_path()
    state = path.initial_state(8)
    assert torch.equal(path.step(BATCH.inputs[:, 0], state)[1][0], path.step(BATCH.inputs[:, 0], state)[1][0])
    assert not torch.equal(model.step(BATCH.inputs[:, 0], state)[1][0], model.step(BATCH.inputs[:, 0], state)[1][0])
    # the step reads z_t = mean of p(z_t | h_{t-1}) from the model's own prior
    _, (h, c) = path.step(BATCH.inputs[:, 0], state)
    _, (h_mean, c_mean) = model.step(BATCH.inputs[:, 0], state, z=model.prior(state[0])[0])
    assert torch.equal(h, h_mean) and torch.equal(c, c_mean) and path.state_vector((h, c)).shape == (8, 16)
    # its gradient reaches the forward recurrence and the prior, not the posterior's networks
    penalty.backward()
    assert float(model.cell.weight_hh.grad.abs().sum()) > 0
    assert any(float(p.grad.abs().sum()) > 0 for p in model.prior.parameters() if p.grad is not None)
    assert all(p.grad is None for p in model.backward_rnn.parameters())


def test_a_model_with_dropout_is_refused() -> None:
    adam = lambda params: torch.optim.Adam(params)  # noqa: E731
    lstm = RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16, dropout=0.1)
    with pytest.raises(ValueError, match=r"RNN has dropout \(Dropout\(p=0.1\)\).*model.dropout=0"):
        SequenceLitModule(lstm, SPEC, adam, regularizer=SIRE())
    SequenceLitModule(RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=16), SPEC, adam, regularizer=SIRE())


def test_the_config_refuses_a_transformer(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("data=set_parity", "model=transformer", "regularizer=sire", tiny=False)
    with pytest.raises(InstantiationException, match="regularizer=sire needs a model"):
        build_module(cfg, build_datamodule(cfg))


def test_the_weight_is_a_schedule_and_zero_skips_the_penalty() -> None:
    calls = []

    class Counting(SIRE):
        def __call__(self, model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
            calls.append(1)
            return super().__call__(model, batch)

    from zf_lightning.lit import LinearRamp

    torch.manual_seed(0)
    lit = SequenceLitModule(RNN(SPEC, CategoricalHead, emb_dim=8, rnn_dim=8), SPEC,
                            lambda p: torch.optim.Adam(p), regularizer=Counting(),
                            regularizer_weight=LinearRamp(start=0.0, increment=0.5, end=1.0))
    loss, _ = lit.objective(BATCH, lit.weights(0))
    assert torch.equal(lit._regularize(loss, BATCH), loss) and not calls  # weight 0 at update 0
    assert lit.regularizer_weight(1) == 0.5 and lit.regularizer_weight(5) == 1.0


def test_a_short_run_logs_sire_and_reports_every_test_size(compose_train: Callable[..., DictConfig],
                                                           tmp_path: Path) -> None:
    cfg = compose_train("data=set_parity", "model=rnn", "regularizer=sire", "trainer.max_steps=20",
                        "data.num_val=50", "data.num_test=50", "data.batch_size=32", "samples.num=0",
                        "trainer.log_every_n_steps=5", tiny=False)
    cfg.trainer.enable_progress_bar = False
    cfg.logger = compose_train("logger=csv").logger
    cfg.model.emb_dim, cfg.model.rnn_dim = 8, 16
    metrics = train(cfg)
    for size in (10, 25, 50, 100):
        assert 0.0 <= metrics[f"test/acc_len{size}"] <= 1.0
    assert 0.0 <= metrics["test/perm_flip_rate"] <= 1.0
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text())["test/perm_flip_rate"] == metrics["test/perm_flip_rate"]
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    sire = [float(r["train/sire"]) for r in rows if r.get("train/sire")]
    assert sire and all(v >= 0 for v in sire) and any(v > 0 for v in sire)
    assert {float(r["train/w_sire"]) for r in rows if r.get("train/w_sire")} == {1.0}
