"""Shared machinery for data modules: padding collate and the common DataModule API."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from zf_lightning.types import DataSpec, SequenceBatch

# One example: (inputs [T, D] or [T], targets like inputs, label or None).
SequenceItem = tuple[Tensor, Tensor, Tensor | int | None]


def pad_collate(items: Sequence[SequenceItem]) -> SequenceBatch:
    """Pad a list of variable-length examples into one batch-first ``SequenceBatch``."""
    if not items:
        raise ValueError("pad_collate got an empty list of examples")
    lengths = [int(x.shape[0]) for x, _, _ in items]
    max_len = max(lengths)
    first_in, first_tg, _ = items[0]
    inputs = first_in.new_zeros((len(items), max_len, *first_in.shape[1:]))
    targets = first_tg.new_zeros((len(items), max_len, *first_tg.shape[1:]))
    mask = torch.zeros(len(items), max_len)
    for i, ((x, y, _), n) in enumerate(zip(items, lengths, strict=True)):
        inputs[i, :n] = x
        targets[i, :n] = y
        mask[i, :n] = 1.0
    labels = None
    if all(lbl is not None for _, _, lbl in items):
        labels = torch.as_tensor([int(lbl) for _, _, lbl in items], dtype=torch.long)
    return SequenceBatch(inputs=inputs, targets=targets, mask=mask, labels=labels)


class EpochSampler(Sampler[int]):
    """The training order of one epoch as a function of ``(seed, epoch)`` alone, so a resumed run
    reads the same examples in the same order as one that never stopped.

    Lightning calls ``set_epoch`` before every epoch. ``resume_at`` makes the next pass over the
    given epoch start after the examples its checkpoint had already trained on (the batches
    already used are skipped, the rest come in the order they would have)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, examples_done: int) -> None:
        """Continue with ``epoch``, whose pass skips its first ``examples_done`` examples (once)."""
        self.epoch = epoch
        self._resume = (epoch, examples_done)

    def order(self) -> list[int]:
        """Every index of the epoch, in the order it is read: a permutation seeded by seed and epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1]:]
            self._resume = None
        return iter(order)


class LoaderOptions(TypedDict, total=False):
    """The loader settings every data module hands to ``SequenceDataModule`` unchanged; subclasses
    take them as ``**loader: Unpack[LoaderOptions]`` instead of repeating the four parameters."""

    batch_size: int
    eval_batch_size: int | None
    num_workers: int
    pin_memory: bool


class SequenceDataModule(L.LightningDataModule):
    """Base class: subclasses build ``train_set``/``val_set``/``test_set`` in ``setup``.

    Every loader yields ``SequenceBatch``. ``spec`` must be available right after
    construction (or after ``prepare_data``) because the model is built from it.
    Subclasses with equal-length sequences may set ``collate_fn`` to a faster stacker.
    """

    collate_fn: Callable[[Sequence[SequenceItem]], SequenceBatch] = staticmethod(pad_collate)

    def __init__(
        self,
        *,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.order_seed = 0
        self._resume: tuple[int, int] | None = None

    @property
    @abstractmethod
    def spec(self) -> DataSpec:
        """Kind, size and reporting unit of the sequences this module yields."""

    def write_samples(self, samples: Tensor, directory: Path, prefix: str = "samples") -> list[Path]:
        """Render model samples ``[N, T, D]`` (or ``[N, T]`` tokens) to files; returns paths.

        The default writes a tensor file; data modules override it with a native format
        (PNG grid for images, WAV for audio, text for words).
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}.pt"
        torch.save(samples.detach().cpu(), path)
        return [path]

    def seed_order(self, seed: int) -> None:
        """The seed of the training order (the run's seed): epoch e reads a permutation of
        ``(seed, e)``, drawn from its own generator and never from the global random state."""
        self.order_seed = int(seed)

    def resume_at(self, epoch: int, batches_done: int, processes: int = 1) -> None:
        """Continue a run mid-epoch: the next pass over ``epoch`` skips the batches its checkpoint
        had trained on (``processes``: data-parallel processes, each of which read a batch)."""
        self._resume = (int(epoch), int(batches_done) * self.batch_size * max(1, int(processes)))

    def train_sampler(self) -> EpochSampler:
        """Which training examples an epoch reads, and in which order."""
        return EpochSampler(len(self.dataset("train")), self.order_seed)  # type: ignore[arg-type]

    def _loader(self, dataset: Dataset | None, split: str, sampler: EpochSampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: the {split} split is not set up; call setup() first")
        if sampler is not None and self._resume is not None:
            sampler.resume_at(*self._resume)
            self._resume = None
        # During training, loaders have generators of their own: starting an epoch or a validation
        # then draws nothing from the global random state, so a resumed run samples what the run
        # that never stopped did (Lightning may build the validation iterator again on resume).
        # The test loader keeps torch's default, so older checkpoints evaluate as they did.
        generator = torch.Generator().manual_seed(self.order_seed) if split != "test" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=self.collate_fn,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def dataset(self, split: str) -> Dataset:
        """The ``train``, ``val`` or ``test`` dataset, setting the module up for it if needed."""
        stages = {"train": "fit", "val": "fit", "test": "test"}
        if split not in stages:
            raise ValueError(f"split must be train, val or test, got {split!r}")
        sets = lambda: {"train": self.train_set, "val": self.val_set, "test": self.test_set}  # noqa: E731
        if sets()[split] is None:
            self.setup(stages[split])
        dataset = sets()[split]
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {split} split after setup()")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", self.train_sampler() if self.train_set is not None else None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def transfer_batch_to_device(
        self, batch: SequenceBatch, device: torch.device, dataloader_idx: int
    ) -> SequenceBatch:
        return batch.to(device)

    def sample_length(self) -> int:
        """Number of steps to generate when sampling from the prior (e.g. pixels per image)."""
        return 40

    def sample_first_input(self, n: int) -> Tensor | None:
        """Input at t=0 for generation (e.g. the <bos> token); None means zeros."""
        return None

    def exact_log_likelihood(self, split: str) -> Tensor | None:
        """log p(x) of every sequence of ``split`` ([N], in loader order) where the data's true
        model is known (the LGSSM), so bounds can be compared with the truth; None elsewhere."""
        return None

    def reference_metrics(self) -> dict[str, float]:
        """Data-only reference numbers reported next to the model's (e.g. an independent-pixel
        baseline, an exact likelihood), keyed like metrics, e.g. ``test/independent_bernoulli_nll``."""
        return {}
