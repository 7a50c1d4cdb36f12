"""eval.py's importance-sampled bounds, units, reproducibility and latent export, on a tiny
Z-Forcing checkpoint trained on LGSSM sequences (whose exact likelihood is known)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from tests.conftest import compose_config
from zf_lightning.evaluation.bounds import SequenceBounds, bound_metrics, iwae_sample_counts, sequence_bounds
from zf_lightning.evaluation.estimators import ratio_standard_error, standard_error
from zf_lightning.evaluation.posterior import export_latents
from zf_lightning.runs.evaluate import evaluate
from zf_lightning.runs.pipeline import train
from zf_lightning.types import DataSpec, SequenceBatch, StepTerms

SEQ_LEN, NUM_TEST, Z_DIM, RNN_DIM = 8, 32, 4, 16


@pytest.fixture(scope="module")
def lgssm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A Z-Forcing checkpoint after a few updates: its posterior still differs from its prior,
    so importance sampling has something to gain, and the bounds sit well below the truth."""
    out = tmp_path_factory.mktemp("lgssm_run")
    cfg = compose_config("train", [
        f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}", "data=lgssm", "logger=csv",
        "model.emb_dim=8", f"model.rnn_dim={RNN_DIM}", f"model.z_dim={Z_DIM}", "model.mlp_dim=16",
        f"data.seq_len={SEQ_LEN}", "data.num_train=64", "data.num_val=16", f"data.num_test={NUM_TEST}",
        "data.batch_size=32", "data.eval_batch_size=20", "trainer.max_steps=4", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "ablation=aux", "samples.num=0",
    ])
    metrics = train(cfg)
    return Path(metrics["test/checkpoint"]), metrics


def run_eval(ckpt: Path, out: Path, *overrides: str) -> dict[str, float]:
    cfg: DictConfig = compose_config("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={out}", "samples.num=0",
                                              *overrides])
    return evaluate(cfg)


def test_eval_writes_ordered_bounds_below_the_exact_likelihood(lgssm_checkpoint, tmp_path: Path) -> None:
    ckpt, trained = lgssm_checkpoint
    result = run_eval(ckpt, tmp_path, "eval.iwae_samples=[1,10,100]")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/elbo", "test/elbo_se", "test/iwae_1", "test/iwae_10", "test/iwae_100", "test/iwae_100_se",
                "test/iwae_100_nats_per_step", "test/iwae_100_bpd", "test/exact_nll", "test/iwae_100_gap"):
        assert saved[key] == pytest.approx(result[key]), key
    # the test-loop metrics still reproduce training's
    assert result["test/neg_elbo"] == pytest.approx(trained["test/neg_elbo"], rel=1e-6)
    elbo, iwae1, iwae10, iwae100 = (result[k] for k in ("test/elbo", "test/iwae_1", "test/iwae_10", "test/iwae_100"))
    exact = -result["test/exact_nll"]
    se = result["test/iwae_1_se"]
    # IWAE_1 is the sampled ELBO: equal to the analytic-KL ELBO up to Monte Carlo error
    assert abs(iwae1 - elbo) < se
    assert elbo < iwae10 < iwae100 < exact
    assert iwae10 - iwae1 > 0.3 and iwae100 - iwae10 > 0.1  # a clear gain, not noise
    assert result["test/iwae_100_gap"] == pytest.approx(exact - iwae100, rel=1e-9)
    assert result["test/iwae_100_gap"] > 0 and result["test/iwae_100_gap_se"] > 0
    steps = SEQ_LEN
    assert result["test/iwae_100_nats_per_step"] == pytest.approx(-iwae100 / steps, rel=1e-9)
    assert result["test/iwae_100_bpd"] == pytest.approx(-iwae100 / steps / (4 * math.log(2)), rel=1e-9)
    assert 0 < result["test/iwae_100_se"] < 0.5 * abs(iwae100)


def test_cli_style_single_k_and_iwae_above_elbo(lgssm_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = lgssm_checkpoint
    run_eval(ckpt, tmp_path, "eval.iwae_samples=100")  # as `python eval.py ckpt_path=C eval.iwae_samples=100`
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/iwae_10" not in saved
    assert saved["test/iwae_100"] >= saved["test/elbo"] - 2 * saved["test/elbo_se"] / math.sqrt(NUM_TEST)
    assert saved["test/iwae_100"] > saved["test/elbo"]


def test_chunked_and_unchunked_agree_and_seed_reproduces(lgssm_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = lgssm_checkpoint
    keys = ("test/iwae_3", "test/iwae_7", "test/elbo_se", "test/iwae_7_gap")
    whole = run_eval(ckpt, tmp_path / "a", "eval.iwae_samples=[3,7]", "eval.chunk_size=null")
    chunked = run_eval(ckpt, tmp_path / "b", "eval.iwae_samples=[3,7]", "eval.chunk_size=2")
    again = run_eval(ckpt, tmp_path / "c", "eval.iwae_samples=[3,7]", "eval.chunk_size=2")
    other_seed = run_eval(ckpt, tmp_path / "d", "eval.iwae_samples=[3,7]", "seed=99")
    for key in keys:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-5), key
        assert again[key] == chunked[key], key
    assert other_seed["test/iwae_7"] != pytest.approx(whole["test/iwae_7"], rel=1e-7, abs=0)


def test_no_importance_sampling_when_disabled(lgssm_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = lgssm_checkpoint
    result = run_eval(ckpt, tmp_path, "eval.iwae_samples=null", "split=val")
    assert "val/neg_elbo" in result and "val/exact_nll" in result
    assert not any("iwae" in k for k in result)


def test_eval_adds_an_analysis_the_run_did_not_have(lgssm_checkpoint, tmp_path: Path) -> None:
    """``analyses=quiet_frames`` on a finished run: the bound split by frame loudness, whose
    parts add up to the split's bound (up to the latent draws), next to the run's metrics."""
    ckpt, _ = lgssm_checkpoint
    result = run_eval(ckpt, tmp_path, "eval.iwae_samples=1", "analyses=quiet_frames",
                      "analyses.quiet_frames.threshold=1.0")
    assert 0.0 < result["test/quiet_fraction"] < 1.0
    parts = result["test/elbo_quiet"] + result["test/elbo_other"]
    assert parts == pytest.approx(result["test/elbo"], abs=result["test/elbo_se"])
    assert "test/quiet_fraction" not in run_eval(ckpt, tmp_path / "plain", "eval.iwae_samples=null")


def test_exported_latents_have_the_right_shapes(lgssm_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = lgssm_checkpoint
    result = run_eval(ckpt, tmp_path, "eval.iwae_samples=1", "eval.export_latents=true")
    path = tmp_path / "latents_test.npz"
    assert result["test/latents_file"] == str(path)
    data = np.load(path)
    assert data["z_mean"].shape == (NUM_TEST, SEQ_LEN, Z_DIM)
    assert data["h"].shape == (NUM_TEST, SEQ_LEN, RNN_DIM)
    assert data["mask"].shape == (NUM_TEST, SEQ_LEN) and (data["lengths"] == SEQ_LEN).all()
    assert (data["labels"] == -1).all()  # LGSSM sequences carry no labels
    assert np.isfinite(data["z_mean"]).all() and data["z_mean"].std(axis=0).max() > 1e-4  # means move with x
    run_eval(ckpt, tmp_path / "again", "eval.iwae_samples=1", "eval.export_latents=true")
    assert np.array_equal(np.load(tmp_path / "again" / "latents_test.npz")["z_mean"], data["z_mean"])


class Deterministic(nn.Module):
    """No latents, no ``infer``: every importance weight is the exact likelihood."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([0.5]))

    def forward(self, batch: SequenceBatch) -> StepTerms:
        nll = 0.5 * (batch.targets - self.loc).pow(2).sum(-1) + 0.5 * math.log(2 * math.pi)
        return StepTerms.with_zeros(nll * batch.mask)


def _batches() -> list[SequenceBatch]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for length in (5, 3):
        targets = torch.randn(2, length, 1, generator=gen)
        mask = torch.ones(2, length)
        mask[1, -1] = 0.0
        out.append(SequenceBatch(inputs=torch.zeros_like(targets), targets=targets, mask=mask))
    return out


def test_deterministic_model_bounds_are_its_likelihood_and_latents_skip(caplog: pytest.LogCaptureFixture,
                                                                       tmp_path: Path) -> None:
    model = Deterministic()
    bounds = sequence_bounds(model, _batches(), [1, 10], chunk_size=3, seed=0)
    exact = torch.cat([-(model(b).nll.sum(1)) for b in _batches()]).detach().double()
    assert torch.allclose(bounds.elbo, exact) and torch.allclose(bounds.iwae[10], exact)
    assert bounds.steps.tolist() == [5, 4, 3, 2]
    with caplog.at_level(logging.WARNING):
        assert export_latents(model, _batches(), tmp_path / "z.npz") is None
    assert "no posterior pass" in caplog.text and not (tmp_path / "z.npz").exists()


def test_units_per_sequence_and_per_word() -> None:
    values = torch.tensor([-10.0, -20.0, -6.0], dtype=torch.float64)
    steps = torch.tensor([5.0, 8.0, 3.0], dtype=torch.float64)
    bounds = SequenceBounds(elbo=values, iwae={4: values}, steps=steps)
    per_seq = bound_metrics(bounds, DataSpec("real", 2, "utterance", 2), "test", exact_log_likelihood=values + 1.0)
    assert per_seq["test/iwae_4"] == pytest.approx(-12.0)
    assert per_seq["test/iwae_4_se"] == pytest.approx(standard_error(values))
    assert per_seq["test/iwae_4_nats_per_step"] == pytest.approx(36.0 / 16.0)
    assert per_seq["test/iwae_4_bpd"] == pytest.approx(36.0 / 16.0 / (2 * math.log(2)))
    assert per_seq["test/iwae_4_gap"] == pytest.approx(1.0) and per_seq["test/iwae_4_gap_se"] == pytest.approx(0.0)
    assert "test/ppl_iwae_4" not in per_seq
    per_word = bound_metrics(bounds, DataSpec("tokens", 50, "word", 1), "test")
    assert per_word["test/iwae_4"] == pytest.approx(-36.0 / 16.0)
    assert per_word["test/ppl_iwae_4"] == pytest.approx(math.exp(36.0 / 16.0))
    assert per_word["test/iwae_4_se"] == pytest.approx(ratio_standard_error(values, steps))


def test_ratio_standard_error_reduces_to_the_plain_one() -> None:
    values = torch.tensor([1.0, 4.0, 2.0, 7.0])
    assert ratio_standard_error(values, torch.ones(4)) == pytest.approx(standard_error(values))
    # proportional values have no spread in their rate
    assert ratio_standard_error(3.0 * torch.tensor([1.0, 5.0, 2.0]), torch.tensor([1.0, 5.0, 2.0])) == pytest.approx(0)
    assert math.isnan(ratio_standard_error([1.0], [1.0]))


def test_iwae_sample_counts_parsing() -> None:
    assert iwae_sample_counts(100) == [100]
    assert iwae_sample_counts([100, 1, 10, 10]) == [1, 10, 100]
    assert iwae_sample_counts(None) == [] and iwae_sample_counts([]) == []
    with pytest.raises(ValueError, match="positive"):
        iwae_sample_counts([0, 5])
