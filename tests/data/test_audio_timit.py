"""TIMIT: layout discovery, the SRNN/Z-Forcing protocol (splits, statistics, framing), errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.fixtures_audio import make_timit_tree, signal, write_nist, write_sound
from zf_lightning.data.audio import AudioReadError, TimitDataModule
from zf_lightning.data.audio.cache import CACHE_SUBDIR
from zf_lightning.data.audio.timit import find_timit_files
from zf_lightning.runs.pipeline import compose_config


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path / "TIMIT"
    return root, make_timit_tree(root, train_speakers=6, test_speakers=2, sentences=5)


def _module(root: Path, tmp_path: Path, **kwargs: object) -> TimitDataModule:
    dm = TimitDataModule(root=root, cache_dir=tmp_path / "cache", batch_size=4, **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


def _pcm(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int16")[0].astype(np.float64) / 32768


def test_protocol_split_sizes_and_seeded_determinism(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    dm = _module(root, tmp_path)
    assert dm.spec.kind == "real" and dm.spec.dim == 200 and dm.spec.dims_per_step == 200
    assert dm.spec.unit == "utterance"
    sizes = {name: len(files) for name, files in dm.split_files.items()}
    assert sizes == {"train": 28, "val": 2, "test": 10}  # round(5 % of 30) held out; every test utterance
    assert (len(dm.val_set), len(dm.test_set)) == (2, 10)
    assert all(f.startswith("TRAIN/") for f in dm.split_files["val"])
    assert not set(dm.split_files["val"]) & set(dm.split_files["train"])
    assert _module(root, tmp_path).split_files == dm.split_files
    assert _module(root, tmp_path, seed=7).split_files["val"] != dm.split_files["val"]


def test_statistics_come_from_the_training_utterances_only(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, made = tree
    dm = _module(root, tmp_path)
    audio = np.concatenate([_pcm(root / f) for f in dm.split_files["train"]])
    assert dm.stats is not None
    assert dm.stats.mean == pytest.approx(audio.mean(), rel=1e-9)
    assert dm.stats.std == pytest.approx(audio.std(), rel=1e-9)
    with_val = np.concatenate([_pcm(root / f) for f in dm.split_files["train"] + dm.split_files["val"]])
    assert dm.stats.mean != pytest.approx(with_val.mean(), rel=1e-6)
    everything = np.concatenate([_pcm(p) for p in made["train"] + made["test"]])
    assert abs(everything.mean() - dm.stats.mean) > 1e-3  # test audio would have moved it


def test_training_rows_are_40_frames_of_concatenated_training_audio(
    tree: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = tree
    dm = _module(root, tmp_path)
    total = int(dm.train_set.segments[:, 1].sum())
    assert len(dm.train_set) == (total - 200) // 8000
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape == batch.targets.shape == (4, 40, 200)
    assert batch.mask.eq(1).all()
    torch.testing.assert_close(batch.targets[:, :-1], batch.inputs[:, 1:])
    frames = torch.cat([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert abs(frames.mean().item()) < 0.05 and abs(frames.std().item() - 1) < 0.05  # normalised


def test_validation_and_test_are_full_utterances_with_masks(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, made = tree
    dm = _module(root, tmp_path)
    lengths = sorted(len(_pcm(p)) // 200 - 1 for p in made["test"])
    assert sorted(dm.test_set.steps().tolist()) == lengths
    batch = next(iter(dm.test_dataloader()))
    assert batch.inputs.shape[1] == int(batch.mask.sum(1).max()) and batch.inputs.shape[2] == 200
    assert batch.lengths.tolist() == dm.test_set.steps()[:4].tolist()
    first = _pcm(sorted(made["test"], key=lambda p: str(p).upper())[0])
    expected = (first[200 : 200 * (len(first) // 200)] - dm.stats.mean) / dm.stats.std
    got = batch.targets[0, : batch.lengths[0]].flatten().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_chunked_evaluation_option(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tree
    full = _module(root, tmp_path)
    chunked = _module(root, tmp_path, eval_chunk_frames=10)
    assert chunked.spec.unit == "sequence"
    assert chunked.test_set.steps().max() == 10
    assert chunked.test_set.steps().sum() == full.test_set.steps().sum()


def test_case_insensitive_tree_with_converted_copies(tmp_path: Path) -> None:
    root = tmp_path / "timit"
    made = make_timit_tree(root, train_speakers=3, test_speakers=1, sentences=3, lower_case=True)
    # A converted RIFF copy next to one NIST original, and one utterance only as a .wav copy.
    original = made["train"][0]
    pcm = signal(6000, seed=123)
    write_sound(original.with_name(original.name + ".wav"), pcm, 16000)
    only_copy = made["test"][0].with_name("sx99.wav")
    write_sound(only_copy, signal(5000, seed=5), 16000)
    base, splits = find_timit_files(root)
    assert base == root and len(splits["train"]) == 9 and len(splits["test"]) == 4
    assert original.relative_to(root).as_posix() + ".wav" in splits["train"]
    assert original.relative_to(root).as_posix() not in splits["train"]
    assert only_copy.relative_to(root).as_posix() in splits["test"]


def test_tree_nested_one_level_down_and_other_rates_are_resampled(tmp_path: Path) -> None:
    outer = tmp_path / "download"
    make_timit_tree(outer / "data", train_speakers=2, test_speakers=1, sentences=3)
    odd = outer / "data" / "TEST" / "DR1" / "MAKS0" / "SX5.WAV"
    write_nist(odd, signal(4000, seed=9), sample_rate=8000)
    dm = _module(outer, tmp_path)
    assert dm.corpus is not None
    i = dm.corpus.files.index(odd.relative_to(outer / "data").as_posix())
    assert dm.corpus.lengths()[i] == 8000  # 0.5 s at 8 kHz -> 8,000 samples at 16 kHz
    assert (outer / "data" / CACHE_SUBDIR).is_dir()


def test_missing_root_and_non_timit_trees_explain_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*TRAIN/DR1\.\.DR8"):
        _module(tmp_path / "nowhere", tmp_path)
    flat = tmp_path / "flat"
    write_sound(flat / "a.wav", signal(4000, seed=1), 16000)
    (flat / "notes").mkdir()
    expected = r"not a TIMIT tree.*TRAIN/DR1\.\.DR8.*found at the top: a\.wav, notes/"
    with pytest.raises(ValueError, match=expected):
        _module(flat, tmp_path)
    no_dialects = tmp_path / "nodr"
    write_sound(no_dialects / "TRAIN" / "x" / "a.wav", signal(4000, seed=1), 16000)
    (no_dialects / "TEST").mkdir()
    with pytest.raises(ValueError, match=r"holds no utterances.*audio files seen: x/a\.wav"):
        _module(no_dialects, tmp_path)


def test_a_bad_file_in_the_tree_is_named_and_leaves_no_cache(tree: tuple[Path, dict], tmp_path: Path) -> None:
    root, made = tree
    bad = made["test"][3]
    bad.write_bytes(bad.read_bytes()[:1500])
    with pytest.raises(AudioReadError, match=rf"{bad.name}: truncated NIST SPHERE"):
        _module(root, tmp_path)
    assert list((root / CACHE_SUBDIR).iterdir()) == []


def test_config_composes_and_builds_the_module(tree: tuple[Path, dict], tmp_path: Path) -> None:
    from hydra.utils import instantiate

    root, _ = tree
    cfg = compose_config("train", ["data=timit", f"data.root={root}", f"paths.cache_dir={tmp_path}"])
    assert cfg.model.head._target_.endswith("GaussianHead")
    assert "defaults" not in cfg.data
    dm = instantiate(cfg.data)
    assert isinstance(dm, TimitDataModule) and dm.seed == 1234 and dm.val_fraction == 0.05
    assert (dm.batch_size, dm.seq_frames, dm.frame_size, dm.sample_rate) == (32, 40, 200, 16000)
