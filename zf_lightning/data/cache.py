"""Everything that is preprocessed once and kept on disk (decoded audio, vocabularies and
encoded text) goes through this module, so every cache behaves alike:

- paths from configs are resolved against the folder the user launched from (Hydra may
  have moved the working directory);
- a cache lives in a folder named by a hash of the settings that made it (a changed setting
  gets a new folder), next to the data as ``<data>/.zf-cache`` or in a fallback folder when
  the preferred place is not writable (a read-only shared data folder is left alone, even
  by root);
- a cache folder is built under a temporary name and renamed into place, so an interrupted
  build never leaves a half-written cache under the real name, and concurrent builders are
  safe (the first rename wins);
- JSON is written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_SUBDIR = ".zf-cache"


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Absolute path; a relative one is taken from where the user launched the command.

    Hydra may change the working directory of a run, so relative config values are resolved
    against Hydra's original working directory when Hydra is running, else against the cwd.
    """
    from hydra.utils import to_absolute_path  # falls back to the cwd outside a Hydra run

    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute():
        p = Path(to_absolute_path(os.fspath(p)))
    return Path(os.path.normpath(p))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/zf-lightning`` (``~/.cache/zf-lightning``) when no config gives one."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zf-lightning"


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of JSON-serialisable settings."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_writable_dir(path: Path) -> bool:
    """Whether we may create files in ``path`` (or create ``path`` itself): the nearest existing
    ancestor must be a writable folder that carries a write bit (root passes ``os.access``
    everywhere, but a folder marked read-only, like a shared data folder, is respected)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    if not probe.is_dir():
        return False
    return os.access(probe, os.W_OK | os.X_OK) and bool(stat.S_IMODE(probe.stat().st_mode) & 0o222)


def first_writable(candidates: Sequence[Path]) -> Path:
    """The first candidate folder that is writable, created; warns when it is not the first."""
    for candidate in candidates:
        if is_writable_dir(candidate):
            try:
                candidate.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if candidate != candidates[0]:
                log.warning("cache dir %s is not writable; caching in %s instead", candidates[0], candidate)
            return candidate
    raise PermissionError(
        f"no writable cache folder among {[str(c) for c in candidates]}; pass a writable cache_dir"
    )


def fallback_cache_dirs(preferred: Path | None, data_dir: Path) -> list[Path]:
    """Where a cache may go, best first: ``preferred``, next to the data, the user cache, the temp dir."""
    candidates = [preferred] if preferred is not None else []
    return [*candidates, data_dir / CACHE_SUBDIR, default_cache_dir(), Path(tempfile.gettempdir()) / "zf-lightning"]


def atomic_write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write JSON under a temporary name, fsync, then ``os.replace``: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_name(final: Path) -> Path:
    """Where ``final`` is written before it is renamed into place: hidden, and naming the writer's
    pid and host, so a writer killed on this host leaves a temporary that can be recognised as
    stale, while one still being written on another host (a shared cache, SLURM) is left alone."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{socket.gethostname()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: Path) -> None:
    """Delete the temporary folders (or files) of ``final`` left by writers that were killed."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid, _, rest = tmp.name.rsplit(".tmp-", 1)[1].partition("-")
        host = rest.partition("-")[2]  # empty for temporaries named before the host was added
        if not pid.isdigit() or (host and host != socket.gethostname()):
            continue
        if not pid_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def build_atomically(final: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> None:
    """Run ``build(tmp)`` in a fresh temporary folder next to ``final``, then rename it to ``final``.

    ``complete(folder)`` says whether a folder holds a finished cache: when another process
    renamed its result into place first, that one is kept; a folder under the final name that
    is not complete (damaged by hand) is replaced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if complete(final):
                log.info("another process finished %s first; using it", final)
            else:
                shutil.rmtree(final)
                os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
