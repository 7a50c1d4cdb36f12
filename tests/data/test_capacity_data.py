"""The synthetic capacity tasks: labels against brute-force oracles, near-miss negatives, disjoint
splits, the batch format of sequence classification, and clear errors for impossible sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from zf_lightning.data.synthetic import (
    BoundedDyck,
    ClassificationDataModule,
    ClassificationTask,
    IndexLookup,
    NearestNeighbor,
    SetParity,
    StringEquality,
)
from zf_lightning.data.synthetic.base import majority_copy_accuracy
from zf_lightning.data.synthetic.dyck import END, completions, is_member
from zf_lightning.types import IGNORE_TARGET

TASKS: dict[str, ClassificationTask] = {
    "index_lookup": IndexLookup(symbols=3),
    "nearest_neighbor": NearestNeighbor(dim=4, labels=3, flips=1),
    "dyck_substitute": BoundedDyck("substitute"),
    "dyck_swap": BoundedDyck("swap"),
    "string_equality": StringEquality(max_differences=2),
}


def brute_force_dyck(brackets: list[int], max_depth: int = 2) -> bool:
    """Membership by rewriting: delete adjacent matched pairs until nothing changes; depth checked
    separately as the running count of open brackets (an independent recogniser)."""
    depth = 0
    for token in brackets:
        depth += 1 if token in (0, 2) else -1
        if depth > max_depth or depth < 0:
            return False
    word = list(brackets)
    while True:
        for i in range(len(word) - 1):
            if (word[i], word[i + 1]) in ((0, 1), (2, 3)):
                del word[i:i + 2]
                break
        else:
            return not word


def oracle(name: str, task: ClassificationTask, tokens: np.ndarray) -> int:
    """Each task's label from its definition, written independently of the generators."""
    t = tokens.tolist()
    if name == "index_lookup":
        return t[t[-1] - 3]
    if name == "nearest_neighbor":
        dim, split = 4, len(t) - 5
        query = t[split + 1:]
        pairs = [t[i:i + dim + 1] for i in range(0, split, dim + 1)]
        distances = [sum(a != b for a, b in zip(p[:dim], query, strict=True)) for p in pairs]
        best = min(distances)
        assert distances.count(best) == 1, "the nearest stored vector must be unique"
        return pairs[distances.index(best)][dim] - 2
    if name.startswith("dyck"):
        assert t[-1] == END
        return int(brute_force_dyck(t[:-1]))
    n = (len(t) - 2) // 2
    assert t[n] == 2 and t[-1] == 3  # SEP, END
    return int(t[:n] == t[n + 1:2 * n + 1])


@pytest.mark.parametrize("name", list(TASKS))
def test_labels_match_a_brute_force_oracle_and_the_format(name: str) -> None:
    task = TASKS[name]
    rng = np.random.default_rng(0)
    labels = []
    for size in (2, 4, 6):
        for _ in range(150):
            tokens, label = task.sample(size, rng)
            assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < task.vocab_size(6)
            expected_steps = {"index_lookup": size + 1, "nearest_neighbor": size * 5 + 5,
                              "string_equality": 2 * size + 2}.get(name, size + 1)
            assert len(tokens) == expected_steps
            assert label == oracle(name, task, tokens) == task.label(tokens)
            labels.append(label)
    counts = np.bincount(labels, minlength=task.classes)
    assert (counts > 0.15 * len(labels) / task.classes).all(), counts  # every class occurs, none dominates


def test_dyck_recogniser_agrees_with_brute_force_on_every_short_string() -> None:
    members = 0
    for n in (2, 4, 6):
        for word in itertools.product(range(4), repeat=n):
            member = is_member(word)
            assert member == brute_force_dyck(list(word)), word
            members += member
    assert members == 2 + 8 + 32  # depth <= 2: 2, 8, 32 words of lengths 2, 4, 6
    assert [completions(6, 2)[n][0] for n in (2, 4, 6)] == [2, 8, 32]
    assert not is_member([0, 2, 0, 1, 3, 1])  # depth 3 is out of Dyck-(2, 2)


@pytest.mark.parametrize("negative", ["substitute", "swap"])
def test_dyck_negatives_are_same_length_near_misses_outside_the_language(negative: str) -> None:
    task = BoundedDyck(negative)
    rng = np.random.default_rng(1)
    for _ in range(300):
        word = task.positive(10, rng)
        assert is_member(word)
        miss = task.near_miss(word, rng)
        assert len(miss) == len(word) and not brute_force_dyck(miss.tolist())
        changed = int((miss != word).sum())
        if negative == "substitute":
            assert changed == 1
        else:  # two symbols exchanged: the same multiset of brackets
            assert changed == 2 and sorted(miss.tolist()) == sorted(word.tolist())


def test_dyck_positives_are_uniform_over_the_words() -> None:
    rng = np.random.default_rng(2)
    draws = [tuple(BoundedDyck().positive(4, rng).tolist()) for _ in range(4000)]
    counts = np.array(list({w: draws.count(w) for w in set(draws)}.values()))
    assert len(counts) == 8 and counts.min() > 400 and counts.max() < 600  # 500 expected each


def test_string_equality_negatives_differ_in_few_positions() -> None:
    task = StringEquality(max_differences=2)
    rng = np.random.default_rng(3)
    for _ in range(200):
        tokens, label = task.sample(12, rng)
        first, second = tokens[:12], tokens[13:25]
        differences = int((first != second).sum())
        assert (differences == 0) == bool(label) and differences <= 2


def _keys(dataset) -> list[bytes]:
    return [dataset[i][0].numpy().tobytes() for i in range(len(dataset))]


@pytest.mark.parametrize("fresh", [True, False])
def test_splits_are_disjoint_and_training_draws_are_fresh_or_fixed(fresh: bool) -> None:
    # Dyck of length 6 has only 32 members: collisions between splits are certain unless avoided
    # (held out whatever share of training that takes: max_held_out_mass=1)
    dm = ClassificationDataModule(BoundedDyck(), length=6, min_length=4, test_lengths=[6, 8], num_train=200,
                                  fresh_train=fresh, num_val=20, num_test=20, seed=5, batch_size=10,
                                  max_held_out_mass=1.0)
    dm.setup()
    val, test = _keys(dm.val_set), _keys(dm.test_set)
    assert len(set(val)) == 20 and len(set(test)) == 40 and not set(val) & set(test)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
        keys = []
        for batch in loader:
            for row, length in zip(batch.inputs, batch.lengths.tolist(), strict=True):
                keys.append(row[:length].numpy().tobytes())
        epochs.append(keys)
    for keys in epochs:
        assert len(keys) == 200 and not set(keys) & (set(val) | set(test))
    if fresh:  # new draws: the two epochs are different sequences of examples
        assert epochs[0] != epochs[1]
    else:  # the same examples, reshuffled
        assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]


def test_batches_score_only_the_last_step_and_carry_sizes() -> None:
    dm = ClassificationDataModule(IndexLookup(symbols=4), length=5, min_length=3, test_lengths=[5, 9],
                                  num_train=32, num_val=16, num_test=16, batch_size=8, eval_batch_size=32)
    assert dm.spec.classes == 4 and dm.spec.dim == 4 + 9 and dm.spec.output_dim == 4
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch.sizes.tolist() == [5] * 16 + [9] * 16
    assert batch.lengths.tolist() == [6] * 16 + [10] * 16
    last = batch.lengths - 1
    rows = torch.arange(32)
    assert torch.equal(batch.targets[rows, last], batch.labels)
    scored = batch.scored
    assert scored.sum().item() == 32 and torch.equal(scored[rows, last], torch.ones(32))
    unlabelled = batch.mask.bool() & ~scored.bool()
    assert (batch.targets[unlabelled] == IGNORE_TARGET).all()
    # the label is the symbol at the queried position
    query = batch.inputs[rows, last] - 4
    assert torch.equal(batch.inputs[rows, query], batch.labels)


def test_same_seed_same_sets_other_seed_other_sets() -> None:
    def sets(seed: int) -> tuple[list[bytes], list[bytes]]:
        dm = ClassificationDataModule(StringEquality(), length=8, num_train=4, num_val=10, num_test=10, seed=seed)
        dm.setup()
        return _keys(dm.val_set), _keys(dm.train_set)

    assert sets(0) == sets(0)
    assert sets(0)[0] != sets(1)[0] and sets(0)[1] != sets(1)[1]


def test_impossible_sizes_and_too_small_tasks_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"data\.length / data\.min_length: size 5 .* even length"):
        ClassificationDataModule(BoundedDyck(), length=5)
    with pytest.raises(ValueError, match=r"data\.test_lengths: size 9"):
        ClassificationDataModule(NearestNeighbor(dim=4), length=4, test_lengths=[9])
    with pytest.raises(ValueError, match=r"data\.min_length"):
        ClassificationDataModule(IndexLookup(), length=4, min_length=6)
    dm = ClassificationDataModule(BoundedDyck(), length=4, num_val=20, num_test=20, max_held_out_mass=1.0)
    with pytest.raises(ValueError, match="too few distinct sequences"):
        dm.setup()
    shared = ClassificationDataModule(BoundedDyck(), length=4, num_val=20, num_test=20)  # drawn from training
    shared.setup()
    assert shared.shared_sizes("val") == shared.shared_sizes("test") == {4} and len(shared.val_set) == 20
    with pytest.raises(ValueError, match="max_held_out_mass"):
        ClassificationDataModule(BoundedDyck(), length=4, max_held_out_mass=2.0)


@pytest.mark.parametrize("fresh", [True, False])
def test_training_draws_under_ddp_are_sharded_and_fresh_every_epoch(fresh: bool) -> None:
    # Lightning wraps a custom sampler in DistributedSamplerWrapper under DDP and forwards
    # set_epoch to it: each rank must read its own share of the epoch's draws, and fresh draws
    # must not repeat from one epoch to the next (a fixed set: the same draws, reshuffled)
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from zf_lightning.data.synthetic.base import DrawSampler

    sampler = DrawSampler(draws_per_epoch=12, fresh=fresh, seed=3)
    ranks = [DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
    epochs = []
    for epoch in (0, 1):
        shards = []
        for wrapper in ranks:
            wrapper.set_epoch(epoch)
            shards.append(list(wrapper))
        assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 6
        epochs.append(sorted(shards[0] + shards[1]))
    if fresh:
        assert epochs[0] == list(range(12)) and epochs[1] == list(range(12, 24))
    else:
        assert epochs[0] == epochs[1] == list(range(12))


@pytest.mark.parametrize(("size", "classes"), [(1, 2), (2, 2), (3, 3), (5, 2), (4, 4)])
def test_majority_copy_accuracy_equals_enumeration_over_every_labelling(size: int, classes: int) -> None:
    total = 0.0
    for labels in itertools.product(range(classes), repeat=size):
        total += max(labels.count(c) for c in range(classes)) / size  # P(picked label is a most frequent one)
    assert majority_copy_accuracy(size, classes) == pytest.approx(total / classes**size, rel=1e-12)


def _blind_majority_hits(stored: list[int], label: int) -> float:
    """The query-blind rule on one example: guess a most frequent stored label (ties split evenly)."""
    counts = {c: stored.count(c) for c in set(stored)}
    best = [c for c, n in counts.items() if n == max(counts.values())]
    return (label in best) / len(best)


@pytest.mark.parametrize(("task", "size"), [(NearestNeighbor(dim=4), 2), (NearestNeighbor(dim=4), 8),
                                            (IndexLookup(symbols=4), 8), (IndexLookup(symbols=4), 32)])
def test_chance_accuracy_of_lookup_tasks_is_what_the_query_blind_guess_scores_on_the_test_set(
        task: ClassificationTask, size: int) -> None:
    data = ClassificationDataModule(task, length=size, num_val=10, num_test=2000, seed=3)
    hits = []
    for tokens, label, _ in data.eval_sets()["test"]:
        if isinstance(task, NearestNeighbor):
            pairs = tokens[: size * (task.dim + 1)].reshape(size, task.dim + 1)
            stored = [int(t) - 2 for t in pairs[:, task.dim]]
        else:
            stored = [int(t) for t in tokens[:size]]
        hits.append(_blind_majority_hits(stored, label))
    chance = task.chance_accuracy(size)
    assert chance > 1 / task.classes
    assert float(np.mean(hits)) == pytest.approx(chance, abs=0.035)  # ~3 standard errors of 2,000 draws


def test_chance_accuracy_of_lookup_tasks_falls_towards_one_over_classes() -> None:
    lookup = [IndexLookup(symbols=4).chance_accuracy(n) for n in (8, 16, 32, 64, 256)]
    assert lookup == sorted(lookup, reverse=True) and 0.25 < lookup[-1] < 0.3
    assert NearestNeighbor(dim=4).chance_accuracy(2) == pytest.approx(0.75)


@pytest.mark.parametrize(("size", "max_differences"), [(1, 2), (3, 1), (4, 2), (5, 3), (6, 2)])
def test_string_equality_chance_is_the_best_rule_on_the_counts_by_enumeration(size: int,
                                                                              max_differences: int) -> None:
    # every first string and every flip set, weighted as the generator draws them; the best rule
    # on the bag of tokens picks, for each count of zeros and ones, the likelier class
    from collections import Counter

    joint: Counter[tuple[int, int]] = Counter()  # (ones in both strings, label) -> probability
    flips = range(1, min(max_differences, size) + 1)
    for first in itertools.product((0, 1), repeat=size):
        joint[(2 * sum(first), 1)] += 0.5 / 2**size
        for c in flips:
            sets = list(itertools.combinations(range(size), c))
            for flipped in sets:
                second = [b ^ (i in flipped) for i, b in enumerate(first)]
                joint[(sum(first) + sum(second), 0)] += 0.5 / 2**size / len(flips) / len(sets)
    totals = {t for t, _ in joint}
    best = sum(max(joint[(t, 0)], joint[(t, 1)]) for t in totals)
    assert StringEquality(max_differences).chance_accuracy(size) == pytest.approx(best, abs=1e-12)


def test_string_equality_parity_rule_scores_its_chance_on_the_test_set() -> None:
    data = ClassificationDataModule(StringEquality(max_differences=2), length=16, num_val=10, num_test=2000, seed=3)
    hits = [int(tokens[:-1].tolist().count(1) % 2 == 0) == label for tokens, label, _ in data.eval_sets()["test"]]
    assert float(np.mean(hits)) == pytest.approx(StringEquality(2).chance_accuracy(16), abs=0.035)
    assert StringEquality(2).chance_accuracy(16) == pytest.approx(0.75)


@pytest.mark.parametrize(("negative", "chance"), [("substitute", 1.0), ("swap", 0.5)])
def test_dyck_counts_decide_substituted_negatives_and_tell_nothing_about_swapped_ones(negative: str,
                                                                                       chance: float) -> None:
    data = ClassificationDataModule(BoundedDyck(negative), length=16, num_val=10, num_test=500, seed=1)
    hits = []
    for tokens, label, _ in data.eval_sets()["test"]:
        counts = np.bincount(tokens[:-1], minlength=4)
        balanced = counts[0] == counts[1] and counts[2] == counts[3]
        hits.append(int(balanced) == label)
    assert float(np.mean(hits)) == pytest.approx(chance)  # balanced classes: swap's rule says "member" always
    assert BoundedDyck(negative).chance_accuracy(16) == chance


def test_set_tasks_and_skewed_tasks_log_no_chance_level() -> None:
    assert SetParity().chance_accuracy(5) is None  # order carries nothing there: counts are the task
    metrics = ClassificationDataModule(SetParity(), length=8, num_val=20, num_test=20).reference_metrics()
    assert not any("chance" in key for key in metrics)
    metrics = ClassificationDataModule(StringEquality(), length=10, test_lengths=[10, 12], num_val=20,
                                       num_test=20).reference_metrics()
    assert metrics == {"val/chance_acc": 0.75, "test/chance_acc": 0.75, "test/chance_acc_len10": 0.75,
                       "test/chance_acc_len12": 0.75}



@pytest.mark.slow
def test_the_committed_held_out_support_table_is_what_the_code_draws(tmp_path) -> None:
    """results/held_out_support states, per task and size, how much of the training distribution
    the held-out sets take and which sizes are drawn from training instead; rebuilt, it is unchanged."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "scripts/held_out_support.py", "--out", str(tmp_path)], cwd=repo, check=True,
                   capture_output=True)
    for name in ("support.csv", "support.md"):
        assert (tmp_path / name).read_text() == (repo / "results" / "held_out_support" / name).read_text(), name
