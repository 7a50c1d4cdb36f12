"""Blizzard: one stream of every file, position splits, train-only statistics, bounded reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures_audio import signal, write_nist, write_sound
from zf_lightning.data.audio import BlizzardDataModule, Int16Stream
from zf_lightning.data.audio.blizzard import position_splits
from zf_lightning.data.audio.io import read_audio, to_int16

ROW = 8000  # 40 frames of 200 samples


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """About 42 rows of audio in four files of different formats, one at 8 kHz and one stereo."""
    root = tmp_path / "blizzard"
    write_sound(root / "ch01" / "a.wav", signal(100_000, seed=1, level=0.05), 16000)
    write_sound(root / "ch01" / "b.flac", signal(90_000, seed=2, level=0.1, offset=0.02), 16000)
    write_sound(root / "ch02" / "c.wav", signal(40_000, seed=3, level=0.2), 8000)  # -> 80,000 samples
    write_sound(root / "ch02" / "d.wav", signal(70_000, seed=4, level=0.4, offset=-0.1, channels=2), 16000)
    return root


def _module(root: Path, tmp_path: Path, **kwargs: object) -> BlizzardDataModule:
    dm = BlizzardDataModule(root=root, cache_dir=tmp_path / "cache", batch_size=8, **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


def _expected_stream(root: Path) -> np.ndarray:
    files = ["ch01/a.wav", "ch01/b.flac", "ch02/c.wav", "ch02/d.wav"]
    return np.concatenate([to_int16(read_audio(root / f, 16000)) for f in files])


def test_one_stream_of_every_file_in_order_with_an_index(corpus: Path, tmp_path: Path) -> None:
    dm = _module(corpus, tmp_path)
    assert dm.corpus is not None and dm.spec.unit == "sequence" and dm.spec.dim == 200
    assert dm.corpus.files == ["ch01/a.wav", "ch01/b.flac", "ch02/c.wav", "ch02/d.wav"]
    assert dm.corpus.lengths().tolist() == [100_000, 90_000, 80_000, 70_000]
    np.testing.assert_array_equal(np.asarray(dm.corpus.stream.memmap()), _expected_stream(corpus))


def test_position_splits_rows_and_one_frame_shift(corpus: Path, tmp_path: Path) -> None:
    dm = _module(corpus, tmp_path)
    total = 340_000  # 42 whole rows
    ranges = position_splits(total, ROW, (0.9, 0.05, 0.05))
    assert ranges == [(0, 37 * ROW), (37 * ROW, 39 * ROW), (39 * ROW, total)]
    # No row reads across a split boundary: each split loses the row whose targets would.
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (36, 1, 3)
    x, y, label = dm.val_set[0]
    assert x.shape == y.shape == (40, 200) and label is None
    torch.testing.assert_close(y[:-1], x[1:])
    stream = _expected_stream(corpus)
    norm = dm.normalizer
    assert norm is not None
    start = 37 * ROW
    np.testing.assert_allclose(norm.invert(x).flatten(), stream[start : start + ROW] / 32768, atol=1e-6)
    shifted = stream[start + 200 : start + ROW + 200] / 32768
    np.testing.assert_allclose(norm.invert(y).flatten(), shifted, atol=1e-6)


def test_statistics_come_from_the_training_part_only(corpus: Path, tmp_path: Path) -> None:
    dm = _module(corpus, tmp_path)
    stream = _expected_stream(corpus).astype(np.float64) / 32768
    train = stream[: 37 * ROW]
    assert dm.stats is not None and dm.stats.count == len(train)
    assert dm.stats.mean == pytest.approx(train.mean(), rel=1e-9)
    assert dm.stats.std == pytest.approx(train.std(), rel=1e-9)
    assert abs(stream.std() - dm.stats.std) > 1e-3  # the louder last file is mostly test audio


def test_training_rows_are_read_in_order_without_loading_the_stream(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = _module(corpus, tmp_path)
    reads: list[tuple[int, int]] = []
    real_read = Int16Stream.read

    def recording_read(self: Int16Stream, start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return real_read(self, start, stop)

    def no_memmap(self: Int16Stream) -> np.ndarray:
        raise AssertionError("datasets must not map the whole stream")

    monkeypatch.setattr(Int16Stream, "read", recording_read)
    monkeypatch.setattr(Int16Stream, "memmap", no_memmap)
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=4, shuffle=False, collate_fn=lambda b: b)
    inputs = torch.cat([torch.stack([x for x, _, _ in batch]) for batch in loader])
    assert inputs.shape == (36, 40, 200)
    assert max(stop - start for start, stop in reads) == ROW + 200
    assert [start for start, _ in reads] == [i * ROW for i in range(36)]
    assert dm.normalizer is not None
    rebuilt = dm.normalizer.invert(inputs).flatten()
    np.testing.assert_allclose(rebuilt, _expected_stream(corpus)[: 36 * ROW] / 32768, atol=1e-6)


def test_shuffled_loader_yields_full_batches(corpus: Path, tmp_path: Path) -> None:
    dm = _module(corpus, tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape == (8, 40, 200) and batch.mask.eq(1).all() and batch.labels is None


def test_bad_inputs(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _module(tmp_path / "missing", tmp_path)
    empty = tmp_path / "empty"
    (empty / "docs").mkdir(parents=True)
    (empty / "docs" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"no audio files.*found at the top: docs/"):
        _module(empty, tmp_path)
    with pytest.raises(ValueError, match="summing to 1"):
        _module(corpus, tmp_path, split_fractions=(0.9, 0.1, 0.1))
    short = tmp_path / "short"
    write_nist(short / "a.sph", signal(30_000, seed=1))
    with pytest.raises(ValueError, match=r"30000 samples \(3 rows of 8000\) leaves no rows for \['val'\]"):
        _module(short, tmp_path)
    with pytest.raises(Exception, match=r"d\.wav: has 2 channels and downmix is off"):
        _module(corpus, tmp_path, downmix=False)
