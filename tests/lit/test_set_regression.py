"""A set's sum as regression (issue 16: "classification over the possible sums, or regression
with the Gaussian head: a config choice"): real-valued labels at the last step only, the
Gaussian head's zero score elsewhere with finite gradients, the predictions that never read the
label, and the flip rate and spread of an invariant and of an order-sensitive model."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tests.helpers import load_script
from zf_lightning.data.synthetic import ClassificationDataModule, MnistSum, MnistSumDataModule, SetMax, SetSum
from zf_lightning.lit.invariance import permutation_spread
from zf_lightning.models import RNN, DeepSets, GaussianHead, ZForcing
from zf_lightning.models.heads import label_nll
from zf_lightning.runs.pipeline import compose_config, train
from zf_lightning.types import IGNORE_VALUE, DataSpec, PredictsValues, SequenceBatch

SPEC = DataSpec("tokens", 10, "label", 1, sets=True, regression=True)


def regression_module(**options: object) -> ClassificationDataModule:
    dm = ClassificationDataModule(SetSum(values=10, regression=True), length=6, min_length=1,
                                  test_lengths=[6, 20], num_val=40, num_test=30, batch_size=8, **options)
    dm.setup()
    return dm


def value_batch(lengths: list[int], seed: int = 0, distinct: bool = False) -> SequenceBatch:
    """Sets of the given sizes labelled with their sums at the last real step, NaN elsewhere."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    if distinct:
        inputs = torch.stack([torch.randperm(10, generator=g)[:T] for _ in lengths])
    else:
        inputs = torch.randint(0, 10, (len(lengths), T), generator=g)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).float()
    targets = torch.full((len(lengths), T, 1), IGNORE_VALUE)
    for row, n in enumerate(lengths):
        targets[row, n - 1, 0] = float(inputs[row, :n].sum())
    return SequenceBatch(inputs, targets, mask, sizes=torch.tensor(lengths))


def test_the_regression_label_is_the_plain_sum_at_the_last_step_only() -> None:
    dm = regression_module()
    assert dm.spec.regression and dm.spec.classes is None and dm.spec.output_dim == 1
    assert dm.spec.output_kind == "real"
    batch = next(iter(dm.test_dataloader()))
    assert batch.targets.dtype == torch.float32 and batch.targets.shape == (*batch.mask.shape, 1)
    lengths = batch.lengths
    rows = torch.arange(batch.batch_size)
    torch.testing.assert_close(batch.targets[rows, lengths - 1, 0],
                               torch.stack([batch.inputs[r, :n].sum() for r, n in enumerate(lengths)]).float())
    # every other real step carries no value, and only the labelled step is scored
    assert torch.equal(batch.scored.sum(1), torch.ones(batch.batch_size))
    assert torch.equal(batch.scored[rows, lengths - 1], torch.ones(batch.batch_size))
    assert torch.isnan(batch.targets[batch.mask == 0]).all()  # padding is no label of 0 either
    assert int(torch.isnan(batch.targets[..., 0]).logical_and(batch.mask > 0).sum()) == int(lengths.sum()) - len(rows)
    # sums above every training sum really occur in the test (sizes 20 > training sizes <= 6)
    assert float(batch.targets[rows, lengths - 1, 0].max()) > 9 * 6 or any(
        float(label) > 54 for _, label, _ in dm.eval_sets()["test"])


def test_regression_is_on_the_plain_sum_and_mnist_sum_has_it_too() -> None:
    with pytest.raises(ValueError, match=r"regression=true predicts the plain sum.*data\.task\.modulus=null"):
        SetSum(values=10, modulus=10, regression=True)
    # regression has no classes to run out of: a test size beyond max_size is allowed
    ClassificationDataModule(SetSum(values=10, max_size=10, regression=True), length=5, test_lengths=[50])
    dm = MnistSumDataModule(partial(MnistSum, max_size=100, regression=True), length=3, test_lengths=[5], num_val=10,
                            num_test=10)
    dm.setup()
    assert dm.spec.regression and dm.spec.classes is None and dm.spec.kind == "real"
    batch = next(iter(dm.test_dataloader()))
    last = batch.lengths - 1
    assert torch.all(batch.targets[torch.arange(batch.batch_size), last, 0] >= 0)
    assert torch.equal(batch.scored.sum(1), torch.ones(batch.batch_size))


def test_unlabelled_steps_score_zero_with_finite_gradients_but_only_for_regression() -> None:
    torch.manual_seed(0)
    head = GaussianHead(4, 1)
    h = torch.randn(3, 5, 4, requires_grad=True)
    target = torch.full((3, 5, 1), IGNORE_VALUE)
    target[:, -1, 0] = torch.tensor([2.0, 7.0, 11.0])
    # elsewhere a NaN target is bad data: the score stays NaN, so the objective's guard trips
    assert torch.isnan(label_nll(head, head(h), target, DataSpec("real", 1, "sequence", 1))[:, :-1]).all()
    nll = label_nll(head, head(h), target, SPEC)
    assert torch.equal(nll[:, :-1], torch.zeros(3, 4)) and torch.all(nll[:, -1] > 0)
    nll.sum().backward()
    assert torch.isfinite(h.grad).all() and torch.equal(h.grad[:, :-1], torch.zeros(3, 4, 4))
    # the labelled step's score is the plain Gaussian -log density
    mean, logvar = head(h)[:, -1].detach().chunk(2, -1)
    expected = 0.5 * (math.log(2 * math.pi) + logvar + (target[:, -1] - mean) ** 2 / logvar.exp())
    torch.testing.assert_close(nll[:, -1].detach(), expected[:, 0])


def test_the_loss_counts_only_the_label_and_predictions_do_not_read_it() -> None:
    torch.manual_seed(0)
    batch = value_batch([4, 2, 5])
    relabelled = SequenceBatch(batch.inputs, torch.where(torch.isnan(batch.targets), batch.targets,
                                                         batch.targets + 3.0), batch.mask)
    for model in (RNN(SPEC, GaussianHead, emb_dim=8, rnn_dim=8),
                  ZForcing(SPEC, GaussianHead, emb_dim=8, rnn_dim=8, z_dim=2, mlp_dim=8)):
        model.eval()
        terms = model(batch)
        nll = terms.nll * batch.mask
        assert torch.isfinite(nll).all() and torch.isfinite(terms.kl).all()
        rows = torch.arange(3)
        last = batch.lengths - 1
        # the rnn scores the labelled step only (Z-Forcing's latent terms live at every step)
        assert torch.equal(nll.sum(1), nll[rows, last])
        assert isinstance(model, PredictsValues)
        torch.manual_seed(1)
        values = model.predict_value(batch, samples=3)
        torch.manual_seed(1)
        assert torch.equal(model.predict_value(relabelled, samples=3), values) and values.shape == (3, 5)
        loss = model(batch).nll.sum() + model(batch).kl.sum()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class FirstElementValue(nn.Module, PredictsValues):
    """Order-sensitive on purpose: predicts the set's first element as its value."""

    def predict_value(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        return batch.inputs[:, :1].expand_as(batch.inputs).float()


def test_spread_and_flip_rate_are_zero_for_deepsets_and_right_for_an_order_sensitive_model() -> None:
    torch.manual_seed(0)
    deepsets = DeepSets(SPEC, GaussianHead, emb_dim=8, hidden=16).eval()
    batch = value_batch([5, 2, 7, 1] * 10, seed=4)
    flips, trials, spread = permutation_spread(deepsets, batch, 5, torch.Generator().manual_seed(0))
    assert trials == 200 and flips == 0 and float(spread) == pytest.approx(0.0, abs=1e-4)
    # two distinct elements {a, b}: a random order keeps a first half of the time, so the value
    # flips with probability 1/2 and over many orders its standard deviation tends to |a - b| / 2
    batch = value_batch([2] * 400, seed=5, distinct=True)
    flips, trials, spread = permutation_spread(FirstElementValue(), batch, 9, torch.Generator().manual_seed(1))
    assert trials == 9 * 400 and float(flips / trials) == pytest.approx(0.5, abs=0.04)
    gaps = (batch.inputs[:, 0] - batch.inputs[:, 1]).abs().float()
    # sample std of 10 draws of a fair two-point variable, scaled: E[std] is a bit under |a-b| / 2
    assert 0.35 * float(gaps.mean()) < float(spread) / 400 < 0.5 * float(gaps.mean())


def test_set_max_as_regression_labels_the_last_step_with_the_largest_element() -> None:
    dm = ClassificationDataModule(SetMax(values=10, regression=True), length=6, min_length=1,
                                  test_lengths=[6], num_val=40, num_test=30, batch_size=8)
    dm.setup()
    assert dm.spec.regression and dm.spec.classes is None
    batch = next(iter(dm.val_dataloader()))
    lengths = batch.mask.sum(dim=1).long()
    labels = batch.targets[torch.arange(len(lengths)), lengths - 1, 0]
    largest = torch.stack([row[:n].max() for row, n in zip(batch.inputs, lengths, strict=True)]).float()
    assert torch.equal(labels, largest)
    earlier = batch.mask.clone()
    earlier[torch.arange(len(lengths)), lengths - 1] = 0.0
    assert bool(torch.isnan(batch.targets[..., 0][earlier.bool()]).all())  # only the last step is scored


@pytest.mark.slow
@pytest.mark.parametrize("data", ["set_sum_regression", "set_max_regression"])
def test_a_regression_run_writes_accuracy_error_and_spread_per_test_size(data: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={data}", "model=rnn", f"paths.output_dir={tmp_path}",
                                   "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
                                   "data.num_val=20", "data.num_test=20", "samples.num=0"])
    metrics = train(cfg)
    assert metrics["train/updates"] == 3
    assert {"test/acc_len10", "test/acc_len100", "test/mae", "test/perm_spread"} <= set(metrics)
    assert 0.0 <= metrics["test/perm_flip_rate"] <= 1.0 and metrics["test/mae"] > 0
    assert np.isfinite(metrics["test/nll"]) and "test/pred_nll" not in metrics
    per_size = [metrics[f"test/mae_len{n}"] for n in (10, 25, 50, 100)]
    assert metrics["test/mae"] == pytest.approx(np.mean(per_size), rel=1e-5)  # 20 sets at each test size
    assert {f"test/guess_mae_len{n}" for n in (10, 25, 50, 100)} <= set(metrics)


@pytest.mark.slow
def test_size_errors_script_recovers_the_error_per_size_of_a_run_that_logged_only_the_pooled_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished job re-evaluated from its best checkpoint gives back its stored test/mae, split by
    size; a job whose stored number it cannot reproduce stops the script before it writes."""
    import json

    import yaml

    script = load_script("size_errors")
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["data=set_sum_regression", "seed=1"]))
    cfg = compose_config("train", ["data=set_sum_regression", "model=rnn", f"paths.output_dir={job}", "seed=1",
                                   "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
                                   "data.num_val=20", "data.num_test=20", "samples.num=0"])
    metrics = train(cfg)
    out = tmp_path / "results"
    monkeypatch.setattr("sys.argv", ["size_errors.py", str(tmp_path / "sweep"), "--out", str(out)])
    script.main()
    line = (out / "size_errors.csv").read_text().splitlines()
    header, values = line[0].split(","), [float(v) if i > 2 else v for i, v in enumerate(line[1].split(","))]
    row = dict(zip(header, values, strict=True))
    per_size = [row[f"test/mae_len{n}"] for n in (10, 25, 50, 100)]
    assert np.mean(per_size) == pytest.approx(metrics["test/mae"], rel=1e-4)
    assert row["test/guess_mae_len100"] == pytest.approx(SetSum(regression=True).guess_mae(100), rel=1e-4)
    assert "**set_sum_regression**" in (out / "size_errors.md").read_text() and (out / "size_errors.png").exists()
    stored = json.loads((job / "metrics.json").read_text())
    (job / "metrics.json").write_text(json.dumps(stored | {"test/mae": stored["test/mae"] + 1.0}))
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setattr("sys.argv", ["size_errors.py", str(tmp_path / "sweep"), "--out", str(elsewhere)])
    with pytest.raises(SystemExit):
        script.main()
    assert "job 0: its re-evaluated test/mae" in capsys.readouterr().err and not elsewhere.exists()


@pytest.mark.parametrize("spec", [DataSpec("real", 6, "label", 6, classes=3, sets=True),  # mnist_sum's shape
                                  DataSpec("real", 6, "label", 6, sets=True, regression=True)])
def test_zforcing_predicts_real_inputs_with_a_gaussian_backward_head_when_labels_are_scored(spec: DataSpec) -> None:
    # the configured head scores the labels; the backward cost predicts the inputs (pixels here)
    from zf_lightning.models import CategoricalHead

    torch.manual_seed(0)
    model = ZForcing(spec, GaussianHead if spec.regression else CategoricalHead, emb_dim=8, rnn_dim=8, z_dim=2,
                     mlp_dim=8)
    assert isinstance(model.backward_head, GaussianHead) and model.backward_head.dim == 6
    inputs, mask = torch.rand(2, 4, 6), torch.ones(2, 4)
    targets = (torch.full((2, 4, 1), IGNORE_VALUE) if spec.regression else torch.full((2, 4), -100, dtype=torch.long))
    targets[:, -1] = 1
    terms = model(SequenceBatch(inputs, targets, mask))
    assert all(torch.isfinite(t).all() for t in (terms.nll, terms.kl, terms.bwd)) and bool((terms.bwd != 0).any())


def test_a_latent_model_predicts_every_order_with_the_same_draws() -> None:
    # sets of one repeated element: every order is the same sequence, so any flip or spread would
    # be Z-Forcing's prior-sampling noise, which the flip rate must not count
    from zf_lightning.lit.invariance import permutation_flips
    from zf_lightning.models import CategoricalHead

    torch.manual_seed(0)
    classes = DataSpec("tokens", 10, "label", 1, classes=4, sets=True)
    batch = value_batch([6, 3, 5] * 8, seed=2)
    batch.inputs = batch.inputs[:, :1].expand_as(batch.inputs).contiguous()
    for spec, head in ((SPEC, GaussianHead), (classes, CategoricalHead)):
        model = ZForcing(spec, head, emb_dim=8, rnn_dim=8, z_dim=4, mlp_dim=8).eval()
        generator = torch.Generator().manual_seed(0)
        if spec.regression:
            flips, trials, spread = permutation_spread(model, batch, 4, generator)
            assert float(spread) == 0.0
        else:
            flips, trials = permutation_flips(model, batch, 4, generator)
        assert trials == 4 * 24 and flips == 0
        # while two separate predictions of the same sequence do differ (the draws are random)
        assert not torch.equal(model.predict_value(batch) if spec.regression else model.predict_proba(batch),
                               model.predict_value(batch) if spec.regression else model.predict_proba(batch))
