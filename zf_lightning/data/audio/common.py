"""What every audio data module shares: cache location, statistics, spec and sample writing."""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch
from torch import Tensor

from zf_lightning.data.audio.cache import AudioCorpus, AudioStats, open_or_build
from zf_lightning.data.audio.framing import Normalizer, StreamChunks, Utterances
from zf_lightning.data.audio.io import save_log_mel_png, write_wav
from zf_lightning.data.base import LoaderOptions, SequenceDataModule
from zf_lightning.data.cache import atomic_write_json, resolve_path, settings_key
from zf_lightning.types import DataSpec

log = logging.getLogger(__name__)


class AudioOptions(LoaderOptions, total=False):
    """``AudioDataModule``'s settings that every audio module passes on unchanged."""

    downmix: bool
    cache_next_to_data: bool


class AudioDataModule(SequenceDataModule):
    """Base for waveform data: steps are frames of ``frame_size`` samples, Gaussian output.

    Subclasses implement ``_prepare`` (find files, open or build the cache) and
    ``_build_splits`` (datasets and training statistics). ``prepare_data`` builds the cache
    once (rank 0 under Lightning); ``setup`` opens it, building it if nobody did.
    """

    seq_frames: int = 40  # frames per training row; subclasses that cut rows set their own

    unit = "sequence"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sample_rate: int | None,
        frame_size: int = 200,
        downmix: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_next_to_data: bool = True,
        **loader: Unpack[LoaderOptions],
    ) -> None:
        super().__init__(**loader)
        if frame_size < 1:
            raise ValueError(f"frame_size must be positive, got {frame_size}")
        if sample_rate is not None and sample_rate < 1:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.root = resolve_path(root)
        self.sample_rate = sample_rate
        self.frame_size = int(frame_size)
        self.downmix = bool(downmix)
        self.cache_dir = resolve_path(cache_dir) if cache_dir is not None else None
        self.cache_next_to_data = bool(cache_next_to_data)
        self.corpus: AudioCorpus | None = None
        self.stats: AudioStats | None = None
        self.normalizer: Normalizer | None = None

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="real", dim=self.frame_size, unit=self.unit, dims_per_step=self.frame_size)

    def _check_root(self, what: str, layout: str) -> None:
        if not self.root.exists():
            raise FileNotFoundError(f"{what} root {self.root} does not exist; expected {layout}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{what} root {self.root} is not a folder; expected {layout}")

    def _open_or_build(self, root: Path, files: list[str], tag: str, sample_rate: int) -> AudioCorpus:
        return open_or_build(
            root, files, tag=tag, sample_rate=sample_rate, downmix=self.downmix,
            cache_dir=self.cache_dir, next_to_data=self.cache_next_to_data,
        )

    @abstractmethod
    def _prepare(self) -> AudioCorpus:
        """Find the files and open (or build) the decoded cache."""

    @abstractmethod
    def _build_splits(self, corpus: AudioCorpus) -> dict[str, Any]:
        """Set ``stats``, ``normalizer`` and the three datasets; return a summary for the JSON."""

    def prepare_data(self) -> None:
        if self.corpus is None:  # already prepared and opened by setup()
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.corpus = self._prepare()
        summary = self._build_splits(self.corpus)
        assert self.stats is not None, "_build_splits must set the training statistics"
        summary = {**summary, "train_stats": self.stats.as_dict()}
        log.info("%s: %s", type(self).__name__, summary)
        self._record_summary(self.corpus, summary)

    def _record_summary(self, corpus: AudioCorpus, summary: dict[str, Any]) -> None:
        """Keep the split settings and training statistics next to the arrays (best effort:
        someone else's read-only cache is still usable)."""
        path = corpus.directory / f"splits-{settings_key(summary['settings'])}.json"
        if path.exists():
            return
        try:
            atomic_write_json(path, summary)
        except OSError as err:
            log.debug("could not record split summary at %s: %s", path, err)

    def _normalizer(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() first; the statistics come from the training split"
            )
        return self.normalizer

    @property
    def output_rate(self) -> int:
        """Sample rate of the prepared audio (and of written samples)."""
        if self.corpus is not None:
            return self.corpus.sample_rate
        if self.sample_rate is None:
            raise RuntimeError("sample rate unknown before setup()")
        return int(self.sample_rate)

    def sample_length(self) -> int:
        """Frames to generate: a training row (0.5 s by default), or the median training
        utterance when training on whole utterances."""
        if isinstance(self.train_set, Utterances) and len(self.train_set) > 0:
            return max(1, int(np.median(self.train_set.steps())))
        if isinstance(self.train_set, StreamChunks):
            return self.train_set.seq_frames
        return self.seq_frames

    def write_samples(self, samples: Tensor, directory: Path, prefix: str = "samples") -> list[Path]:
        """Write ``[N, T, frame_size]`` normalised frames as N WAV files plus one log-mel PNG.

        Frames are de-normalised with the training mean and standard deviation and joined
        into waveforms at the prepared sample rate; the PNG has one panel per sample.
        """
        if samples.dim() != 3 or samples.shape[-1] != self.frame_size:
            raise ValueError(f"samples must be [N, T, {self.frame_size}], got {tuple(samples.shape)}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        waves = self._normalizer().invert(samples.detach().to("cpu", torch.float32).flatten(1))
        rate = self.output_rate
        paths = [write_wav(directory / f"{prefix}_{i:03d}.wav", w, rate) for i, w in enumerate(waves)]
        paths.append(save_log_mel_png(directory / f"{prefix}_logmel.png", list(waves), rate, title=prefix))
        return paths
