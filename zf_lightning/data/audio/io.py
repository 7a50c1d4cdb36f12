"""Audio files in, mono 16-bit audio at one sample rate out; samples back out as WAV and PNG.

Everything is decoded with ``soundfile`` (libsndfile: WAV, FLAC, NIST SPHERE as TIMIT ships
it, MP3/OGG where the library supports them) and resampled with torchaudio. Long files are
decoded block by block so that preparing a corpus never holds more than one block of audio.
Every failure names the file, because a corpus of thousands of files is useless to debug
otherwise.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from math import ceil, gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

# Lower-case suffixes that libsndfile can decode; used by the default folder patterns.
AUDIO_SUFFIXES = (".wav", ".flac", ".sph", ".nist", ".mp3", ".ogg", ".aif", ".aiff", ".au")
INT16_SCALE = 32768.0
# torchaudio's default sinc kernel, whose support bounds the block overlap we need.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99
# Data-chunk sizes written by streaming encoders that did not know the length yet.
_UNKNOWN_WAV_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


class AudioReadError(ValueError):
    """A file is not usable audio (empty, truncated, not audio, refused); the message names it."""


def find_files(root: Path, patterns: Sequence[str]) -> list[str]:
    """Relative POSIX paths under ``root`` matching any glob pattern, case-insensitively, sorted.

    Patterns are matched against the relative path with ``fnmatch`` (``*`` also crosses
    ``/``, so ``*.wav`` finds files at any depth). Hidden files and folders (our own cache
    among them) are skipped.
    """
    lowered = [p.lower() for p in patterns]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (rel_dir / name).as_posix()
            if any(fnmatch.fnmatchcase(rel.lower(), p) for p in lowered):
                found.append(rel)
    return sorted(found)


def describe_folder(root: Path, limit: int = 10) -> str:
    """What is actually under ``root``: top-level entries and a few audio files, for error messages."""
    entries = sorted(p.name + ("/" * p.is_dir()) for p in root.iterdir() if not p.name.startswith("."))
    audio: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        audio.extend((rel_dir / f).as_posix() for f in sorted(filenames)
                     if f.lower().endswith(AUDIO_SUFFIXES))
        if len(audio) > limit:
            break
    shown = ", ".join(entries[:limit]) + (" ..." if len(entries) > limit else "") or "nothing"
    examples = ", ".join(audio[:limit]) or "no audio files"
    return f"found at the top: {shown}; audio files seen: {examples}"


def _nist_declared_frames(path: Path) -> int | None:
    """``sample_count`` from a NIST SPHERE header, which libsndfile silently clamps."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head.startswith(b"NIST_1A"):
        return None
    match = re.search(rb"sample_count\s+-i\s+(\d+)", head)
    return int(match.group(1)) if match else None


def _check_complete(path: Path, snd: sf.SoundFile) -> None:
    """Refuse files whose header promises more audio than the file holds (a cut-off copy)."""
    if snd.format == "NIST":
        declared = _nist_declared_frames(path)
        if declared is not None and declared > snd.frames:
            raise AudioReadError(
                f"{path}: truncated NIST SPHERE file: header declares {declared} samples, "
                f"the file holds {snd.frames}"
            )
    elif snd.format in ("WAV", "WAVEX"):
        # libsndfile reports a clamped data chunk as "data : <declared> (should be <actual>)".
        match = re.search(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)", snd.extra_info)
        if match:
            declared, actual = int(match.group(1)), int(match.group(2))
            if declared not in _UNKNOWN_WAV_SIZES and actual < declared:
                raise AudioReadError(
                    f"{path}: truncated WAV file: header declares {declared} bytes of audio, "
                    f"the file holds {actual}"
                )


def _native_blocks(path: Path, snd: sf.SoundFile, downmix: bool, block: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks at the file's own rate."""
    if snd.channels > 1 and not downmix:
        raise AudioReadError(
            f"{path}: has {snd.channels} channels and downmix is off (data.downmix=false); "
            "set data.downmix=true to average the channels into one"
        )
    while True:
        try:
            data = snd.read(block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioReadError(f"{path}: cannot decode audio data ({err})") from err
        if data.shape[0] == 0:
            return
        yield data[:, 0].copy() if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def resample_margin(orig_rate: int, new_rate: int) -> int:
    """Input samples of context each side of a block that make blockwise resampling exact.

    torchaudio's output frame i reads inputs [i*o - w, i*o + w + o) in rate-reduced units;
    a margin of at least w + o (rounded to a multiple of o) covers it.
    """
    g = gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    width = ceil(_LOWPASS_WIDTH * o / (min(o, n) * _ROLLOFF))
    return o * (ceil((width + o) / o) + 1)


def resample_blocks(
    blocks: Iterator[np.ndarray], orig_rate: int, new_rate: int, block: int
) -> Iterator[np.ndarray]:
    """Resample a stream of blocks so that the result equals resampling the whole signal at once.

    Each output block is computed from its input block plus ``resample_margin`` samples of
    context on both sides, so memory stays at about one block however long the file is.
    """
    import torchaudio.functional as AF

    g = gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    margin = resample_margin(orig_rate, new_rate)
    step = max(o, block // o * o)
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # global input index of buf[0]
    done = 0  # inputs before this index have had their output emitted (a multiple of o)
    eof = False
    while True:
        while not eof and buf_start + len(buf) < done + step + margin:
            nxt = next(blocks, None)
            if nxt is None:
                eof = True
            else:
                buf = np.concatenate([buf, nxt])
        available = buf_start + len(buf)
        end = available if eof else done + step
        if end <= done:
            return
        lo = max(0, done - margin)
        hi = available if eof else end + margin
        seg = torch.from_numpy(buf[lo - buf_start : hi - buf_start])
        out = AF.resample(seg, o, n, lowpass_filter_width=_LOWPASS_WIDTH, rolloff=_ROLLOFF).numpy()
        first = (done - lo) * n // o
        last = len(out) if eof else (end - lo) * n // o
        yield out[first:last]
        if eof:
            return
        done = end
        drop = max(0, done - margin - buf_start)
        buf = buf[drop:]
        buf_start += drop


def decode(
    path: Path, sample_rate: int | None = None, downmix: bool = True, block_seconds: float = 60.0
) -> Iterator[np.ndarray]:
    """Yield the file as mono float32 blocks in [-1, 1] at ``sample_rate`` (None: the file's rate).

    Raises ``AudioReadError`` naming the file when it is missing, empty, truncated, not
    audio, multi-channel with ``downmix`` off, or fails to decode part-way.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioReadError(f"{path}: empty file (0 bytes)")
    try:
        snd = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioReadError(f"{path}: not a readable audio file ({err})") from err
    with snd:
        _check_complete(path, snd)
        if snd.frames == 0:
            raise AudioReadError(f"{path}: contains no audio samples")
        rate = snd.samplerate
        block = max(1, int(block_seconds * rate))
        blocks = _native_blocks(path, snd, downmix, block)
        if sample_rate is None or sample_rate == rate:
            yield from blocks
        else:
            yield from resample_blocks(blocks, rate, int(sample_rate), block)


def read_audio(path: Path, sample_rate: int | None = None, downmix: bool = True) -> np.ndarray:
    """The whole file as one mono float32 array (see ``decode``)."""
    return np.concatenate(list(decode(path, sample_rate, downmix)))


def native_rate(path: Path) -> int:
    """Sample rate stored in the file's header."""
    try:
        return int(sf.info(os.fspath(path)).samplerate)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioReadError(f"{path}: not a readable audio file ({err})") from err


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops on ``n`` intra-op threads, then restore the setting.

    Preparing a corpus resamples thousands of short files; each call is far too small to
    gain from threads, and on a busy machine thread hand-offs make it many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 by rounding, clipping what falls outside."""
    return np.clip(np.rint(audio * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio (clipped to [-1, 1]) as 16-bit PCM WAV."""
    sf.write(os.fspath(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


def save_log_mel_png(path: Path, waveforms: Sequence[np.ndarray], sample_rate: int, title: str = "") -> Path:
    """One log-mel spectrogram panel per waveform (25 ms windows, 10 ms hop) in a PNG.

    Uses matplotlib's Agg canvas directly, so no global backend is switched and it works
    on machines without a display.
    """
    import torchaudio.transforms as T
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_fft = max(16, round(0.025 * sample_rate))
    hop = max(1, round(0.010 * sample_rate))
    n_mels = 80 if sample_rate >= 16000 else 40
    mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    fig = Figure(figsize=(8, 1.8 * max(1, len(waveforms))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(waveforms)), 1, squeeze=False)[:, 0]
    for i, (ax, wave) in enumerate(zip(axes, waveforms, strict=False)):
        spec = mel(torch.as_tensor(np.asarray(wave), dtype=torch.float32))
        log_spec = torch.log(spec + 1e-6).numpy()
        seconds = len(wave) / sample_rate
        ax.imshow(log_spec, origin="lower", aspect="auto", extent=(0.0, seconds, 0, n_mels), cmap="magma")
        ax.set_ylabel(f"#{i} mel")
    axes[-1].set_xlabel("seconds")
    if title:
        fig.suptitle(title)
    fig.savefig(os.fspath(path), dpi=100)
    return path
