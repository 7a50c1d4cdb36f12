"""Framing: one-frame target shift, rows across file boundaries, whole utterances, masks, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures_audio import signal
from zf_lightning.data.audio.cache import Int16Stream, Int16StreamWriter
from zf_lightning.data.audio.framing import Normalizer, StreamChunks, Utterances, seeded_holdout
from zf_lightning.data.base import pad_collate

F = 10  # small frames keep the arithmetic readable


@pytest.fixture()
def ramp(tmp_path: Path) -> tuple[Int16Stream, np.ndarray]:
    """A stream whose sample i is i, so every position is recognisable after framing."""
    data = np.arange(1000, dtype=np.int16)
    with Int16StreamWriter(tmp_path / "ramp.npy") as w:
        w.append(data)
    return Int16Stream(tmp_path / "ramp.npy"), data


IDENTITY = Normalizer(mean=0.0, std=1.0 / 32768)  # int16 values come back unchanged


def test_stream_rows_have_targets_one_frame_ahead(ramp: tuple[Int16Stream, np.ndarray]) -> None:
    stream, _ = ramp
    ds = StreamChunks(stream, np.array([[0, 1000]]), F, seq_frames=4, normalizer=IDENTITY)
    assert len(ds) == (1000 - F) // (4 * F)  # the last row needs one frame past its inputs
    x, y, label = ds[2]
    assert x.shape == y.shape == (4, F) and label is None
    assert x[0, 0].item() == 80 and x[-1, -1].item() == 80 + 4 * F - 1
    torch.testing.assert_close(y[:-1], x[1:])
    assert y[-1, 0].item() == 80 + 4 * F  # runs into the next row's audio
    next_x, _, _ = ds[3]
    torch.testing.assert_close(y[-1], next_x[0])


def test_rows_concatenate_segments_virtually(ramp: tuple[Int16Stream, np.ndarray]) -> None:
    stream, data = ramp
    segments = np.array([[500, 30], [100, 25], [0, 60]])  # out of order, uneven
    ds = StreamChunks(stream, segments, F, seq_frames=2, normalizer=IDENTITY)
    virtual = np.concatenate([data[500:530], data[100:125], data[0:60]])
    assert len(ds) == (len(virtual) - F) // (2 * F)
    for i in range(len(ds)):
        x, y, _ = ds[i]
        np.testing.assert_array_equal(x.flatten().numpy(), virtual[i * 2 * F : i * 2 * F + 2 * F])
        np.testing.assert_array_equal(y.flatten().numpy(), virtual[i * 2 * F + F : i * 2 * F + 3 * F])


def test_utterances_are_trimmed_shifted_and_padded_with_masks(ramp: tuple[Int16Stream, np.ndarray]) -> None:
    stream, _ = ramp
    segments = np.array([[0, 57], [100, 15], [200, 31], [300, 9]])  # 5, 1, 3 and 0 whole frames
    ds = Utterances(stream, segments, F, IDENTITY, labels=[7, 8, 9, 10])
    assert len(ds) == 2 and ds.num_skipped == 2  # one frame leaves nothing to predict
    assert ds.steps().tolist() == [4, 2]
    x, y, label = ds[1]
    assert label == 9 and x.shape == (2, F)
    assert x[0, 0].item() == 200 and y[-1, -1].item() == 229  # trimmed to 3 frames: 200..229
    torch.testing.assert_close(y[:-1], x[1:])
    batch = pad_collate([ds[0], ds[1]])
    assert batch.inputs.shape == (2, 4, F)
    assert batch.mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.labels is not None and batch.labels.tolist() == [7, 9]
    assert batch.inputs[1, 2:].abs().sum().item() == 0


def test_chunked_evaluation_scores_exactly_the_whole_utterance_targets(
    ramp: tuple[Int16Stream, np.ndarray],
) -> None:
    stream, _ = ramp
    segments = np.array([[0, 97], [400, 250]])  # 8 and 24 scored steps
    whole = Utterances(stream, segments, F, IDENTITY)
    chunked = Utterances(stream, segments, F, IDENTITY, chunk_frames=5)
    assert chunked.steps().tolist() == [5, 3, 5, 5, 5, 5, 4]
    for u in range(2):
        _, y_whole, _ = whole[u]
        pieces = [chunked[i][1] for i in range(len(chunked)) if chunked.items[i, 0] == u]
        torch.testing.assert_close(torch.cat(pieces), y_whole)


def test_normalizer_round_trip() -> None:
    norm = Normalizer(mean=0.01, std=0.2)
    pcm = signal(500, seed=0)
    x = norm(pcm)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(norm.invert(x), pcm / 32768.0, atol=1e-6)


def test_seeded_holdout_sizes_and_determinism() -> None:
    keep, held = seeded_holdout(4620, 0.05, seed=1234)
    assert len(held) == 231 and len(keep) == 4389  # the TIMIT numbers
    assert np.intersect1d(keep, held).size == 0 and np.union1d(keep, held).tolist() == list(range(4620))
    _, held2 = seeded_holdout(4620, 0.05, seed=1234)
    np.testing.assert_array_equal(held, held2)
    _, other = seeded_holdout(4620, 0.05, seed=1)
    assert not np.array_equal(held, other)
    assert [len(h) for _, h in (seeded_holdout(n, 0.05, 0) for n in (2, 10, 30))] == [1, 1, 2]
    with pytest.raises(ValueError, match="fraction"):
        seeded_holdout(10, 1.0, 0)
