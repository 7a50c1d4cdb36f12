"""Small audio fixtures in the real on-disk formats: NIST SPHERE, WAV and FLAC.

Signals are seeded noise with a per-file level and offset, so statistics over different
subsets of files differ and a test can tell which files went into them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

NIST_HEADER_BYTES = 1024


def signal(n: int, seed: int, level: float = 0.1, offset: float = 0.0, channels: int = 1) -> np.ndarray:
    """Seeded int16 noise ``[n]`` (or ``[n, channels]``) around ``offset`` with std ``level``."""
    rng = np.random.default_rng(seed)
    x = offset + level * rng.standard_normal((n, channels) if channels > 1 else n)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def write_nist(path: Path, pcm: np.ndarray, sample_rate: int = 16000, sample_count: int | None = None,
               ) -> Path:
    """A NIST SPHERE file as TIMIT ships it: 1024-byte ``NIST_1A`` header, little-endian int16.

    ``sample_count`` overrides the header's count (to fake a truncated file).
    """
    pcm = np.asarray(pcm, dtype="<i2")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    frames = pcm.shape[0] if sample_count is None else sample_count
    fields = [
        "NIST_1A",
        f"{NIST_HEADER_BYTES:7d}",
        "database_id -s5 TIMIT",
        f"sample_count -i {frames}",
        f"sample_rate -i {sample_rate}",
        f"channel_count -i {channels}",
        "sample_n_bytes -i 2",
        "sample_byte_format -s2 01",
        "sample_coding -s3 pcm",
        "sample_sig_bits -i 16",
        "end_head",
    ]
    header = ("\n".join(fields) + "\n").encode("ascii")
    assert len(header) <= NIST_HEADER_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.ljust(NIST_HEADER_BYTES, b" ") + pcm.tobytes())
    return path


def write_sound(path: Path, pcm: np.ndarray, sample_rate: int) -> Path:
    """WAV or FLAC (from the suffix; ``X.WAV.wav`` is a WAV) with 16-bit samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    sf.write(str(path), pcm, sample_rate, subtype="PCM_16", format=fmt)
    return path


def make_timit_tree(
    root: Path,
    train_speakers: int = 4,
    test_speakers: int = 2,
    sentences: int = 5,
    seconds: float = 0.3,
    sample_rate: int = 16000,
    lower_case: bool = False,
) -> dict[str, list[Path]]:
    """A TIMIT-shaped tree of NIST SPHERE files, ``TRAIN|TEST/DR<n>/<SPEAKER>/<SENTENCE>.WAV``.

    Training files have level 0.1 and offset 0.01, test files level 0.3 and offset -0.05,
    so statistics that leak test audio are easy to spot. Lengths vary per file. Every
    folder also holds a ``.PHN`` transcription that readers must ignore.
    """
    made: dict[str, list[Path]] = {"train": [], "test": []}
    seed = 0
    layout = (("TRAIN", train_speakers, 0.1, 0.01), ("TEST", test_speakers, 0.3, -0.05))
    for split, speakers, level, offset in layout:
        for s in range(speakers):
            speaker_dir = root / split / f"DR{s % 2 + 1}" / f"M{'ABCDEFGHIJ'[s]}KS0"
            for k in range(sentences):
                seed += 1
                n = int(seconds * sample_rate) + 37 * seed
                name = f"SI{1000 + k}.WAV"
                target = speaker_dir / name
                if lower_case:
                    target = root / str(target.relative_to(root)).lower()
                path = write_nist(target, signal(n, seed, level, offset), sample_rate)
                (path.parent / (path.name.split(".")[0] + ".PHN")).write_text("0 100 h#\n")
                made[split.lower()].append(path)
    return made
