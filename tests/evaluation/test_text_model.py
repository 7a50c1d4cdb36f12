"""Word-level Z-Forcing (issue 7): the latent probe and resampling analyses, generation from
<bos>, the text experiment configs, and a short training run on rt-polarity."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from tests.conftest import SHARED_DATA, compose_config, require_shared
from zf_lightning.data.text.sentences import SentencesDataModule
from zf_lightning.evaluation.probes import latent_probe
from zf_lightning.evaluation.text import decode_with_latents, resample_words
from zf_lightning.models import RNN, CategoricalHead, ZForcing
from zf_lightning.types import DataSpec, HasPosterior, PosteriorPass, SequenceBatch

RT_POLARITY = SHARED_DATA / "rt-polarity"

# Positive sentences all contain "good", negative ones "bad"; the rest is shared filler.
FILLER = ["the film", "a story", "this movie is", "the plot was", "acting", "my friend said it was", "overall"]


def write_corpus(folder: Path, n: int = 60) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, word in (("neg.txt", "bad"), ("pos.txt", "good")):
        lines = [f"{FILLER[i % len(FILLER)]} {word} {FILLER[(3 * i + 1) % len(FILLER)]} ." for i in range(n)]
        (folder / name).write_text("\n".join(lines) + "\n")
        files.append(str(folder / name))
    return files


@pytest.fixture
def corpus(tmp_path: Path) -> SentencesDataModule:
    dm = SentencesDataModule(files=write_corpus(tmp_path / "corpus"), split=[0.5, 0.25, 0.25], max_len=20,
                             cache_dir=str(tmp_path / "cache"), batch_size=16, eval_batch_size=16)
    dm.setup()
    return dm


class PlantedModel(nn.Module, HasPosterior):
    """A stand-in with a posterior pass: z dims 0/1 flag the words "good"/"bad", dim 2 is constant
    (a collapsed unit), and h is noise. The probe must read the label from z and not from h."""

    def __init__(self, good: int, bad: int, rnn_dim: int = 6) -> None:
        super().__init__()
        self.good, self.bad, self.z_dim, self.rnn_dim = good, bad, 3, rnn_dim
        self.weight = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.noise_seen: list[Tensor] = []

    def infer(self, batch: SequenceBatch, noise: Tensor | None = None) -> PosteriorPass:
        assert noise is not None
        self.noise_seen.append(noise)
        B, T = batch.mask.shape
        words = batch.targets
        mean = torch.stack([(words == self.good).float(), (words == self.bad).float(), torch.full((B, T), 0.5)], -1)
        h = torch.randn(B, T, self.rnn_dim)
        return PosteriorPass(h_prev=h, h=h, z=mean, mean_q=mean, logvar_q=torch.zeros_like(mean), b=h)


def tiny_zforcing(vocab_size: int, seed: int = 0) -> ZForcing:
    torch.manual_seed(seed)
    spec = DataSpec("tokens", vocab_size, "word", 1)
    return ZForcing(spec, CategoricalHead, emb_dim=8, rnn_dim=12, z_dim=4, mlp_dim=8).eval()


# -- latent probe ---------------------------------------------------------------------------------


def test_probe_reads_a_label_planted_in_z_and_counts_active_units(corpus: SentencesDataModule) -> None:
    vocab = corpus.vocab
    model = PlantedModel(vocab.encode(["good"])[0], vocab.encode(["bad"])[0])
    torch.manual_seed(0)
    metrics = latent_probe(model, corpus, "test", max_sequences=None, max_fit_sequences=None)
    assert set(metrics) == {"test/active_units", "test/probe_acc_z", "test/probe_acc_h", "test/probe_majority"}
    assert metrics["test/active_units"] == 2.0  # the two word flags move, the constant unit does not
    assert metrics["test/probe_acc_z"] == 1.0
    assert metrics["test/probe_majority"] == pytest.approx(0.5)
    assert metrics["test/probe_acc_h"] < 0.8  # noise: near chance, far from the planted z
    assert all(float(n.abs().max()) == 0.0 for n in model.noise_seen)  # the posterior-mean path


def test_probe_bounds_its_cost_and_skips_unlabelled_data(corpus: SentencesDataModule, tmp_path: Path) -> None:
    vocab = corpus.vocab
    model = PlantedModel(vocab.encode(["good"])[0], vocab.encode(["bad"])[0])
    latent_probe(model, corpus, "test", max_sequences=5, max_fit_sequences=7)
    assert sum(n.shape[0] for n in model.noise_seen) == 12
    # Every label unknown (-1): active units only, no probe keys.
    unlabelled = SentencesDataModule(files=[write_corpus(tmp_path / "u")[0]], split=[0.5, 0.25, 0.25],
                                     cache_dir=str(tmp_path / "cache_u"), batch_size=8)
    unlabelled.setup()
    for split in (unlabelled.train_set, unlabelled.test_set):
        split.split.labels = split.split.labels * 0 - 1  # type: ignore[union-attr]
    model = PlantedModel(unlabelled.vocab.encode(["good"])[0], unlabelled.vocab.encode(["bad"])[0])
    assert set(latent_probe(model, unlabelled, "test")) == {"test/active_units"}


def test_models_without_a_posterior_are_skipped_with_a_message(
    corpus: SentencesDataModule, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rnn = RNN(corpus.spec, CategoricalHead, emb_dim=4, rnn_dim=6)
    with caplog.at_level(logging.WARNING):
        assert latent_probe(rnn, corpus, "test") == {}
        assert resample_words(rnn, corpus, "test", output_dir=tmp_path) == {}
    assert "has no infer()" in caplog.text
    assert not (tmp_path / "samples").exists()


def test_probe_on_a_real_zforcing_reports_bounded_values(corpus: SentencesDataModule) -> None:
    model = tiny_zforcing(len(corpus.vocab))
    metrics = latent_probe(model, corpus, "val")
    assert 0 <= metrics["val/active_units"] <= 4
    for key in ("val/probe_acc_z", "val/probe_acc_h", "val/probe_majority"):
        assert 0.0 <= metrics[key] <= 1.0
    assert latent_probe(model, corpus, "val") == metrics  # deterministic: no sampling involved


# -- generation -----------------------------------------------------------------------------------


def test_generation_starts_at_bos_and_runs_to_the_longest_sentence(corpus: SentencesDataModule) -> None:
    first = corpus.sample_first_input(5)
    assert first.dtype == torch.long and first.tolist() == [corpus.bos_id] * 5
    longest = max(len(corpus.train_set[i][0]) for i in range(len(corpus.train_set)))  # type: ignore[arg-type]
    assert corpus.sample_length() == longest <= corpus.max_len  # type: ignore[operator]
    samples = tiny_zforcing(len(corpus.vocab)).generate(5, corpus.sample_length(), first_input=first)
    assert samples.shape == (5, longest)


def test_decoding_with_fixed_latents_keeps_each_sentence_length(corpus: SentencesDataModule) -> None:
    model = tiny_zforcing(len(corpus.vocab))
    vocab = corpus.vocab
    batch = next(iter(corpus.test_dataloader()))
    lengths = batch.lengths
    assert lengths.min() < lengths.max()  # ragged, so the per-sequence end matters
    z = model.infer(batch, torch.zeros(*batch.mask.shape, 4)).z
    torch.manual_seed(0)
    out = decode_with_latents(model, batch.inputs[:, 0], batch.mask, z, [vocab.pad_id, vocab.bos_id], vocab.eos_id)
    assert out.shape == batch.targets.shape
    real = batch.mask > 0.5
    assert out[~real].eq(0).all()
    steps = torch.arange(out.shape[1]).expand_as(out)
    last = steps == (lengths - 1).unsqueeze(1)
    assert not out[real & ~last].eq(vocab.eos_id).any() and out[last].eq(vocab.eos_id).all()
    assert not out[real].eq(vocab.bos_id).any() and not out[real].eq(vocab.pad_id).any()
    # greedy decoding with the same z is deterministic; a very different z changes the words
    greedy = decode_with_latents(model, batch.inputs[:, 0], batch.mask, z, greedy=True)
    assert torch.equal(greedy, decode_with_latents(model, batch.inputs[:, 0], batch.mask, z, greedy=True))
    other = decode_with_latents(model, batch.inputs[:, 0], batch.mask, z + 50.0, greedy=True)
    assert not torch.equal(greedy, other)


def test_resampling_writes_originals_and_samples_of_equal_length(corpus: SentencesDataModule, tmp_path: Path) -> None:
    model = tiny_zforcing(len(corpus.vocab))
    metrics = resample_words(model, corpus, "test", output_dir=tmp_path, num_sentences=6, samples_per_sentence=2)
    assert set(metrics) == {"test/resample_agree_posterior", "test/resample_agree_prior"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    text = (tmp_path / "samples" / "resampled_test.txt").read_text().splitlines()
    originals = [line.split(": ", 1)[1] for line in text if line.strip().startswith("original")]
    assert len(originals) == 6
    blocks = "\n".join(text).split("\n\n")[1:]
    for block in blocks:
        rows = [line.split(": ", 1)[1] for line in block.splitlines()[1:]]
        assert len(rows) == 5  # original + 2 with posterior z + 2 with prior z
        # each resampled sentence has the original's number of words (<eos> only at the end)
        assert {len(r.split()) for r in rows} == {len(rows[0].split())}


def test_resampled_text_is_returned_as_a_table_and_logged_through_the_jobs_wandb_logger(
    corpus: SentencesDataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation layer returns the rows; the runs layer logs them through the job's loggers,
    never through the global ``wandb.run``."""
    import types

    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from zf_lightning.runs.loggers import log_tables

    monkeypatch.setattr(wandb, "run", types.SimpleNamespace(log=lambda *a, **k: pytest.fail("global wandb.run used")))
    result = resample_words(tiny_zforcing(len(corpus.vocab)), corpus, "test", num_sentences=3, samples_per_sentence=1)
    table = result.tables["test/resampled"]
    assert table.columns == ["sentence", "label", "source", "text"] and len(table.rows) == 3 * 3

    logged: list[dict] = []

    class FakeWandb(WandbLogger):  # a W&B logger, without the service
        def __init__(self) -> None:
            pass

        @property
        def experiment(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(log=logged.append)

    log_tables([FakeWandb()], result.tables, step=7)
    assert len(logged) == 1 and isinstance(logged[0]["test/resampled"], wandb.Table)
    assert logged[0]["trainer/global_step"] == 7
    assert logged[0]["test/resampled"].columns == table.columns and len(logged[0]["test/resampled"].data) == 9


# -- configs and a real run -----------------------------------------------------------------------


@pytest.mark.parametrize("data", ["sentences", "imdb"])
def test_text_data_turns_the_analyses_on(data: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={data}", f"paths.output_dir={tmp_path}"])
    assert cfg.analyses.latent_probe._target_ == "zf_lightning.evaluation.probes.latent_probe"
    assert cfg.analyses.resample.output_dir == str(tmp_path)
    assert not compose_config("train", [f"data={data}", "analyses=none"]).get("analyses")
    assert not compose_config("train", []).get("analyses")  # other data: off


def test_text_experiments_compose(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=sentences_zforcing", f"paths.output_dir={tmp_path}"])
    assert cfg.data._target_.endswith("SentencesDataModule") and cfg.model.head._target_.endswith("CategoricalHead")
    assert cfg.lit.kl_weight.value == 1.0 and "LinearRamp" in cfg.lit.aux_weight._target_
    plain = compose_config("train", ["experiment=sentences_zforcing", "ablation=plain"])
    assert plain.lit.aux_weight.value == 0.0
    imdb = compose_config("train", ["experiment=imdb_zforcing", f"paths.output_dir={tmp_path}"])
    assert imdb.data._target_.endswith("ImdbDataModule") and imdb.model.rnn_dim == 512
    assert imdb.analyses.latent_probe.max_sequences == 5000


@pytest.mark.slow
def test_a_few_steps_on_rt_polarity_lower_the_loss_and_report_the_text_metrics(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    require_shared(RT_POLARITY / "rt-polarity.neg", RT_POLARITY / "rt-polarity.pos")
    from zf_lightning.runs.evaluate import evaluate
    from zf_lightning.runs.pipeline import train

    files = f"data.files=[{RT_POLARITY / 'rt-polarity.neg'},{RT_POLARITY / 'rt-polarity.pos'}]"
    cfg = compose_train(
        "data=sentences", files, "data.vocab_size=500", "data.max_len=16", "data.batch_size=32",
        "model.emb_dim=16", "model.rnn_dim=24", "model.z_dim=6", "model.mlp_dim=16", "ablation=plain",
        "optim.optimizer.lr=1e-2", "trainer.max_steps=30", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "trainer.val_check_interval=15",
        "trainer.limit_test_batches=2",
        "analyses.latent_probe.max_sequences=300", "analyses.latent_probe.max_fit_sequences=300",
        "analyses.resample.num_sentences=4", "samples.num=3", "logger=csv", tiny=False,
    )
    out = Path(cfg.paths.output_dir)
    metrics = train(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test/ppl", "test/kl", "test/active_units", "test/probe_acc_z", "test/probe_acc_h",
                "test/probe_majority", "test/resample_agree_posterior"):
        assert key in saved and saved[key] == pytest.approx(metrics[key]), key
    assert 1.0 < saved["test/ppl"] < 504 and saved["test/kl"] >= 0
    assert 0 <= saved["test/active_units"] <= 6 and 0.3 < saved["test/probe_majority"] < 0.7
    with (out / "csv" / "metrics.csv").open() as fh:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")]
    assert len(losses) >= 25
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 10, losses  # nats per sentence
    prior = (out / "samples" / "prior.txt").read_text().splitlines()
    assert len(prior) == 3 and all("<bos>" not in line for line in prior)
    resampled = (out / "samples" / "resampled_test.txt").read_text().splitlines()
    assert sum(line.startswith("  original") for line in resampled) == 4
    # eval.py runs the same analyses from the checkpoint
    best = next((out / "checkpoints").glob("best-*.ckpt"))
    eval_cfg = compose_config("eval", [f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'eval'}", "samples.num=0"])
    result = evaluate(eval_cfg)
    assert result["test/probe_acc_z"] == pytest.approx(saved["test/probe_acc_z"])
    assert result["test/active_units"] == saved["test/active_units"]
