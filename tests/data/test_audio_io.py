"""Audio reading: formats, resampling (whole and blockwise), mono policy, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from tests.fixtures_audio import signal, write_nist, write_sound
from zf_lightning.data.audio.io import (
    AudioReadError,
    decode,
    find_files,
    read_audio,
    resample_blocks,
    to_int16,
)


@pytest.mark.parametrize("name", ["a.wav", "a.flac", "a.WAV.wav"])
def test_wav_flac_and_nist_decode_to_the_same_samples(tmp_path: Path, name: str) -> None:
    pcm = signal(3001, seed=1)
    nist = read_audio(write_nist(tmp_path / "a.WAV", pcm))
    other = read_audio(write_sound(tmp_path / name, pcm, 16000))
    assert nist.dtype == np.float32 and nist.shape == (3001,)
    np.testing.assert_array_equal(nist, other)
    np.testing.assert_array_equal(to_int16(nist), pcm)  # int16 -> float -> int16 is exact


def test_wrong_rate_is_resampled_to_the_requested_rate(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000.0
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t) * 32767).astype(np.int16)
    out = read_audio(write_sound(tmp_path / "tone.wav", tone, 8000), sample_rate=16000)
    assert out.shape == (16000,)
    ref = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000.0)
    inner = slice(200, -200)  # edges see zero padding
    assert np.abs(out[inner] - ref[inner]).max() < 5e-3


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (8000, 16000), (16000, 16000 * 3 // 4)])
def test_blockwise_resampling_equals_resampling_the_whole_signal(orig: int, new: int) -> None:
    x = np.random.default_rng(0).standard_normal(10_007).astype(np.float32)
    whole = AF.resample(torch.from_numpy(x), orig, new).numpy()
    pieces = iter(np.array_split(x, 7))  # uneven reads, as from a file
    blocks = list(resample_blocks(pieces, orig, new, block=1000))
    assert len(blocks) > 3
    joined = np.concatenate(blocks)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, atol=2e-5)


def test_stereo_is_downmixed_or_refused(tmp_path: Path) -> None:
    pcm = signal(1000, seed=2, channels=2)
    path = write_sound(tmp_path / "stereo.flac", pcm, 16000)
    mono = read_audio(path, downmix=True)
    np.testing.assert_allclose(mono, pcm.astype(np.float32).mean(axis=1) / 32768, atol=1e-6)
    with pytest.raises(AudioReadError, match=r"stereo\.flac.*2 channels.*downmix"):
        read_audio(path, downmix=False)


def _truncate(path: Path, keep: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "empty file"),
        ("text", "not a readable audio file"),
        ("truncated_wav", "truncated WAV"),
        ("truncated_nist", "truncated NIST SPHERE"),
        ("header_only", "not a readable audio file"),
        ("no_samples", "no audio samples"),
        ("missing", "no such file"),
    ],
)
def test_bad_files_raise_an_error_that_names_the_file(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / f"bad_{kind}.wav"
    pcm = signal(4000, seed=3)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a transcript, not audio\n" * 20)
    elif kind == "truncated_wav":
        _truncate(write_sound(path, pcm, 16000), 44 + 3001)
    elif kind == "truncated_nist":
        _truncate(write_nist(path, pcm), 1024 + 2000)
    elif kind == "header_only":
        _truncate(write_sound(path, pcm, 16000), 30)
    elif kind == "no_samples":
        sf.write(str(path), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioReadError, match=message) as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_truncated_flac_fails_while_decoding_and_names_the_file(tmp_path: Path) -> None:
    path = write_sound(tmp_path / "cut.flac", signal(40_000, seed=4), 16000)
    _truncate(path, path.stat().st_size // 2)
    with pytest.raises(AudioReadError, match=r"cut\.flac"):
        read_audio(path)


def test_long_files_are_decoded_in_blocks(tmp_path: Path) -> None:
    pcm = signal(16000 * 3, seed=5)
    path = write_sound(tmp_path / "long.wav", pcm, 16000)
    blocks = list(decode(path, block_seconds=1.0))
    assert [len(b) for b in blocks] == [16000, 16000, 16000]
    resampled = list(decode(path, sample_rate=8000, block_seconds=1.0))
    assert len(resampled) >= 3 and sum(len(b) for b in resampled) == 24000


def test_find_files_is_case_insensitive_recursive_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["a.wav", "sub/B.WAV", "sub/c.flac", "sub/notes.txt", ".zf-cache/x.wav", "sub/.hidden.wav"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert find_files(tmp_path, ["*.wav"]) == ["a.wav", "sub/B.WAV"]
    assert find_files(tmp_path, ["*.wav", "*.FLAC"]) == ["a.wav", "sub/B.WAV", "sub/c.flac"]
    assert find_files(tmp_path, ["sub/*"]) == ["sub/B.WAV", "sub/c.flac", "sub/notes.txt"]


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), [(".mp3", "MP3", None), (".ogg", "OGG", "VORBIS")])
def test_compressed_formats_libsndfile_supports(
    tmp_path: Path, suffix: str, fmt: str, subtype: str | None
) -> None:
    t = np.arange(16000) / 16000.0
    tone = (0.3 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)
    path = tmp_path / f"tone{suffix}"
    try:
        sf.write(str(path), tone, 16000, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as err:
        pytest.skip(f"this libsndfile cannot write {fmt}: {err}")
    out = read_audio(path, sample_rate=8000)
    assert abs(len(out) - 8000) <= 600  # lossy codecs may pad a frame
    assert 0.15 < np.abs(out).max() < 0.45
