"""Audio folders: split rules, labels, rates, sample writing, and the real FSDD recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import SHARED_DATA, require_shared
from tests.fixtures_audio import signal, write_sound
from zf_lightning.data.audio import AudioFolderDataModule, AudioReadError

SPEAKERS = ("ann", "bob", "cat")


@pytest.fixture()
def digits(tmp_path: Path) -> Path:
    """FSDD-shaped names ``{digit}_{speaker}_{index}.wav``: 3 digits x 3 speakers x 8 takes, 8 kHz."""
    root = tmp_path / "digits"
    seed = 0
    for d in range(3):
        for s, speaker in enumerate(SPEAKERS):
            for k in range(8):
                seed += 1
                pcm = signal(1500 + 40 * seed, seed, level=0.05 * (s + 1))
                write_sound(root / f"{d}_{speaker}_{k}.wav", pcm, 8000)
    return root


def _module(root: Path, tmp_path: Path, **kwargs: object) -> AudioFolderDataModule:
    kwargs.setdefault("sample_rate", 8000)
    dm = AudioFolderDataModule(root=root, cache_dir=tmp_path / "cache", batch_size=6, **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


def test_random_split_is_seeded_and_covers_every_file(digits: Path, tmp_path: Path) -> None:
    fractions = {"val_fraction": 0.25, "test_fraction": 0.25}
    dm = _module(digits, tmp_path, **fractions)
    sizes = {k: len(v) for k, v in dm.split_files.items()}
    assert sizes == {"train": 40, "val": 14, "test": 18}  # 72 files: 18 test, then round(25 % of 54)
    every = [f for files in dm.split_files.values() for f in files]
    assert sorted(every) == sorted(p.name for p in digits.glob("*.wav"))
    assert _module(digits, tmp_path, **fractions).split_files == dm.split_files
    assert _module(digits, tmp_path, **fractions, seed=3).split_files != dm.split_files
    assert dm.spec.unit == "sequence" and dm.spec.dim == 200


def test_regex_split_and_integer_labels(digits: Path, tmp_path: Path) -> None:
    dm = _module(digits, tmp_path, split="regex", test_pattern=r"_[0-4]\.wav$", label_pattern=r"^(\d+)_")
    assert len(dm.split_files["test"]) == 45 and all(f[-5] in "01234" for f in dm.split_files["test"])
    assert len(dm.split_files["val"]) == 3  # 10 % of the 27 others
    batch = next(iter(dm.test_dataloader()))
    assert batch.labels is not None
    assert batch.labels.tolist() == [int(f[0]) for f in dm.split_files["test"][:6]]


def test_speaker_split_and_string_labels(digits: Path, tmp_path: Path) -> None:
    dm = _module(
        digits, tmp_path, split="speakers", speaker_pattern=r"^\d+_([a-z]+)_", test_speakers=["cat"],
        val_speakers=["bob"], label_pattern=r"_([a-z]+)_",
    )
    speakers = {k: {f.split("_")[1] for f in v} for k, v in dm.split_files.items()}
    assert speakers == {"train": {"ann"}, "val": {"bob"}, "test": {"cat"}}
    assert dm.label_names == list(SPEAKERS)
    batch = next(iter(dm.val_dataloader()))
    assert batch.labels is not None and batch.labels.eq(1).all()
    only_test = _module(
        digits, tmp_path, split="speakers", speaker_pattern=r"^\d+_([a-z]+)_", test_speakers=["ann"]
    )
    assert {f.split("_")[1] for f in only_test.split_files["val"]} <= {"bob", "cat"}
    with pytest.raises(ValueError, match=r"speakers \['dan'\] not found.*\['ann', 'bob', 'cat'\]"):
        _module(digits, tmp_path, split="speakers", speaker_pattern=r"^\d+_([a-z]+)_", test_speakers=["dan"])


def test_every_pattern_is_matched_against_the_file_name_in_fsdds_layout(tmp_path: Path) -> None:
    """FSDD keeps its files in ``recordings/``: the documented speaker, test and label patterns
    (anchored with ^ at the name) work there exactly as on a flat folder."""
    root = tmp_path / "fsdd"
    for d in range(2):
        for s, speaker in enumerate(SPEAKERS):
            for k in range(6):
                pcm = signal(1200 + 50 * k, seed=100 * d + 10 * s + k)
                write_sound(root / "recordings" / f"{d}_{speaker}_{k}.wav", pcm, 8000)
    by_speaker = _module(root, tmp_path, split="speakers", speaker_pattern=r"^\d+_([a-z]+)_",
                         test_speakers=["cat"], label_pattern=r"^(\d+)_")
    assert {f.split("_")[1] for f in by_speaker.split_files["test"]} == {"cat"}
    assert all(f.startswith("recordings/") for f in by_speaker.split_files["train"])
    batch = next(iter(by_speaker.test_dataloader()))
    assert batch.labels is not None
    assert batch.labels.tolist() == [int(Path(f).name[0]) for f in by_speaker.split_files["test"][:6]]
    by_name = _module(root, tmp_path, split="regex", test_pattern=r"^1_.*_[0-2]\.wav$")
    assert sorted(Path(f).name for f in by_name.split_files["test"]) == sorted(
        f"1_{speaker}_{k}.wav" for speaker in SPEAKERS for k in range(3))


def test_statistics_from_training_files_only(digits: Path, tmp_path: Path) -> None:
    dm = _module(digits, tmp_path, split="speakers", speaker_pattern=r"^\d+_([a-z]+)_", test_speakers=["cat"])
    train = np.concatenate([sf.read(str(digits / f), dtype="int16")[0] for f in dm.split_files["train"]])
    assert dm.stats is not None
    assert dm.stats.std == pytest.approx(train.std() / 32768, rel=1e-9)
    assert dm.stats.std < 0.11  # the loud speaker (std 0.15) is held out


def test_whole_utterances_by_default_and_optional_cuts(digits: Path, tmp_path: Path) -> None:
    dm = _module(digits, tmp_path)
    steps = dm.train_set.steps()
    lengths = [len(sf.read(str(digits / f))[0]) // 200 - 1 for f in dm.split_files["train"]]
    assert steps.tolist() == lengths and dm.sample_length() == int(np.median(lengths))
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape[0] == 6 and batch.inputs.shape[2] == 200
    assert batch.mask.sum(1).max() == batch.inputs.shape[1]
    n = int(batch.lengths[0])
    torch.testing.assert_close(batch.targets[0, : n - 1], batch.inputs[0, 1:n])
    cut = _module(digits, tmp_path, max_train_frames=4)
    assert cut.train_set.steps().max() == 4 and cut.train_set.steps().sum() == steps.sum()
    stream = _module(digits, tmp_path, train_mode="stream", seq_frames=5)
    assert stream.train_set[0][0].shape == (5, 200) and stream.sample_length() == 5


def test_native_rate_and_resampling_of_odd_files(digits: Path, tmp_path: Path) -> None:
    write_sound(digits / "9_ann_0.flac", signal(3200, seed=1), 16000)
    native = _module(digits, tmp_path, sample_rate=None)
    assert native.output_rate == 8000 and native.corpus is not None
    i = native.corpus.files.index("9_ann_0.flac")
    assert native.corpus.lengths()[i] == 1600
    upsampled = _module(digits, tmp_path, sample_rate=16000)
    assert upsampled.corpus is not None and upsampled.corpus.lengths()[i] == 3200


def test_write_samples_denormalises_to_wav_and_draws_a_log_mel_png(digits: Path, tmp_path: Path) -> None:
    dm = _module(digits, tmp_path)
    assert dm.stats is not None
    frames = torch.randn(3, 7, 200, generator=torch.Generator().manual_seed(0)) * 0.5
    paths = dm.write_samples(frames, tmp_path / "out", prefix="prior")
    assert [p.name for p in paths] == ["prior_000.wav", "prior_001.wav", "prior_002.wav", "prior_logmel.png"]
    audio, rate = sf.read(str(paths[1]), dtype="float64")
    assert rate == 8000 and audio.shape == (1400,)
    expected = frames[1].flatten().numpy() * dm.stats.std + dm.stats.mean
    np.testing.assert_allclose(audio, expected, atol=1.0 / 32768 + 1e-6)
    png = paths[-1].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match=r"\[N, T, 200\]"):
        dm.write_samples(torch.zeros(2, 5, 100), tmp_path / "out")


def test_bad_folders_and_files(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"audio folder root .* does not exist"):
        _module(tmp_path / "missing", tmp_path)
    with pytest.raises(ValueError, match=r"no audio files.*\['\*\.ogg'\]"):
        _module(digits, tmp_path, patterns=["*.ogg"])
    with pytest.raises(ValueError, match=r"leaves \['test'\] empty"):
        _module(digits, tmp_path, split="regex", test_pattern=r"^nothing$")
    with pytest.raises(ValueError, match="split=regex needs test_pattern"):
        AudioFolderDataModule(root=digits, split="regex")
    (digits / "7_ann_0.wav").write_text("RIFF? no, a text file")
    with pytest.raises(AudioReadError, match=r"7_ann_0\.wav: not a readable audio file"):
        _module(digits, tmp_path)
    write_sound(digits / "7_ann_0.wav", signal(2000, seed=1, channels=2), 8000)
    with pytest.raises(AudioReadError, match=r"7_ann_0\.wav: has 2 channels"):
        _module(digits, tmp_path, downmix=False)
    assert _module(digits, tmp_path, downmix=True).corpus is not None


def _fsdd() -> Path:
    root = SHARED_DATA / "fsdd"
    require_shared(root / "recordings")
    return root


def test_fsdd_subset_batches_with_the_conventional_split(tmp_path: Path) -> None:
    root = _fsdd()
    dm = AudioFolderDataModule(
        root=root, sample_rate=8000, patterns=["*_george_[0-9].wav", "*_theo_[0-9].wav"],
        split="regex", test_pattern=r"_[0-4]\.wav$", label_pattern=r"^(\d+)_",
        cache_dir=tmp_path, cache_next_to_data=False, batch_size=16,
    )  # fmt: skip
    dm.setup()
    assert {k: len(v) for k, v in dm.split_files.items()} == {"train": 90, "val": 10, "test": 100}
    assert dm.corpus is not None and dm.corpus.directory.parent == tmp_path
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.shape[0] == 16 and batch.inputs.shape[2] == 200
    assert 3 <= int(batch.lengths.min()) and int(batch.lengths.max()) <= 60  # clips of ~0.1-1.5 s at 8 kHz
    assert batch.labels is not None and set(batch.labels.tolist()) <= set(range(10))
    frames = torch.cat([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert abs(frames.mean().item()) < 0.05 and abs(frames.std().item() - 1) < 0.05


def test_fsdd_held_out_speakers_with_the_documented_pattern(tmp_path: Path) -> None:
    root = _fsdd()
    dm = AudioFolderDataModule(
        root=root, sample_rate=8000, patterns=["*_theo_[0-4].wav", "*_jackson_[0-4].wav", "*_george_[0-4].wav"],
        split="speakers", speaker_pattern=r"^\d+_([a-z]+)_", test_speakers=["theo"], val_speakers=["george"],
        label_pattern=r"^(\d+)_", cache_dir=tmp_path, cache_next_to_data=False, batch_size=8,
    )  # fmt: skip
    dm.setup()
    speakers = {k: {Path(f).name.split("_")[1] for f in v} for k, v in dm.split_files.items()}
    assert speakers == {"train": {"jackson"}, "val": {"george"}, "test": {"theo"}}
    assert {k: len(v) for k, v in dm.split_files.items()} == {"train": 50, "val": 50, "test": 50}


@pytest.mark.slow
def test_fsdd_trains_a_few_steps_and_writes_wav_samples(tmp_path: Path) -> None:
    """The issue's check in miniature: data=audio_folder on FSDD -> metrics.json, WAV and PNG samples."""

    from zf_lightning.runs.pipeline import compose_config, train

    root = _fsdd()
    overrides = [
        "data=audio_folder", f"data.root={root}", "data.sample_rate=8000", "data.patterns=[*_jackson_1?.wav]",
        "data.cache_next_to_data=false", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path}",
        "logger=csv", "trainer.max_steps=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "data.batch_size=4", "samples.num=2", "model.rnn_dim=16", "model.z_dim=4", "model.emb_dim=8",
        "model.mlp_dim=8", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    cfg = compose_config("train", overrides)
    metrics = train(cfg)
    assert np.isfinite(metrics["test/neg_elbo"])
    wavs = sorted((tmp_path / "samples").glob("*.wav"))
    assert len(wavs) == 2 and (tmp_path / "samples" / "prior_logmel.png").is_file()
    audio, rate = sf.read(str(wavs[0]))
    assert rate == 8000 and audio.ndim == 1 and len(audio) % 200 == 0
    assert (tmp_path / "metrics.json").is_file()
