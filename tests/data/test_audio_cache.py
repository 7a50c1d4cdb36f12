"""The decoded-corpus cache: layout, reuse, invalidation, read-only fallback, atomic builds."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_audio import signal, write_nist, write_sound
from zf_lightning.data.audio import cache as cache_mod
from zf_lightning.data.audio.cache import (
    CACHE_SUBDIR,
    META_FILE,
    AudioStats,
    Int16Stream,
    Int16StreamWriter,
    open_or_build,
)


def _corpus(root: Path) -> tuple[list[str], list[np.ndarray]]:
    pcms = [signal(1000 + 100 * i, seed=i, level=0.05 * (i + 1)) for i in range(4)]
    write_nist(root / "a.WAV", pcms[0])
    write_sound(root / "b.wav", pcms[1], 16000)
    write_sound(root / "c.flac", pcms[2], 16000)
    write_sound(root / "sub" / "d.wav", pcms[3], 16000)
    return ["a.WAV", "b.wav", "c.flac", "sub/d.wav"], pcms


@pytest.fixture()
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every file the cache builder decodes."""
    calls: list[Path] = []
    real = cache_mod.decode

    def counting(path: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "decode", counting)
    return calls


def test_stream_offsets_sums_and_meta_match_the_files(tmp_path: Path) -> None:
    files, pcms = _corpus(tmp_path / "data")
    corpus = open_or_build(tmp_path / "data", files, tag="t", sample_rate=16000, downmix=True)
    assert corpus.directory.parent == tmp_path / "data" / CACHE_SUBDIR
    joined = np.concatenate(pcms)
    np.testing.assert_array_equal(corpus.stream.read(0, len(joined)), joined)
    np.testing.assert_array_equal(np.asarray(corpus.stream.memmap()), joined)
    assert corpus.offsets.tolist() == [0, *np.cumsum([len(p) for p in pcms]).tolist()]
    np.testing.assert_array_equal(corpus.segments([2])[0], [len(pcms[0]) + len(pcms[1]), len(pcms[2])])
    meta = json.loads((corpus.directory / META_FILE).read_text())
    assert meta["files"] == files and meta["settings"]["sample_rate"] == 16000
    assert meta["num_samples"] == len(joined)
    assert meta["corpus_stats"]["mean"] == pytest.approx(joined.mean() / 32768, abs=1e-12)


def test_file_and_range_statistics_are_exact(tmp_path: Path) -> None:
    files, pcms = _corpus(tmp_path / "data")
    corpus = open_or_build(tmp_path / "data", files, tag="t", sample_rate=16000, downmix=True)
    sub = np.concatenate([pcms[1], pcms[3]]).astype(np.float64) / 32768
    stats = corpus.file_stats([1, 3])
    assert stats.count == len(sub)
    assert stats.mean == pytest.approx(sub.mean(), rel=1e-12)
    assert stats.std == pytest.approx(sub.std(), rel=1e-9)
    joined = np.concatenate(pcms).astype(np.float64) / 32768
    a, b = 500, len(joined) - 700  # partial first and last file, whole files between
    rs = corpus.range_stats(a, b)
    assert rs.count == b - a
    assert rs.mean == pytest.approx(joined[a:b].mean(), rel=1e-12)
    assert rs.std == pytest.approx(joined[a:b].std(), rel=1e-9)


def test_unchanged_settings_reopen_without_decoding(tmp_path: Path, decode_calls: list[Path]) -> None:
    files, _ = _corpus(tmp_path / "data")
    first = open_or_build(tmp_path / "data", files, tag="t", sample_rate=16000, downmix=True)
    assert len(decode_calls) == 4
    again = open_or_build(tmp_path / "data", files, tag="t", sample_rate=16000, downmix=True)
    assert len(decode_calls) == 4 and again.directory == first.directory


@pytest.mark.parametrize("change", ["sample_rate", "downmix", "file_list", "file_content"])
def test_a_changed_setting_or_file_rebuilds(tmp_path: Path, decode_calls: list[Path], change: str) -> None:
    root = tmp_path / "data"
    files, _ = _corpus(root)
    kwargs = {"tag": "t", "sample_rate": 16000, "downmix": True}
    first = open_or_build(root, files, **kwargs)  # type: ignore[arg-type]
    decode_calls.clear()
    if change == "sample_rate":
        kwargs["sample_rate"] = 8000
    elif change == "downmix":
        kwargs["downmix"] = False
    elif change == "file_list":
        files = files[:3]
    else:
        write_sound(root / "b.wav", signal(1234, seed=99), 16000)
    second = open_or_build(root, files, **kwargs)  # type: ignore[arg-type]
    assert second.directory != first.directory
    assert len(decode_calls) == len(files)
    if change == "sample_rate":
        assert len(second.stream) == pytest.approx(len(first.stream) / 2, abs=4)


def test_read_only_data_folder_falls_back_to_cache_dir(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files, _ = _corpus(root)
    cache = tmp_path / "cache"
    os.chmod(root, 0o555)
    try:
        corpus = open_or_build(root, files, tag="t", sample_rate=16000, downmix=True, cache_dir=cache)
        assert corpus.directory.parent == cache
        assert not (root / CACHE_SUBDIR).exists()
        reopened = open_or_build(root, files, tag="t", sample_rate=16000, downmix=True, cache_dir=cache)
        assert reopened.directory == corpus.directory
        os.chmod(cache, 0o555)
        with pytest.raises(PermissionError, match="writable cache_dir"):
            open_or_build(root, files[:2], tag="t", sample_rate=16000, downmix=True, cache_dir=cache)
    finally:
        os.chmod(root, 0o755)
        os.chmod(tmp_path / "cache", 0o755)


def test_interrupted_build_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    files, _ = _corpus(root)
    real = cache_mod.decode
    seen: list[Path] = []

    def interrupted(path: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_or_build(root, files, tag="t", sample_rate=16000, downmix=True)
    assert list((root / CACHE_SUBDIR).iterdir()) == []
    monkeypatch.setattr(cache_mod, "decode", real)
    corpus = open_or_build(root, files, tag="t", sample_rate=16000, downmix=True)
    assert (corpus.directory / META_FILE).is_file()


def test_temp_folders_of_killed_builders_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files, _ = _corpus(root)
    final = open_or_build(root, files, tag="t", sample_rate=16000, downmix=True).directory
    shutil.rmtree(final)
    # A builder killed by SIGKILL leaves its temp folder; pid 2**22 + 1 is above Linux's pid_max.
    stale = final.parent / f".{final.name}.tmp-{2**22 + 1}-deadbeef"
    stale.mkdir()
    (stale / "audio.npy").write_bytes(b"partial")
    # the same, named the current way (with the host), and one from a builder on another host
    here = final.parent / f".{final.name}.tmp-{2**22 + 1}-deadbeef-{socket.gethostname()}"
    elsewhere = final.parent / f".{final.name}.tmp-{2**22 + 1}-deadbeef-another-node-7"
    here.mkdir()
    elsewhere.mkdir()
    rebuilt = open_or_build(root, files, tag="t", sample_rate=16000, downmix=True)
    assert rebuilt.directory == final and (final / META_FILE).is_file()
    assert not stale.exists() and not here.exists()
    assert elsewhere.exists()  # another host's builder may still be writing it


def test_stream_writer_and_reader_round_trip_and_pickle(tmp_path: Path) -> None:
    blocks = [signal(n, seed=n) for n in (5, 0, 17, 3)]
    with Int16StreamWriter(tmp_path / "s.npy") as w:
        for b in blocks:
            w.append(b)
    joined = np.concatenate(blocks)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), joined)
    stream = Int16Stream(tmp_path / "s.npy")
    clone = pickle.loads(pickle.dumps(stream))
    assert len(pickle.dumps(stream)) < 500  # pickles as a path, never as data
    np.testing.assert_array_equal(clone.read(4, 20), joined[4:20])
    with pytest.raises(IndexError):
        stream.read(0, len(joined) + 1)


def test_stats_reject_constant_audio() -> None:
    with pytest.raises(ValueError, match="constant"):
        AudioStats.from_sums(total=10 * 5, total_sq=10 * 25, count=10)
