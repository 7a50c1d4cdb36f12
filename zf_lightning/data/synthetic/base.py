"""What every synthetic classification task shares: the task interface, the seeded and
disjoint train / validation / test sets, and the data module.

An example is a token sequence whose label is the target of its last step; every other step's
target is ``IGNORE_TARGET`` (scores nothing). Each example has a *size* (the task's length
knob, e.g. the N of index lookup), reported per test size as ``test/acc_len<size>``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zf_lightning.data.base import EpochSampler, SequenceDataModule, pad_collate
from zf_lightning.types import IGNORE_TARGET, IGNORE_VALUE, DataSpec, SequenceBatch

log = logging.getLogger(__name__)

# numpy SeedSequence entropy [seed, stream, ...]: the splits never share a random stream
_TRAIN_STREAM, _VAL_STREAM, _TEST_STREAM, _PROBE_STREAM = 1, 2, 3, 4
# Held-out sequences are kept out of training only where they take at most this share of the
# training draws of their size (data.max_held_out_mass); where they would take more (small sizes
# of a small alphabet), they are drawn from the training distribution and may occur in training.
MAX_HELD_OUT_MASS = 0.01
_PROBES = 500
# draws allowed per wanted example before a set is declared impossible (too few distinct sequences)
_ATTEMPTS_PER_EXAMPLE = 50

# (tokens [T] int64, label, size)
Example = tuple[np.ndarray, int, int]
# (inputs [T], targets [T], label, size)
ClassificationItem = tuple[Tensor, Tensor, int, int]


class ClassificationTask(ABC):
    """A family of labelled token sequences indexed by a size.

    ``sample`` builds an example so that its label is known by construction; ``label`` is an
    independent brute-force oracle that recomputes it from the tokens (the tests hold the two
    equal).

    ``balanced``: validation and test sets get as many examples of every class as they can
    (off for tasks whose labels are naturally skewed or outnumber the examples, e.g. sums).
    ``sets``: every step is one element of a set, so the order carries no information
    (``DataSpec.sets``: the permutation flip rate is measured).
    ``regression``: the label, a whole number, is predicted as a real value (a Gaussian head,
    ``DataSpec.regression``) instead of as one of ``classes``; ``classes`` still bounds it.
    """

    classes: int
    balanced: bool = True
    sets: bool = False
    regression: bool = False

    @abstractmethod
    def vocab_size(self, max_size: int) -> int:
        """Input tokens needed for sizes up to ``max_size``."""

    @abstractmethod
    def sample(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """One example of this size: int64 tokens ``[T]`` and its label in ``[0, classes)``."""

    @abstractmethod
    def label(self, tokens: np.ndarray) -> int:
        """The label of a token sequence, recomputed by brute force from its definition."""

    def check_size(self, size: int) -> str | None:
        """Why a size is impossible for this task, or None when it is fine."""
        return None if size >= 1 else "sizes must be >= 1"

    def label_spec(self) -> dict[str, object]:
        """The ``DataSpec`` fields of the output side: the classes, or one regressed value."""
        return {"classes": None if self.regression else self.classes, "sets": self.sets,
                "regression": self.regression}

    def chance_accuracy(self, size: int) -> float | None:
        """The best expected accuracy of a rule that sees which tokens the input holds and how
        often, but not their order: the floor a capacity cell is read against, since these tasks
        are about what a model makes of the order. It is not always ``1 / classes``: on the
        lookup tasks the most frequent stored label is a guess well above it, and counts alone
        decide Dyck with substituted negatives. None where a task does not derive it (set tasks,
        whose order carries nothing by design, and tasks with skewed labels)."""
        return None

    def guess_accuracy(self, size: int) -> float | None:
        """The best expected accuracy of a guess that does not read the input: the probability of
        the most frequent label among inputs of this size. The floor a set task's size curve is read
        against (0.5 for parity, 0.1 for a sum modulo 10, close to 1 for the maximum of many
        digits), where the order-blind ``chance_accuracy`` is 1 by design. None where a task does
        not derive it."""
        return None

    def guess_mae(self, size: int) -> float | None:
        """Regression's ``guess_accuracy``: the mean absolute error of the best guess that does not
        read the input, the median label among inputs of this size. None for class labels and where
        a task does not derive it."""
        return None

    def for_split(self, split: str) -> ClassificationTask:
        """The task as the ``train``, ``val`` or ``test`` split draws it: the same task by default;
        a task over a finite pool of elements (the MNIST digits of ``mnist_sum``) returns a view
        on that split's own pool, so test elements are never seen in training."""
        return self


@cache
def majority_copy_accuracy(size: int, classes: int) -> float:
    """Accuracy of guessing the most frequent of ``size`` labels drawn uniformly from ``classes``
    when the true label is one of them picked uniformly: E[largest count] / size, summed exactly
    over the multinomial counts. It is the chance level of index lookup and nearest neighbour, and
    it is well above ``1 / classes`` for few labels (0.75 for 2 binary labels)."""
    if size < 1 or classes < 1:
        raise ValueError(f"majority_copy_accuracy needs size >= 1 and classes >= 1, got {size}, {classes}")
    # (labels placed so far, largest count among the classes so far) -> number of ways; one class at a time
    ways: dict[tuple[int, int], int] = {(0, 0): 1}
    for _ in range(classes):
        grown: dict[tuple[int, int], int] = {}
        for (placed, largest), n in ways.items():
            for here in range(size - placed + 1):
                key = (placed + here, max(largest, here))
                grown[key] = grown.get(key, 0) + n * math.comb(size - placed, here)
        ways = grown
    expected_largest = sum(largest * n for (placed, largest), n in ways.items() if placed == size)
    return expected_largest / (classes**size * size)


def held_out_mass(held_task: ClassificationTask, train_task: ClassificationTask, size: int, count: int,
                  rng: np.random.Generator) -> float:
    """The share of training draws of ``size`` that ``count`` held-out sequences of that size take:
    ``count`` draws as a held-out set would make them, then the fraction of training draws that
    hit one (0 for a large space; all 10 one-element sets of 10 digits take 1.0)."""
    held = {held_task.sample(size, rng)[0].tobytes() for _ in range(count)}
    return sum(train_task.sample(size, rng)[0].tobytes() in held for _ in range(_PROBES)) / _PROBES


def draw_unique(task: ClassificationTask, sizes: Sequence[int], count: int, rng: np.random.Generator,
                exclude: set[bytes], what: str, shared: Collection[int] = ()) -> list[Example]:
    """``count`` distinct examples (sizes drawn uniformly from ``sizes``), none of them in
    ``exclude``, with the classes as balanced as ``count`` allows (uniqueness alone would skew
    small sizes towards the class with more distinct sequences). Their keys are added to
    ``exclude`` so later sets stay disjoint. At the ``shared`` sizes, whose space is too small to
    hold sequences out without carving them out of training, examples are drawn as training
    draws them: repeats allowed, nothing excluded."""
    if task.balanced:
        quota = [count // task.classes + (c < count % task.classes) for c in range(task.classes)]
    else:
        quota = [count] * task.classes
    out: list[Example] = []
    for _ in range(_ATTEMPTS_PER_EXAMPLE * count + 100):
        if len(out) == count:
            return out
        size = int(rng.choice(sizes))
        tokens, label = task.sample(size, rng)
        key = tokens.tobytes()
        if quota[label] > 0 and (size in shared or key not in exclude):
            if size not in shared:
                exclude.add(key)
            quota[label] -= 1
            out.append((tokens, label, size))
    if len(out) == count:
        return out
    raise ValueError(
        f"could not draw {count} distinct, class-balanced {what} sequences of size {sorted(set(sizes))} for "
        f"{type(task).__name__} (found {len(out)}): there are too few distinct sequences of that size; "
        "lower data.num_val / data.num_test or raise data.length / data.test_lengths"
    )


def as_item(example: Example, regression: bool = False) -> ClassificationItem:
    """Tokens as inputs; the label is the last step's target, every other step scores nothing
    (class ids: ``IGNORE_TARGET``; a regression label is one real value per step, ``IGNORE_VALUE``)."""
    tokens, label, size = example
    inputs = torch.from_numpy(tokens.astype(np.int64))
    if regression:
        targets = torch.full((len(tokens), 1), IGNORE_VALUE)
        targets[-1, 0] = float(label)
    else:
        targets = torch.full_like(inputs, IGNORE_TARGET)
        targets[-1] = label
    return inputs, targets, label, size


def classification_collate(items: Sequence[ClassificationItem]) -> SequenceBatch:
    """Pad like every other data module (a real-valued label's padding is ``IGNORE_VALUE`` too,
    so padding never reads as a label of 0), and carry each sequence's size."""
    batch = pad_collate([(x, y, label) for x, y, label, _ in items])
    if batch.targets.dtype.is_floating_point:
        batch.targets[batch.mask == 0] = IGNORE_VALUE
    return replace(batch, sizes=torch.as_tensor([size for *_, size in items], dtype=torch.long))


class FixedSet(Dataset):
    """A list of examples drawn once (validation, test, a fixed training set)."""

    def __init__(self, examples: list[Example], regression: bool = False) -> None:
        self.examples = examples
        self.regression = regression

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ClassificationItem:
        return as_item(self.examples[index], self.regression)


class DrawnSet(Dataset):
    """Training examples generated on demand: draw ``k`` comes from its own random stream
    ``[seed, train, k]``, so any draw is reproducible without storing it. Draws that hit a
    validation or test sequence are redrawn from the same stream (the splits stay disjoint).
    ``len`` is the number of draws per epoch; ``DrawSampler`` says which draws an epoch uses."""

    def __init__(self, task: ClassificationTask, sizes: Sequence[int], draws_per_epoch: int, seed: int,
                 exclude: set[bytes]) -> None:
        self.task = task
        self.sizes = list(sizes)
        self.draws_per_epoch = draws_per_epoch
        self.seed = seed
        self.exclude = exclude

    def __len__(self) -> int:
        return self.draws_per_epoch

    def example(self, draw: int) -> Example:
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, draw])
        size = int(rng.choice(self.sizes))  # a draw that hits a held-out sequence is redrawn at its size,
        for _ in range(_ATTEMPTS_PER_EXAMPLE):  # so the sizes keep the rates the task defines
            tokens, label = self.task.sample(size, rng)
            if tokens.tobytes() not in self.exclude:
                return tokens, label, size
        raise ValueError(
            f"{type(self.task).__name__}: training draws keep hitting validation/test sequences; the task has "
            "too few distinct sequences of these sizes (lower data.num_val / data.num_test or raise data.length)"
        )

    def __getitem__(self, draw: int) -> ClassificationItem:
        return as_item(self.example(draw), self.task.regression)


class DrawSampler(EpochSampler):
    """Which training draws an epoch reads: ``fresh`` gives epoch e the new draws
    ``[e n, (e + 1) n)``; otherwise the same ``n`` draws every epoch, shuffled per epoch."""

    def __init__(self, draws_per_epoch: int, fresh: bool, seed: int) -> None:
        super().__init__(draws_per_epoch, seed)
        self.fresh = fresh

    def order(self) -> list[int]:
        if self.fresh:
            return list(range(self.epoch * self.size, (self.epoch + 1) * self.size))
        return super().order()


class ClassificationDataModule(SequenceDataModule):
    """Sequence classification on a synthetic task, generated from ``seed``.

    Args:
        task: the task (its own config node: format, alphabet, ...).
        length: the largest training size (e.g. N symbols for index lookup).
        min_length: the smallest training size (default ``length``: a fixed size); training sizes
            are uniform in ``[min_length, length]``, and so are validation sizes unless
            ``val_lengths`` names others.
        val_lengths: the validation sizes, uniform among them (default: the training sizes).
            Sizes beyond ``length`` choose hyper-parameters for extrapolation, e.g. a
            regularizer's weight chosen on sets twice as long as the training ones.
        test_lengths: one test set per size (default ``[length]``), reported as
            ``test/acc_len<size>``; ``test/acc`` pools them. Sizes beyond ``length`` test
            length generalization.
        num_train: training draws per epoch.
        fresh_train: true: every epoch draws new examples; false: the same ``num_train``
            examples every epoch (a fixed training set).
        num_val, num_test: validation examples, and test examples per test size (distinct,
            and disjoint from each other and from every training draw).
        max_held_out_mass: a size whose validation or test sequences would take more than this
            share of its training draws is not held out: its examples come from the training
            distribution (and may occur in training), so small sizes are not carved out of it.
        seed: the data seed (not the training seed: keep the sets fixed across runs).
    """

    collate_fn = staticmethod(classification_collate)

    def __init__(self, task: ClassificationTask, length: int = 16, min_length: int | None = None,
                 test_lengths: Sequence[int] | None = None, val_lengths: Sequence[int] | None = None,
                 num_train: int = 10_000, fresh_train: bool = True,
                 num_val: int = 500, num_test: int = 500, seed: int = 0, max_held_out_mass: float = MAX_HELD_OUT_MASS,
                 batch_size: int = 64,
                 eval_batch_size: int | None = None, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         pin_memory=pin_memory)
        if not isinstance(task, ClassificationTask):
            raise TypeError(f"data.task must build a ClassificationTask, got {type(task).__name__}")
        min_length = length if min_length is None else min_length
        if min_length > length:
            raise ValueError(f"data.min_length ({min_length}) must be <= data.length ({length})")
        self.test_sizes = [int(n) for n in (test_lengths if test_lengths is not None else [length])]
        if not self.test_sizes:
            raise ValueError("data.test_lengths must name at least one size (or be null for [data.length])")
        requested_val = [int(n) for n in val_lengths] if val_lengths is not None else None
        if requested_val is not None and not requested_val:
            raise ValueError("data.val_lengths must name at least one size (or be null for the training sizes)")
        for key, sizes in (("data.length / data.min_length", [min_length, length]),
                           ("data.test_lengths", self.test_sizes), ("data.val_lengths", requested_val or [])):
            for size in sizes:
                problem = task.check_size(int(size))
                if problem is not None:
                    raise ValueError(f"{key}: size {size} is impossible for {type(task).__name__}: {problem}")
        if min(num_train, num_val, num_test) < 1:
            raise ValueError("data.num_train, data.num_val and data.num_test must be >= 1")
        if not 0.0 <= max_held_out_mass <= 1.0:
            raise ValueError(f"data.max_held_out_mass must be in [0, 1], got {max_held_out_mass}")
        self.max_held_out_mass = max_held_out_mass
        self.task = task
        self.train_sizes = [n for n in range(min_length, length + 1) if task.check_size(n) is None]
        self.val_sizes = requested_val or self.train_sizes
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.fresh_train = fresh_train
        self.seed = seed
        self.max_size = max([length, *self.test_sizes, *self.val_sizes])
        self._eval_sets: dict[str, list[Example]] | None = None
        self._eval_keys: set[bytes] = set()
        self._held_out: dict[tuple[str, int], float] | None = None

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="tokens", dim=self.task.vocab_size(self.max_size), unit="label", dims_per_step=1,
                        **self.task.label_spec())

    def held_out_support(self) -> dict[tuple[str, int], float]:
        """``(split, size) -> share of the training draws of that size`` that the split's sequences
        would take if held out of training. Sizes above ``max_held_out_mass`` are not held out:
        their validation or test sequences come from the training distribution (and may occur in
        training), so the training sizes keep the rates the task defines."""
        if self._held_out is None:
            train_task = self.task.for_split("train")
            per_size = math.ceil(self.num_val / len(self.val_sizes))
            rng = np.random.default_rng([self.seed, _PROBE_STREAM])
            held = {("val", n): held_out_mass(self.task.for_split("val"), train_task, n, per_size, rng)
                    for n in self.val_sizes}
            test_task = self.task.for_split("test")
            held |= {("test", n): held_out_mass(test_task, train_task, n, self.num_test, rng)
                     for n in self.test_sizes}
            self._held_out = held
        return self._held_out

    def shared_sizes(self, split: str) -> set[int]:
        """The sizes at which ``split`` is drawn from the training distribution, not held out."""
        return {n for (s, n), mass in self.held_out_support().items() if s == split and mass > self.max_held_out_mass}

    def eval_sets(self) -> dict[str, list[Example]]:
        """Validation and test examples (drawn once; test sets per size after validation)."""
        if self._eval_sets is None:
            keys: set[bytes] = set()
            sets = {"val": draw_unique(self.task.for_split("val"), self.val_sizes, self.num_val,
                                       np.random.default_rng([self.seed, _VAL_STREAM]), keys, "validation",
                                       self.shared_sizes("val"))}
            test: list[Example] = []
            test_task = self.task.for_split("test")
            shared_test = self.shared_sizes("test")
            for size in self.test_sizes:
                rng = np.random.default_rng([self.seed, _TEST_STREAM, size])
                test += draw_unique(test_task, [size], self.num_test, rng, keys, f"test (size {size})", shared_test)
            sets["test"] = test
            self._eval_sets, self._eval_keys = sets, keys
            shared = {split: sorted(self.shared_sizes(split)) for split in ("val", "test")}
            if any(shared.values()):
                log.info("%s: sizes drawn from the training distribution instead of held out (their space is too "
                         "small): validation %s, test %s", type(self.task).__name__, shared["val"], shared["test"])
        return self._eval_sets

    def reference_metrics(self) -> dict[str, float]:
        """``<split>/chance_acc`` (and ``test/chance_acc_len<size>``): the task's order-blind chance
        level on the validation and test sets, so a capacity cell is read against the level a model
        reaches without solving the task (0.32-0.75 on the lookup tasks, not 1 / classes); and
        ``<split>/guess_acc`` (``test/guess_acc_len<size>``): what a guess that ignores the input
        scores, the floor of a set task's size curve, and for regression its error
        (``test/guess_mae_len<size>``). Each is left out where the task does not derive it."""
        sizes = {split: [size for _, _, size in examples] for split, examples in self.eval_sets().items()}
        return (self._levels("chance_acc", lambda split: self.task.chance_accuracy, sizes)
                | self._levels("guess_acc", lambda split: self.task.for_split(split).guess_accuracy, sizes)
                | self._levels("guess_mae", lambda split: self.task.for_split(split).guess_mae, sizes))

    def _levels(self, name: str, level_of: Callable[[str], Callable[[int], float | None]],
                sizes: dict[str, list[int]]) -> dict[str, float]:
        """``<split>/<name>`` (the mean level over the split's examples) and ``test/<name>_len<size>``
        from a task's per-size level (``level_of(split)``); empty where the task does not derive it."""
        levels: dict[str, dict[int, float]] = {}
        for split, drawn in sizes.items():
            of_size = level_of(split)
            for size in {*drawn, *(self.test_sizes if split == "test" else ())}:
                level = of_size(size)
                if level is None:
                    return {}
                levels.setdefault(split, {})[size] = level
        out = {f"{split}/{name}": float(np.mean([levels[split][n] for n in drawn])) for split, drawn in sizes.items()}
        return out | {f"test/{name}_len{size}": levels["test"][size] for size in self.test_sizes}

    def setup(self, stage: str | None = None) -> None:
        sets = self.eval_sets()
        self.val_set = FixedSet(sets["val"], self.task.regression)
        self.test_set = FixedSet(sets["test"], self.task.regression)
        self.train_set = DrawnSet(self.task.for_split("train"), self.train_sizes, self.num_train, self.seed,
                                  self._eval_keys)

    def train_sampler(self) -> DrawSampler:
        return DrawSampler(self.num_train, self.fresh_train, self.seed)

    def sample_length(self) -> int:
        return 1  # nothing worth generating: see write_samples

    def write_samples(self, samples: Tensor, directory: Path, prefix: str = "samples") -> list[Path]:
        """Nothing: a generative sampler would feed class ids back as input tokens, which means nothing."""
        log.info("classification data: prior samples are not written")
        return []
