"""The set tasks (issue 16): labels against brute force, test sizes beyond training, mnist_sum's
disjoint image pools, DeepSets' invariance, the LRU / DeepSets step functions, and the
permutation flip rate on an invariant and on an order-sensitive model."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from zf_lightning.data.synthetic import (
    ClassificationDataModule,
    MnistSum,
    MnistSumDataModule,
    SetMax,
    SetParity,
    SetSum,
    SetTask,
    SetUniqueCount,
)
from zf_lightning.lit.invariance import permutation_flips, permute_elements
from zf_lightning.models import LRU, CategoricalHead, DeepSets
from zf_lightning.types import IGNORE_TARGET, DataSpec, PredictsClasses, SequenceBatch

ORACLES = {  # each label from its definition, independently of the generators
    "sum": (SetSum(values=7, max_size=30), lambda t: sum(t)),
    "parity": (SetParity(), lambda t: t.count(1) % 2),
    "sum_mod": (SetSum(values=7, modulus=5), lambda t: sum(t) % 5),
    "max": (SetMax(values=9), lambda t: max(t)),
    "unique": (SetUniqueCount(values=6), lambda t: len(set(t)) - 1),
}
SET_SPEC = DataSpec("tokens", 5, "label", 1, classes=3, sets=True)


def set_batch(lengths: list[int], vocab: int = 5, seed: int = 0, distinct: bool = False) -> SequenceBatch:
    """Token sets of the given sizes, padded, labelled (class 0) at the last real step."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    if distinct:
        inputs = torch.stack([torch.randperm(vocab, generator=g)[:T] for _ in lengths])
    else:
        inputs = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).float()
    targets = torch.full_like(inputs, IGNORE_TARGET)
    targets[torch.arange(len(lengths)), torch.tensor(lengths) - 1] = 0
    return SequenceBatch(inputs, targets, mask, sizes=torch.tensor(lengths))


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_generated_labels_equal_brute_force(name: str) -> None:
    task, oracle = ORACLES[name]
    rng = np.random.default_rng(0)
    labels = set()
    for size in [1, 2, 3, 7, 30] * 40:
        tokens, label = task.sample(size, rng)
        assert len(tokens) == size and 0 <= label < task.classes
        assert label == oracle(tokens.tolist()) == task.label(tokens)
        labels.add(label)
    assert len(labels) > 2 or (name == "parity" and labels == {0, 1})  # the labels really vary


def test_known_labels() -> None:
    assert SetSum(values=10, max_size=5).label(np.array([3, 4, 5])) == 12
    assert SetSum(values=10, max_size=5).classes == 46
    assert SetSum(values=10, modulus=7).label(np.array([3, 4, 5, 9])) == 0 and SetSum(modulus=7).classes == 7
    assert SetParity().label(np.array([1, 1, 0, 1])) == 1
    assert SetMax(values=10).label(np.array([2, 9, 4])) == 9
    assert SetUniqueCount(values=10).label(np.array([2, 2, 5])) == 1


def test_test_sizes_beyond_training_occur_and_the_spec_says_sets() -> None:
    dm = ClassificationDataModule(SetParity(), length=4, min_length=1, test_lengths=[12, 20], num_train=200,
                                  num_val=10, num_test=30, batch_size=50)
    dm.setup()
    train_sizes = {int(s) for batch in dm.train_dataloader() for s in batch.sizes}
    test_batches = list(dm.test_dataloader())
    assert train_sizes == {1, 2, 3, 4}
    assert dm.spec.sets and dm.spec.classes == 2
    for batch in test_batches:
        for inputs, length, size, target in zip(batch.inputs, batch.lengths, batch.sizes, batch.targets, strict=True):
            assert int(length) == int(size)  # one element per step
            assert int(target[size - 1]) == int(inputs[:size].sum()) % 2
    test_sizes = [int(s) for batch in test_batches for s in batch.sizes]
    assert test_sizes.count(12) == test_sizes.count(20) == 30 > 0
    assert max(test_sizes) > max(train_sizes)


def test_a_sum_beyond_max_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"data.test_lengths.*data.task.max_size=10"):
        ClassificationDataModule(SetSum(values=3, max_size=10), length=5, test_lengths=[20])


@pytest.fixture(scope="module")
def mnist_sum() -> MnistSumDataModule:
    dm = MnistSumDataModule(partial(MnistSum, max_size=6), length=3, min_length=1, test_lengths=[3, 6], side=7,
                            num_train=300, num_val=40, num_test=60, batch_size=100)
    dm.setup()
    return dm


def test_mnist_sum_test_images_are_never_seen_in_training(mnist_sum: MnistSumDataModule) -> None:
    pools = {k: set(v.tolist()) for k, v in mnist_sum.task.pools.items()}
    assert not (pools["train"] & pools["test"]) and not (pools["train"] & pools["val"])
    assert len(pools["test"]) == 1000 and len(pools["val"]) == 500
    train_ids = {int(i) for d in range(mnist_sum.num_train) for i in mnist_sum.train_set.example(d)[0]}
    test_ids = {int(i) for tokens, _, _ in mnist_sum.eval_sets()["test"] for i in tokens}
    assert train_ids <= pools["train"] and test_ids <= pools["test"]
    assert len(train_ids) > 100 and len(test_ids) > 100  # the pools are really drawn from


def test_mnist_sum_modulo_labels() -> None:
    task = MnistSumDataModule(partial(MnistSum, max_size=4, modulus=3), length=2, test_lengths=[4], num_train=10,
                              num_val=5, num_test=5).task
    rng = np.random.default_rng(0)
    for size in (1, 4) * 20:
        tokens, label = task.for_split("test").sample(size, rng)
        assert label == sum(int(task.digits[i]) for i in tokens) % 3 == task.label(tokens)
    assert task.classes == 3


def test_mnist_sum_batches_are_pixels_labelled_with_the_digit_sum(mnist_sum: MnistSumDataModule) -> None:
    spec = mnist_sum.spec
    assert (spec.kind, spec.dim, spec.classes, spec.sets) == ("real", 49, 55, True)
    digits = mnist_sum.task.digits
    examples = mnist_sum.eval_sets()["test"]
    batch = next(iter(mnist_sum.test_dataloader()))
    assert batch.inputs.shape[-1] == 49 and batch.inputs.dtype == torch.float32
    for row, (tokens, label, size) in enumerate(examples[:len(batch.sizes)]):
        assert torch.equal(batch.inputs[row, :size], mnist_sum.pixels[torch.from_numpy(tokens)])
        assert label == sum(int(digits[i]) for i in tokens) == int(batch.targets[row, size - 1])


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_deepsets_is_invariant_under_permutation(pooling: str) -> None:
    torch.manual_seed(0)
    model = DeepSets(SET_SPEC, CategoricalHead, emb_dim=8, hidden=16, pooling=pooling).eval()
    batch = set_batch([6, 3, 1, 5], seed=1)
    scored = batch.scored > 0
    probs = model.predict_proba(batch)[scored]
    for seed in range(3):
        permuted = permute_elements(batch, torch.Generator().manual_seed(seed))
        assert not torch.equal(permuted.inputs, batch.inputs)
        torch.testing.assert_close(model.predict_proba(permuted)[scored], probs, rtol=0, atol=1e-6)
    other = set_batch([6, 3, 1, 5], seed=2)  # different sets: the output does depend on the content
    assert (model.predict_proba(other)[scored] - probs).abs().max() > 1e-3


def test_permute_elements_keeps_each_set_and_its_padding() -> None:
    batch = set_batch([6, 3, 1], seed=3)
    permuted = permute_elements(batch, torch.Generator().manual_seed(0))
    for row, n in enumerate([6, 3, 1]):
        assert sorted(permuted.inputs[row, :n].tolist()) == sorted(batch.inputs[row, :n].tolist())
        assert torch.equal(permuted.inputs[row, n:], batch.inputs[row, n:])
    assert torch.equal(permuted.targets, batch.targets) and torch.equal(permuted.mask, batch.mask)


class FirstElement(nn.Module, PredictsClasses):
    """Order-sensitive on purpose: predicts the class equal to the set's first element."""

    def predict_proba(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        first = batch.inputs[:, :1].expand_as(batch.inputs)
        return torch.nn.functional.one_hot(first, 8).float()


def test_flip_rate_is_zero_for_deepsets_and_right_for_an_order_sensitive_model() -> None:
    torch.manual_seed(0)
    deepsets = DeepSets(SET_SPEC, CategoricalHead, emb_dim=8, hidden=16).eval()
    batch = set_batch([5, 2, 7, 1] * 10, seed=4)
    flips, trials = permutation_flips(deepsets, batch, 5, torch.Generator().manual_seed(0))
    assert trials == 200 and flips == 0
    # distinct elements: the prediction survives a permutation iff the first element stays first,
    # with probability 1/n, so the rate is 1 - 1/n; a set of one element never flips
    for lengths, expected in (([2], 1 / 2), ([4], 3 / 4), ([1, 3], (0 + 2 / 3) / 2)):
        batch = set_batch(lengths * 300, vocab=8, seed=5, distinct=True)
        flips, trials = permutation_flips(FirstElement(), batch, 4, torch.Generator().manual_seed(1))
        assert trials == 4 * 300 * len(lengths)
        assert float(flips / trials) == pytest.approx(expected, abs=0.04)


def test_step_functions_match_the_parallel_states() -> None:
    torch.manual_seed(0)
    batch = set_batch([6, 6, 6], seed=6)
    for model in (DeepSets(SET_SPEC, CategoricalHead, emb_dim=8, hidden=16, pooling="mean"),
                  LRU(SET_SPEC, CategoricalHead, d_model=8, layers=2)):
        model.eval()
        state = model.initial_state(3)
        stepped = []
        for t in range(6):
            params, state = model.step(batch.inputs[:, t], state)
            stepped.append(params)
        parallel = model.output_head(model.states(batch.inputs))
        torch.testing.assert_close(torch.stack(stepped, 1), parallel, rtol=1e-4, atol=1e-5)
        assert model.state_vector(state).shape[0] == 3


def test_set_tasks_need_two_values() -> None:
    with pytest.raises(ValueError, match=r"data\.task\.values"):
        SetTask.__init__(SetMax.__new__(SetMax), 1)


def set_sum_mod10_module(num_val: int = 500):
    from zf_lightning.runs.pipeline import build_datamodule, compose_config

    cfg = compose_config("train", ["data=set_sum_mod10", f"data.num_val={num_val}", "paths.output_dir=unused"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm


def test_held_out_sets_do_not_carve_the_small_sizes_out_of_training() -> None:
    """500 validation sets cannot be distinct and held out at sizes 1 and 2 (10 and 100 sequences)
    without emptying those sizes in training: there they come from the training distribution."""
    dm = set_sum_mod10_module()
    assert dm.shared_sizes("val") == {1, 2, 3} and dm.shared_sizes("test") == set()
    counts = np.bincount([dm.train_set.example(k)[2] for k in range(20_000)], minlength=11)[1:]
    sigma = (20_000 * 0.1 * 0.9) ** 0.5
    assert all(abs(c - 2_000) < 4 * sigma for c in counts), counts  # sizes 1..10 uniform, 2,000 each
    val_sizes = np.bincount([size for *_, size in dm.eval_sets()["val"]], minlength=11)[1:]
    assert all(abs(c - 50) < 25 for c in val_sizes), val_sizes  # validation is not skewed either
    # held out where the space is large: no training draw is a validation sequence of size >= 4
    held = {t.tobytes() for t, _, size in dm.eval_sets()["val"] if size >= 4}
    assert not any(dm.train_set.example(k)[0].tobytes() in held for k in range(5_000))


def test_validation_can_be_on_sets_longer_than_training() -> None:
    """A regularizer meant for extrapolation is chosen on validation sets longer than the training ones."""
    from zf_lightning.runs.pipeline import build_datamodule, compose_config

    cfg = compose_config("train", ["data=set_sum_mod10", "data.val_lengths=[20]", "paths.output_dir=unused"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert {size for *_, size in dm.eval_sets()["val"]} == {20} and len(dm.val_set) == 500
    assert dm.shared_sizes("val") == set() and max(dm.train_sizes) == 10  # training is untouched
    with pytest.raises(ValueError, match=r"data\.val_lengths must name at least one size"):
        type(dm)(dm.task, length=10, min_length=1, val_lengths=[])


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("size", [1, 2, 3])
def test_label_distribution_equals_enumerating_every_set(name: str, size: int) -> None:
    """The exact label distribution behind the input-blind guess, against counting the labels of
    every ordered set of ``size`` elements (each equally likely)."""
    task, oracle = ORACLES[name]
    counts: dict[int, int] = {}
    for tokens in np.ndindex(*(task.values,) * size):
        label = oracle(list(tokens))
        counts[label] = counts.get(label, 0) + 1
    total = task.values**size
    distribution = task.label_distribution(size)
    assert distribution.sum() == pytest.approx(1.0)
    expected = {k: c / total for k, c in counts.items()}
    assert {k: v for k, v in enumerate(distribution) if v > 0} == pytest.approx(expected)
    assert task.guess_accuracy(size) == pytest.approx(max(counts.values()) / total)


@pytest.mark.parametrize("task", [SetSum(values=7, regression=True), SetMax(values=9, regression=True)],
                         ids=["sum", "max"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_regression_guess_error_is_the_least_error_of_any_constant(task: SetSum | SetMax, size: int) -> None:
    """Against every ordered set of ``size`` elements and every whole-number constant guess."""
    labels = np.array([task.label(np.array(t)) for t in np.ndindex(*(task.values,) * size)])
    best = min(np.abs(labels - c).mean() for c in range(labels.max() + 1))
    assert task.guess_mae(size) == pytest.approx(best)
    assert SetSum(values=7, modulus=5).guess_mae(size) is None


def test_input_blind_guess_is_logged_beside_the_size_curves() -> None:
    """Parity and sums modulo 10 guess at 1 / classes at every size; the maximum of many digits
    is nearly always 9, so its accuracy at large sizes means little; the sum's mode thins out."""
    assert SetParity().guess_accuracy(25) == pytest.approx(0.5)
    assert SetSum(modulus=10).guess_accuracy(100) == pytest.approx(0.1)
    assert SetMax(values=10, regression=True).guess_accuracy(25) == pytest.approx(1 - 0.9**25)
    assert SetSum(regression=True).guess_accuracy(100) < 0.015
    metrics = ClassificationDataModule(SetParity(), length=8, test_lengths=[8, 16], num_val=20,
                                       num_test=20).reference_metrics()
    assert metrics == {"val/guess_acc": 0.5, "test/guess_acc": 0.5, "test/guess_acc_len8": 0.5,
                       "test/guess_acc_len16": 0.5}
    regression = ClassificationDataModule(SetSum(regression=True), length=4, min_length=1, test_lengths=[4, 100],
                                          num_val=20, num_test=20).reference_metrics()
    assert regression["test/guess_mae_len4"] == pytest.approx(SetSum(regression=True).guess_mae(4))
    assert regression["test/guess_mae_len100"] == pytest.approx(22.93, abs=0.01)  # ~ sd 28.7 * sqrt(2 / pi)


def test_mnist_sum_guess_follows_its_split_pool(mnist_sum: MnistSumDataModule) -> None:
    """The digits are not exactly uniform in each pool, so the guess is computed per split."""
    task = mnist_sum.task
    pool = task.for_split("test").pools["test"]
    digits = np.bincount(task.digits[pool], minlength=10) / pool.size
    assert task.for_split("test").guess_accuracy(1) == pytest.approx(digits.max())
    assert mnist_sum.reference_metrics()["test/guess_acc_len" + str(max(mnist_sum.test_sizes))] > 0
