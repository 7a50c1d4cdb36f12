"""A decoded corpus on disk: one int16 stream, per-file offsets and sums, and a JSON of settings.

Layout of a cache folder (named ``<tag>-<key>``, key = hash of every setting that changes
the arrays, so a changed setting gets a new folder and an unchanged one re-opens):

    audio.npy    int16 [N]      every file decoded, resampled and concatenated in order
    offsets.npy  int64 [F + 1]  file i is audio[offsets[i]:offsets[i + 1]]
    sums.npy     int64 [F, 2]   per file: sum and sum of squares of its int16 samples
    meta.json                   settings, file list, corpus statistics

The folder is built under a temporary name and renamed into place with ``os.replace``, so
an interrupted run never leaves a half-written cache under the real name; a folder whose
arrays do not have the sizes its metadata says (damaged afterwards) is rebuilt. It is built next
to the data (``<root>/.zf-cache``) and falls back to ``cache_dir`` when the data folder is
read-only. Re-opening reads only the JSON and the small arrays; the stream is read on
demand with ``pread`` (no page of it is kept mapped, so memory stays bounded however
large the corpus) or memory-mapped with ``np.load(mmap_mode="r")`` by whoever wants that.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zf_lightning.data.audio.io import INT16_SCALE, decode, to_int16, torch_threads
from zf_lightning.data.cache import (
    CACHE_SUBDIR,
    atomic_write_json,
    build_atomically,
    default_cache_dir,
    is_writable_dir,
    settings_key,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STREAM_FILE = "audio.npy"
OFFSETS_FILE = "offsets.npy"
SUMS_FILE = "sums.npy"
META_FILE = "meta.json"
_READ_CHUNK = 1 << 22  # samples per read when scanning a range for statistics


@dataclass(frozen=True)
class AudioStats:
    """Scalar mean and standard deviation of audio in float units ([-1, 1] full scale)."""

    mean: float
    std: float
    count: int

    @classmethod
    def from_sums(cls, total: int, total_sq: int, count: int) -> AudioStats:
        """From exact integer sums of int16 samples (no float accumulation error)."""
        if count < 2:
            raise ValueError(f"need at least 2 samples for statistics, got {count}")
        mean = total / count
        var = max(total_sq / count - mean * mean, 0.0)
        std = var**0.5 / INT16_SCALE
        if std == 0.0:
            raise ValueError("the training audio is constant (standard deviation 0); cannot normalise it")
        return cls(mean=mean / INT16_SCALE, std=std, count=count)

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "count": self.count}


def _int_sums(x: np.ndarray) -> tuple[int, int]:
    wide = x.astype(np.int64)
    return int(wide.sum()), int(np.dot(wide, wide))


class Int16Stream:
    """Read-only int16 ``.npy`` stream, read by position with ``os.pread``.

    Picklable (it pickles as its path) and safe across DataLoader worker forks: each
    process opens its own descriptor on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if dtype != np.dtype("<i2") or len(shape) != 1 or fortran:
            raise ValueError(f"{self.path}: expected a 1-D little-endian int16 array, got {dtype} {shape}")
        self.length = int(shape[0])
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offset": self.offset, "length": self.length}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _fd=None, _pid=-1)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as a fresh int16 array."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"range [{start}, {stop}) outside stream of {self.length} samples")
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        nbytes = 2 * (stop - start)
        data = os.pread(self._fd, nbytes, self.offset + 2 * start)
        if len(data) != nbytes:
            raise OSError(f"{self.path}: short read at sample {start} (file changed or truncated?)")
        return np.frombuffer(data, dtype="<i2").copy()

    def memmap(self) -> np.ndarray:
        """The whole stream memory-mapped read-only (pages load only when touched)."""
        return np.load(self.path, mmap_mode="r")


class Int16StreamWriter:
    """Append int16 blocks to a ``.npy`` file whose length is only known at the end.

    The header is written with a zero length and rewritten on close; numpy pads headers
    so the length can grow in place, which we check.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.length = 0
        self._fh = open(self.path, "wb")
        self._header_len = self._write_header()

    def _write_header(self) -> int:
        self._fh.seek(0)
        header = {"descr": "<i2", "fortran_order": False, "shape": (self.length,)}
        np.lib.format.write_array_header_1_0(self._fh, header)
        return self._fh.tell()

    def append(self, block: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(block, dtype="<i2").tobytes())
        self.length += int(block.shape[0])

    def close(self) -> None:
        if self._fh.closed:
            return
        if self._write_header() != self._header_len:
            raise RuntimeError("npy header changed size; cannot finalise the stream in place")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> Int16StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class AudioCorpus:
    """An opened cache: the stream plus per-file offsets, sums and the settings that made it."""

    directory: Path
    stream: Int16Stream
    offsets: np.ndarray
    sums: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: Path) -> AudioCorpus:
        with open(directory / META_FILE) as fh:
            meta = json.load(fh)
        return cls(
            directory=directory,
            stream=Int16Stream(directory / STREAM_FILE),
            offsets=np.load(directory / OFFSETS_FILE),
            sums=np.load(directory / SUMS_FILE),
            meta=meta,
        )

    @property
    def files(self) -> list[str]:
        return list(self.meta["files"])

    @property
    def sample_rate(self) -> int:
        return int(self.meta["settings"]["sample_rate"])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def segments(self, indices: Iterable[int]) -> np.ndarray:
        """``[K, 2]`` int64 (start, length) of the given files in the stream."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return np.stack([self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]], axis=1)

    def file_stats(self, indices: Iterable[int]) -> AudioStats:
        """Statistics over whole files, from the stored per-file sums."""
        idx = np.asarray(list(indices), dtype=np.int64)
        total = sum(int(v) for v in self.sums[idx, 0])
        total_sq = sum(int(v) for v in self.sums[idx, 1])
        return AudioStats.from_sums(total, total_sq, int(self.lengths()[idx].sum()))

    def range_stats(self, start: int, stop: int) -> AudioStats:
        """Statistics over stream samples ``[start, stop)``: whole files from their sums, the
        partial files at either end by reading them in chunks (bounded memory)."""
        total = total_sq = 0
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for f in range(max(first, 0), len(self.offsets) - 1):
            a, b = int(self.offsets[f]), int(self.offsets[f + 1])
            if a >= stop:
                break
            lo, hi = max(a, start), min(b, stop)
            if lo == a and hi == b:
                s, q = int(self.sums[f, 0]), int(self.sums[f, 1])
            else:
                s = q = 0
                for c in range(lo, hi, _READ_CHUNK):
                    cs, cq = _int_sums(self.stream.read(c, min(c + _READ_CHUNK, hi)))
                    s, q = s + cs, q + cq
            total, total_sq = total + s, total_sq + q
        return AudioStats.from_sums(total, total_sq, stop - start)


def cache_problem(directory: Path) -> str | None:
    """Why the cache folder cannot be used as it is (None: it is complete and its arrays have the
    sizes its metadata says). A file cut short (a full disk, a copy that stopped) is caught here,
    instead of at the first batch of every run."""
    try:
        with open(directory / META_FILE) as fh:
            meta = json.load(fh)
        stream = Int16Stream(directory / STREAM_FILE)
        offsets, sums = np.load(directory / OFFSETS_FILE), np.load(directory / SUMS_FILE)
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable: {err}"
    n_files, n_samples = len(meta.get("files", [])), meta.get("num_samples")
    size = (directory / STREAM_FILE).stat().st_size
    if size != stream.offset + 2 * stream.length:
        return f"{STREAM_FILE} holds {size} bytes, its header says {stream.offset + 2 * stream.length}"
    if stream.length != n_samples:
        return f"{STREAM_FILE} holds {stream.length} samples, {META_FILE} says {n_samples}"
    if offsets.shape != (n_files + 1,) or int(offsets[-1]) != n_samples:
        return f"{OFFSETS_FILE} has shape {offsets.shape}, expected ({n_files + 1},) ending at {n_samples}"
    if sums.shape != (n_files, 2):
        return f"{SUMS_FILE} has shape {sums.shape}, expected ({n_files}, 2)"
    return None


def _fingerprint(root: Path, files: Sequence[str]) -> list[list[Any]]:
    """(path, size, mtime) of every file, so edited or replaced files trigger a rebuild."""
    rows: list[list[Any]] = []
    for rel in files:
        st = (root / rel).stat()
        rows.append([rel, st.st_size, st.st_mtime_ns])
    return rows


def _build(
    tmp: Path,
    root: Path,
    files: Sequence[str],
    settings: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> None:
    offsets = [0]
    sums: list[tuple[int, int]] = []
    with Int16StreamWriter(tmp / STREAM_FILE) as writer, torch_threads(1):
        for i, rel in enumerate(files):
            s = q = n = 0
            for block in decode(root / rel, settings["sample_rate"], settings["downmix"]):
                pcm = to_int16(block)
                writer.append(pcm)
                bs, bq = _int_sums(pcm)
                s, q, n = s + bs, q + bq, n + len(pcm)
            offsets.append(offsets[-1] + n)
            sums.append((s, q))
            if progress is not None:
                progress(i + 1, len(files))
    np.save(tmp / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
    np.save(tmp / SUMS_FILE, np.asarray(sums, dtype=np.int64).reshape(-1, 2))
    total = AudioStats.from_sums(sum(s for s, _ in sums), sum(q for _, q in sums), offsets[-1])
    meta = {
        "settings": settings,
        "files": list(files),
        "num_samples": offsets[-1],
        "seconds": offsets[-1] / settings["sample_rate"],
        "corpus_stats": total.as_dict(),
    }
    atomic_write_json(tmp / META_FILE, meta)


def open_or_build(
    root: Path,
    files: Sequence[str],
    *,
    tag: str,
    sample_rate: int,
    downmix: bool,
    cache_dir: Path | None = None,
    next_to_data: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AudioCorpus:
    """Open the cache for these files and settings, building it first if there is none.

    Looks next to the data (unless ``next_to_data`` is off), then in ``cache_dir``; builds
    in the first of those that is writable. Concurrent builders (e.g. one per GPU) are
    safe: the first rename wins and the others use its result.
    """
    if not files:
        raise ValueError(f"no audio files to prepare under {root}")
    settings = {
        "format": FORMAT_VERSION,
        "tag": tag,
        "root": os.fspath(root.resolve()),
        "sample_rate": int(sample_rate),
        "downmix": bool(downmix),
    }
    key = settings_key({**settings, "files": _fingerprint(root, files)})
    name = f"{tag}-{key}"
    candidates = [root / CACHE_SUBDIR / name] if next_to_data else []
    candidates.append((cache_dir or default_cache_dir()) / name)
    for final in candidates:
        if (final / META_FILE).is_file():
            problem = cache_problem(final)
            if problem is None:
                log.info("opening cached %s audio at %s", tag, final)
                return AudioCorpus.open(final)
            log.warning("the %s audio cache %s is damaged (%s); rebuilding it", tag, final, problem)
    errors: list[str] = []
    for final in candidates:
        if not is_writable_dir(final.parent):
            errors.append(f"{final.parent}: read-only")
            continue
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            errors.append(f"{final.parent}: {err.strerror or err}")
            continue
        log.info("preparing %d %s audio files into %s", len(files), tag, final)
        build_atomically(final, lambda tmp: _build(tmp, root, files, settings, progress),
                         complete=lambda folder: cache_problem(folder) is None)
        return AudioCorpus.open(final)
    raise PermissionError(
        "no writable place for the audio cache: " + "; ".join(errors) + ". Pass a writable cache_dir."
    )
