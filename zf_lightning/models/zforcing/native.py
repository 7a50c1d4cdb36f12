"""The optional C++ step loops of ``PlainRecurrence`` (``native_loop.cpp``), built on first use.

At the sizes the studies run, each step's products take tens of microseconds, so part of the
Python loop's time is the fixed cost of calling each operation from Python. The extension runs
the same loops over the same buffers with the same ATen kernels and products, so it computes
what the Python loop does, bit for bit (the tests hold the two equal); it only removes that cost.
It also holds the Gaussian NLL's elementwise kernels (``distributions._GaussianNLL`` and
``_TanhGaussianNLL``), the latent terms' (``latent._LatentDensities``) and the matrix
product ``matmul_into`` (``zf_lightning.models.products``: oneDNN's float32 products where they are
faster than ATen's), which run wherever the library is already loaded (``loaded_native``), the Python
loops' products included, so the two loops still compute the same.

It is compiled once per machine with ``torch.utils.cpp_extension`` (needs a C++ compiler and
ninja) and kept in torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default under
``~/.cache/torch_extensions``) under a name that changes with the source, the flags, torch and
Python, so an edit or an upgrade builds anew; later processes load the cached library. Each
build runs in a directory of its own and the library enters the cache by an atomic rename, so
processes starting together never wait on each other's lock (a killed build cannot leave one
behind). If it cannot be built, ``native_loops`` logs why once and returns None, and the model
runs the Python loop: a missing compiler never stops a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_loop.cpp")
# no fused multiply-add: each multiply and add rounds as the ATen ops of the Python loop do
CFLAGS = ["-O3", "-ffp-contract=off"]


@dataclass(frozen=True)
class NativeLoops:
    """The extension's two loops (``torch.ops.zf_native``), held in a plain object: autocast's input
    casting would turn the iterable op namespace itself into a generator."""

    forward_loop: Callable[..., None]
    backward_loop: Callable[..., None]
    gaussian_terms: Callable[..., None]
    gaussian_backward: Callable[..., None]
    matmul_into: Callable[..., None]
    latent_forward: Callable[..., None]
    latent_backward: Callable[..., None]
    tanh_gaussian_forward: Callable[..., None]
    tanh_gaussian_backward: Callable[..., None]


_lock = threading.Lock()
_loaded: dict[str, NativeLoops | None] = {}


def native_loops(verbose: bool = False) -> NativeLoops | None:
    """The C++ ``forward_loop`` and ``backward_loop``, building the extension the
    first time on this machine and loading it the first time in this process; None, with one
    log line, if it cannot be built or loaded."""
    with _lock:
        if "ops" not in _loaded:
            _loaded["ops"] = _load(verbose)
        return _loaded["ops"]


def loaded_native() -> NativeLoops | None:
    """The extension if this process has already loaded it (a model running its native loops), else
    None: never builds, so code that only profits from it (the Gaussian terms) triggers no build."""
    return _loaded.get("ops")


def library_path() -> Path:
    """Where the built library is cached: the name says which source, flags, torch and Python built it."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), *CFLAGS, torch.__version__, sys.version, platform.machine()]).encode()
    ).hexdigest()[:16]
    return Path(root) / "zf_native_loop" / f"zf_native_loop_{key}.so"


def _load(verbose: bool) -> NativeLoops | None:
    try:
        path = library_path()
        if path.exists():
            torch.ops.load_library(str(path))
        else:
            _build(path, verbose)  # which also loads it
        ops = torch.ops.zf_native
        return NativeLoops(
            ops.forward_loop,
            ops.backward_loop,
            ops.gaussian_terms,
            ops.gaussian_backward,
            ops.matmul_into,
            ops.latent_forward,
            ops.latent_backward,
            ops.tanh_gaussian_forward,
            ops.tanh_gaussian_backward,
        )
    except Exception as err:  # no compiler, no ninja, a failed build: the Python loop does the same work
        lines = str(err).strip().splitlines()
        log.warning(
            "native Z-Forcing loop unavailable, using the Python loop (%s%s)",
            type(err).__name__,
            f": {lines[-1]}" if lines else "",
        )
        return None


def _build(path: Path, verbose: bool) -> None:
    """Compile and load the library from a fresh directory, then move it into the cache in one rename."""
    from torch.utils import cpp_extension

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix="build-") as build:
        name = path.stem
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            build_directory=build,
            is_python_module=False,
            is_standalone=False,
            verbose=verbose,
        )
        staged = Path(build) / f"{name}.staged"
        shutil.copyfile(Path(build) / f"{name}.so", staged)
        os.replace(staged, path)
