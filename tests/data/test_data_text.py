"""Word-level text data: tokenizer, vocabulary, sequence layout, caching, corpora readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA, require_shared
from zf_lightning.data.cache import CACHE_SUBDIR, fallback_cache_dirs, first_writable
from zf_lightning.data.text import sentences as text
from zf_lightning.data.text.imdb import ImdbDataModule
from zf_lightning.data.text.sentences import SentencesDataModule
from zf_lightning.data.text.tokens import Vocab, split_sentences, tokenize
from zf_lightning.runs.pipeline import compose_config

# -- tokenizer and sentence splitter -----------------------------------------------------


def test_tokenize_lowercases_removes_line_breaks_and_splits_punctuation() -> None:
    tokens = tokenize("I LOVED it!<br /><br />Co-writer/director didn't care, really...")
    assert tokens == [
        "i", "loved", "it", "!", "co-writer", "/", "director", "didn't", "care", ",", "really", ".", ".", ".",
    ]  # fmt: skip


def test_tokenize_keeps_pretokenized_text_unchanged() -> None:
    line = 'the rock is destined to be the 21st century\'s new " conan " .'
    assert tokenize(line) == line.split()


def test_split_sentences_at_breaks_and_end_marks() -> None:
    review = 'Great film. Really!<br /><br />He said "no." Then he left?  yes'
    assert split_sentences(review) == ["Great film.", "Really!", 'He said "no."', "Then he left?", "yes"]
    assert split_sentences("<br /><br />") == []


# -- vocabulary ----------------------------------------------------------------------------


def test_vocab_keeps_top_k_words_after_specials() -> None:
    sentences = [["b", "a", "c"], ["a", "b", "a"], ["d"]]  # a:3, b:2, c:1, d:1
    vocab = Vocab.build(sentences, max_words=3)
    assert vocab.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    assert vocab.tokens[4:] == ["a", "b", "c"]  # the c/d tie is broken alphabetically
    assert len(vocab) == 7
    assert vocab.encode(["a", "d", "zzz", "c"]) == [4, vocab.unk_id, vocab.unk_id, 6]


def test_vocab_decode_skips_pad_bos_and_stops_at_eos() -> None:
    vocab = Vocab(["hello", "world"])
    ids = [vocab.bos_id, 4, vocab.unk_id, 5, vocab.eos_id, 4, vocab.pad_id]
    assert vocab.decode(ids) == "hello <unk> world"
    assert vocab.ids_to_tokens(ids, stop_at_eos=False) == ["hello", "<unk>", "world", "<eos>", "hello"]


def test_vocab_json_roundtrip_and_validation(tmp_path: Path) -> None:
    vocab = Vocab.build([["x", "y", "x", "é"]], max_words=10)
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab
    with pytest.raises(ValueError, match="special"):
        Vocab(["<unk>", "a"])
    with pytest.raises(ValueError, match="first tokens"):
        Vocab.from_dict({"tokens": ["a", "b"]})


# -- sentence files --------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def unique_word_corpus(tmp_path: Path) -> list[Path]:
    """Two labelled files; every sentence ends in a word used nowhere else (``uniqN``)."""
    a = [f"the film was good fun uniq{i}" for i in range(20)]
    b = [f"a movie that is bad uniq{100 + i}" for i in range(20)]
    return [write_lines(tmp_path / "a.txt", [*a, ""]), write_lines(tmp_path / "b.txt", b)]


def make_sentences(files: list[Path], tmp_path: Path, **kwargs: object) -> SentencesDataModule:
    args: dict[str, object] = {"cache_dir": str(tmp_path / "cache"), "batch_size": 8, "vocab_size": 1000}
    args.update(kwargs)
    return SentencesDataModule(files=[str(f) for f in files], **args)


def decoded_split(dm: SentencesDataModule, split: str) -> list[tuple[str, int]]:
    dataset = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    assert dataset is not None
    return [(dm.decode(dataset[i][1].tolist()), int(dataset[i][2])) for i in range(len(dataset))]


def test_vocabulary_comes_from_training_split_only(unique_word_corpus: list[Path], tmp_path: Path) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path, split=[0.6, 0.2, 0.2])
    dm.setup()
    train, test = decoded_split(dm, "train"), decoded_split(dm, "test")
    assert (len(train), len(decoded_split(dm, "val")), len(test)) == (24, 8, 8)  # empty line skipped
    for sentence, _ in train:
        assert sentence.split()[-1].startswith("uniq")
    for sentence, _ in test:  # its unique word was never seen in training
        assert sentence.split()[-1] == "<unk>"
        assert "uniq" not in sentence
    train_words = {s.split()[-1] for s, _ in train}
    assert all(w in dm.vocab for w in train_words)


def test_split_is_stratified_seeded_and_labels_follow_files(
    unique_word_corpus: list[Path], tmp_path: Path
) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path, split=[0.5, 0.25, 0.25], seed=3)
    dm.setup()
    for split in ("train", "val", "test"):
        items = decoded_split(dm, split)
        labels = [label for _, label in items]
        assert labels.count(0) == labels.count(1)  # stratified: 10/10, 5/5, 5/5
        for sentence, label in items:
            assert sentence.startswith("the film") if label == 0 else sentence.startswith("a movie")
    again = make_sentences(unique_word_corpus, tmp_path / "other", split=[0.5, 0.25, 0.25], seed=3)
    again.setup()
    assert decoded_split(again, "train") == decoded_split(dm, "train")
    reseeded = make_sentences(unique_word_corpus, tmp_path / "other", split=[0.5, 0.25, 0.25], seed=4)
    reseeded.setup()
    assert sorted(decoded_split(reseeded, "train")) != sorted(decoded_split(dm, "train"))


def test_batches_have_bos_eos_padding_and_masks(unique_word_corpus: list[Path], tmp_path: Path) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.dtype == torch.int64 and batch.targets.dtype == torch.int64
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape
    assert batch.labels is not None and set(batch.labels.tolist()) <= {0, 1}
    for i, n in enumerate(batch.lengths.tolist()):
        assert batch.inputs[i, 0] == dm.bos_id
        assert batch.targets[i, n - 1] == dm.eos_id
        assert torch.equal(batch.inputs[i, 1:n], batch.targets[i, : n - 1])  # targets lead inputs by one
        assert batch.mask[i, :n].eq(1).all() and batch.mask[i, n:].eq(0).all()
        assert batch.inputs[i, n:].eq(dm.pad_id).all() and batch.targets[i, n:].eq(dm.pad_id).all()
        assert n == 7  # 6 words + <eos>
    assert dm.pad_id == 0 and len({dm.pad_id, dm.bos_id, dm.eos_id, dm.unk_id}) == 4


def test_max_len_drops_or_truncates(tmp_path: Path) -> None:
    files = [write_lines(tmp_path / "s.txt", ["one two", "one two three four five six seven"])]
    common = {"split": [1.0, 0.0, 0.0], "max_len": 4}
    dropped = make_sentences(files, tmp_path, length_policy="drop", **common)
    dropped.setup()
    assert [s for s, _ in decoded_split(dropped, "train")] == ["one two"]
    truncated = make_sentences(files, tmp_path, length_policy="truncate", **common)
    truncated.setup()
    assert truncated.train_set is not None
    by_length = sorted((truncated.train_set[i] for i in range(2)), key=lambda item: len(item[0]))
    short, long = by_length
    assert short[1].tolist()[-1] == truncated.eos_id and len(short[1]) == 3
    assert len(long[0]) == 4 and long[0][0] == truncated.bos_id
    assert truncated.decode(long[1].tolist()) == "one two three four"
    assert truncated.eos_id not in long[1].tolist()  # it did not end there
    with pytest.raises(ValueError, match="length_policy"):
        make_sentences(files, tmp_path, length_policy="cut")


def test_top_k_limit_in_module(tmp_path: Path) -> None:
    files = [write_lines(tmp_path / "s.txt", ["a a a b b c", "a b d"])]
    dm = make_sentences(files, tmp_path, split=[1.0, 0.0, 0.0], vocab_size=2)
    assert dm.vocab.tokens[4:] == ["a", "b"]
    assert dm.spec.dim == 6 and dm.spec.kind == "tokens" and dm.spec.unit == "word"
    assert dm.spec.dims_per_step == 1


def test_spec_before_setup_and_cache_reuse(
    unique_word_corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path)
    assert dm.train_set is None
    spec = dm.spec  # builds lazily, before setup()
    assert spec.dim == len(dm.vocab)
    cache = dm.cache_path
    assert (cache / "vocab.json").is_file() and (cache / "done").is_file()
    stats = json.loads((cache / "settings.json").read_text())["stats"]
    assert stats["train"]["sentences"] == 32 and stats["vocab"] == len(dm.vocab)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was read again instead of loading the cache")

    monkeypatch.setattr(text, "_read_lines", fail)
    again = make_sentences(unique_word_corpus, tmp_path)
    assert again.vocab == dm.vocab and again.cache_path == cache
    monkeypatch.undo()
    changed = make_sentences(unique_word_corpus, tmp_path, vocab_size=5)
    assert changed.cache_path != cache and len(changed.vocab) == 9


def test_cache_falls_back_when_preferred_dir_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = first_writable(fallback_cache_dirs(blocker / "cache", tmp_path / "data"))
    assert root == tmp_path / "data" / CACHE_SUBDIR and root.is_dir()


def test_cache_skips_read_only_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o555)  # read-only by its bits, which is respected even when running as root
    try:
        root = first_writable(fallback_cache_dirs(None, data))
        assert not str(root).startswith(str(data))
    finally:
        data.chmod(0o755)


def test_relative_paths_resolve_from_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lines(tmp_path / "p.txt", ["good"])
    monkeypatch.chdir(tmp_path)
    dm = SentencesDataModule(files=["p.txt"], cache_dir="cache", split=[1.0, 0.0, 0.0])
    assert dm.files == [tmp_path / "p.txt"]
    assert dm.cache_path.parent == tmp_path / "cache"


def test_missing_file_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*one sentence per line"):
        SentencesDataModule(files=[str(tmp_path / "nope.txt")])
    with pytest.raises(ValueError, match="split"):
        SentencesDataModule(files=[str(write_lines(tmp_path / "x.txt", ["a"]))], split=[0.5, 0.5, 0.5])


def test_write_samples_decodes_until_eos(unique_word_corpus: list[Path], tmp_path: Path) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path)
    good, film = dm.vocab.encode(["good", "film"])
    samples = torch.tensor([[good, film, dm.eos_id, good], [film, film, film, film], [dm.eos_id, good, 0, 0]])
    (path,) = dm.write_samples(samples, tmp_path / "out", prefix="prior")
    assert path == tmp_path / "out" / "prior.txt"
    assert path.read_text().split("\n") == ["good film", "film film film film", "", ""]


def test_encode_sentence_and_checkpoint_state(unique_word_corpus: list[Path], tmp_path: Path) -> None:
    dm = make_sentences(unique_word_corpus, tmp_path)
    inputs, targets, label = dm.encode_sentence("The FILM was great!")
    assert label is None
    assert dm.decode(inputs.tolist()) == "the film was <unk> <unk>"
    assert targets.tolist()[-1] == dm.eos_id and len(inputs) == len(targets) == 6
    state = dm.state_dict()
    dm.load_state_dict(state)  # same vocabulary: accepted
    with pytest.raises(ValueError, match="vocabulary"):
        dm.load_state_dict({"vocab": Vocab(["other"]).to_dict()})


# -- IMDB ---------------------------------------------------------------------------------------


def make_imdb(root: Path, n_train: int = 5, n_test: int = 2, n_unsup: int = 2) -> Path:
    """A tiny aclImdb tree; every sentence names its review (``rev<folder><k>``)."""
    layout = {"train/pos": n_train, "train/neg": n_train, "test/pos": n_test, "test/neg": n_test,
              "train/unsup": n_unsup}  # fmt: skip
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        tag = folder.replace("/", "")
        for k in range(n):
            mood = {"pos": "great", "neg": "awful", "unsup": "some"}[folder.split("/")[1]]
            review = f"A {mood} film rev{tag}{k}.<br /><br />I mean it rev{tag}{k}! Really rev{tag}{k}"
            (root / folder / f"{k}_{7 if mood == 'great' else 2}.txt").write_text(review)
    (root / "imdb.vocab").write_text("the\n")
    return root


def test_imdb_reader_splits_reviews_into_labelled_sentences(tmp_path: Path) -> None:
    root = make_imdb(tmp_path / "aclImdb")
    dm = ImdbDataModule(root=str(root), val_fraction=0.2, cache_dir=str(tmp_path / "cache"), batch_size=4)
    dm.setup()
    train, val, test = (decoded_split(dm, s) for s in ("train", "val", "test"))  # type: ignore[arg-type]
    assert (len(train), len(val), len(test)) == (3 * 8, 3 * 2, 3 * 4)  # reviews x 3 sentences
    for items in (train, val, test):
        labels = [label for _, label in items]
        assert labels.count(1) == labels.count(0)
        for sentence, label in items:
            if sentence.startswith("a "):
                assert sentence.split()[1] == ("great" if label == 1 else "awful")
    for sentence, label in train:
        tag = sentence.split()[-2] if sentence.endswith((".", "!")) else sentence.split()[-1]
        assert tag.startswith("revtrain") and ("pos" in tag) == (label == 1)
    # Whole reviews are held out: exactly one review per label has no sentence in training.
    train_tags = {f"revtrain{folder}{k}" for folder in ("pos", "neg") for k in range(5)}
    unseen = sorted(t for t in train_tags if t not in dm.vocab)
    assert len(unseen) == 2 and unseen[0].startswith("revtrainneg") and unseen[1].startswith("revtrainpos")
    assert all(s.split()[-1] in ("<unk>", ".", "!") for s, _ in val + test)
    assert dm.label_names == ["neg", "pos"]
    batch = next(iter(dm.test_dataloader()))
    assert batch.labels is not None and batch.inputs[:, 0].eq(dm.bos_id).all()


def test_imdb_unsup_reviews_join_training_unlabelled(tmp_path: Path) -> None:
    root = make_imdb(tmp_path / "aclImdb")
    dm = ImdbDataModule(root=str(root), val_fraction=0.2, use_unsup=True, cache_dir=str(tmp_path / "c"))
    dm.setup()
    labels = [label for _, label in decoded_split(dm, "train")]
    assert labels.count(-1) == 2 * 3 and labels.count(1) == labels.count(0) == 4 * 3
    assert "some" in dm.vocab


def test_imdb_subset_per_class(tmp_path: Path) -> None:
    root = make_imdb(tmp_path / "aclImdb", n_train=6, n_test=4)
    cache = str(tmp_path / "c")
    dm = ImdbDataModule(root=str(root), val_fraction=0.5, max_reviews_per_class=2, cache_dir=cache)
    dm.setup()
    assert dm.train_set is not None and dm.val_set is not None and dm.test_set is not None
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (2 * 3, 2 * 3, 4 * 3)


def test_imdb_layout_errors_show_expected_and_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*train/pos"):
        ImdbDataModule(root=str(tmp_path / "missing"))
    parent = tmp_path / "download"
    make_imdb(parent / "aclImdb")
    expected = r"not an aclImdb tree.*Found in .*aclImdb/.*Did you mean"
    with pytest.raises(FileNotFoundError, match=expected) as info:
        ImdbDataModule(root=str(parent))
    assert "train/neg" in str(info.value)
    broken = make_imdb(tmp_path / "broken")
    for f in (broken / "test" / "neg").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"missing or empty \['test/neg'\]"):
        ImdbDataModule(root=str(broken))


# -- configs and real data ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sentences", "imdb"])
def test_data_configs_compose_with_the_categorical_head(name: str) -> None:
    cfg = compose_config("train", [f"data={name}"])
    cls = "SentencesDataModule" if name == "sentences" else "ImdbDataModule"
    assert cfg.data._target_ == f"zf_lightning.data.text.{name}.{cls}"
    assert cfg.model.head._target_.endswith("CategoricalHead")
    assert "defaults" not in cfg.data


def test_rt_polarity_batches(tmp_path: Path) -> None:
    folder = SHARED_DATA / "rt-polarity"
    require_shared(folder / "rt-polarity.neg", folder / "rt-polarity.pos")
    files = [str(folder / "rt-polarity.neg"), str(folder / "rt-polarity.pos")]
    dm = SentencesDataModule(files=files, vocab_size=5000, max_len=40, cache_dir=str(tmp_path), batch_size=32)
    assert dm.spec.dim == 5004 and dm.spec.kind == "tokens"
    dm.setup()
    assert dm.train_set is not None and dm.val_set is not None and dm.test_set is not None
    sizes = (len(dm.train_set), len(dm.val_set), len(dm.test_set))
    assert 10000 < sum(sizes) <= 10662 and abs(sizes[1] - sizes[2]) <= 40 and sizes[0] > 7 * sizes[1]
    stats = json.loads((dm.cache_path / "settings.json").read_text())["stats"]
    # Held-out text has more unknown words than the text the vocabulary was built on.
    assert stats["train"]["unk_rate"] < min(0.12, stats["test"]["unk_rate"])
    assert stats["test"]["unk_rate"] < 0.2
    labels = torch.cat([b.labels for _, b in zip(range(5), dm.train_dataloader(), strict=False)])  # type: ignore[misc]
    assert set(labels.tolist()) == {0, 1}
    batch = next(iter(dm.val_dataloader()))
    assert batch.inputs.shape[1] <= 40 and batch.inputs[:, 0].eq(dm.bos_id).all()
    assert batch.targets[batch.mask.bool()].max() < len(dm.vocab)
    assert (cache_files := sorted(p.name for p in dm.cache_path.iterdir())) and "vocab.json" in cache_files
