"""Post-training analyses of a trained latent model (the ``analysis`` config group).

Each public callable has the signature ``(model, datamodule, split, **options) -> {metric: value}``
that ``pipeline.run_analyses`` expects:

* ``latent_probe``: posterior collapse and what the latents know. Active units of the
  posterior means over the real steps of ``split`` (``{split}/active_units``), and linear
  probes that predict the sequence label from the time-averaged posterior mean of z
  (``{split}/probe_acc_z``) and from the time-averaged forward state h_t
  (``{split}/probe_acc_h``), fit on the training split and scored on ``split``, next to the
  majority rate (``{split}/probe_majority``). If z is collapsed, ``probe_acc_z`` falls to
  the majority rate while ``probe_acc_h`` (the deterministic path) can stay high.
* ``resample_words``: keeps a sentence's posterior z_1..z_T and draws new words from the
  model with them, a direct look at what z encodes; writes the text and reports how many
  words agree with the original, against the same decode with z drawn from the prior.

Latents are read along the *posterior-mean path* (``infer`` with zero noise, so z_t is the
posterior mean and h_t follows from it): the features are then deterministic functions of
the sentence, and repeated evaluations agree. Cost is bounded by seeded subsets of at most
``max_sequences`` sequences per split. Models without ``infer`` (the baselines) are
skipped with a log line and no metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from zf_lightning.analysis import active_units, majority_rate, masked_steps, masked_time_average, probe_accuracy
from zf_lightning.data.base import SequenceDataModule
from zf_lightning.models.zforcing import PosteriorPass
from zf_lightning.types import SequenceBatch

log = logging.getLogger(__name__)


# -- data access ---------------------------------------------------------------------------------


def split_dataset(datamodule: SequenceDataModule, split: str) -> Dataset:
    """The data module's ``train``/``val``/``test`` dataset, setting the module up if needed."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None:
        datamodule.setup("fit" if split in ("train", "val") else "test")
        dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None:
        raise RuntimeError(f"{type(datamodule).__name__} has no {split} split after setup()")
    return dataset


def subset_batches(
    datamodule: SequenceDataModule, split: str, max_sequences: int | None, seed: int = 0
) -> Iterator[SequenceBatch]:
    """Batches of a seeded random subset of at most ``max_sequences`` sequences of ``split``.

    A random subset (not the first ones) because a split may be ordered, e.g. by label.
    """
    dataset = split_dataset(datamodule, split)
    n = len(dataset)  # type: ignore[arg-type]
    if max_sequences is not None and n > max_sequences:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_sequences]
        dataset = Subset(dataset, sorted(order.tolist()))
    loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False,
                        collate_fn=datamodule.collate_fn)
    yield from loader


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def has_posterior(model: nn.Module, analysis: str) -> bool:
    """True when the model exposes ``infer`` (Z-Forcing); otherwise log why the analysis is skipped."""
    if callable(getattr(model, "infer", None)):
        return True
    log.warning("%s skipped: %s has no infer() (no posterior pass; only Z-Forcing exposes one)",
                analysis, type(model).__name__)
    return False


def posterior_mean_pass(model: nn.Module, batch: SequenceBatch) -> PosteriorPass:
    """``model.infer`` with zero noise: z_t is the posterior mean and h_t follows from it."""
    B, T = batch.mask.shape
    return model.infer(batch, noise=batch.mask.new_zeros(B, T, int(model.z_dim)))


# -- latent features, active units and probes ----------------------------------------------------


@dataclass
class LatentFeatures:
    """Per-sequence summaries and per-step posterior means of one split (CPU tensors)."""

    z_avg: Tensor  # [N, Z] time-averaged posterior mean of z
    h_avg: Tensor  # [N, H] time-averaged h_t
    mean_steps: Tensor  # [M, Z] posterior means of every real step
    labels: Tensor | None  # [N], None when the data has no labels


@torch.no_grad()
def collect_latents(model: nn.Module, batches: Iterator[SequenceBatch] | Sequence[SequenceBatch]) -> LatentFeatures:
    """Run the posterior-mean path over ``batches`` and keep what the analyses read."""
    device = _device(model)
    z_avg, h_avg, steps, labels = [], [], [], []
    labelled = True
    for batch in batches:
        batch = batch.to(device)
        run = posterior_mean_pass(model, batch)
        z_avg.append(masked_time_average(run.mean_q, batch.mask).cpu())
        h_avg.append(masked_time_average(run.h, batch.mask).cpu())
        steps.append(masked_steps(run.mean_q, batch.mask).cpu())
        if batch.labels is None:
            labelled = False
        else:
            labels.append(batch.labels.cpu())
    if not z_avg:
        raise ValueError("collect_latents got no batches")
    return LatentFeatures(
        z_avg=torch.cat(z_avg),
        h_avg=torch.cat(h_avg),
        mean_steps=torch.cat(steps),
        labels=torch.cat(labels) if labelled else None,
    )


def _labelled_count(labels: Tensor | None) -> int:
    return 0 if labels is None else int((labels >= 0).sum())


def probe_metrics(fit: LatentFeatures, evaluated: LatentFeatures, split: str, seed: int = 0) -> dict[str, float]:
    """``probe_acc_z``, ``probe_acc_h`` and ``probe_majority`` of ``split``; empty without labels."""
    if _labelled_count(fit.labels) == 0 or _labelled_count(evaluated.labels) == 0:
        log.warning("latent probe skipped on %s: no labelled sequences (labels < 0 mean unlabelled)", split)
        return {}
    assert fit.labels is not None and evaluated.labels is not None
    return {
        f"{split}/probe_acc_z": probe_accuracy(fit.z_avg, fit.labels, evaluated.z_avg, evaluated.labels, seed=seed),
        f"{split}/probe_acc_h": probe_accuracy(fit.h_avg, fit.labels, evaluated.h_avg, evaluated.labels, seed=seed),
        f"{split}/probe_majority": majority_rate(fit.labels, evaluated.labels),
    }


def latent_probe(
    model: nn.Module,
    datamodule: SequenceDataModule,
    split: str,
    fit_split: str = "train",
    max_sequences: int | None = 2000,
    max_fit_sequences: int | None = 2000,
    threshold: float = 0.01,
    seed: int = 0,
) -> dict[str, float]:
    """Active units on ``split`` and label probes fit on ``fit_split``, scored on ``split``.

    ``max_sequences``/``max_fit_sequences`` bound the cost (seeded subsets); ``threshold`` is
    the active-unit variance threshold. Fitting and scoring on the same split is allowed but
    logged, since the accuracy is then not held out.
    """
    if not has_posterior(model, "latent_probe"):
        return {}
    evaluated = collect_latents(model, subset_batches(datamodule, split, max_sequences, seed))
    metrics = {f"{split}/active_units": float(active_units(evaluated.mean_steps, threshold))}
    if fit_split == split:
        log.warning("latent probe fit and scored on the same split (%s): the accuracy is not held out", split)
        fit = evaluated
    else:
        fit = collect_latents(model, subset_batches(datamodule, fit_split, max_fit_sequences, seed))
    metrics.update(probe_metrics(fit, evaluated, split, seed))
    log.info("latent probe on %s: %s", split, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


# -- resampling words with a sentence's posterior z ----------------------------------------------


@torch.no_grad()
def decode_with_latents(
    model: nn.Module,
    first_input: Tensor,
    mask: Tensor,
    z: Tensor | None,
    banned: Sequence[int] = (),
    end_id: int | None = None,
    ends: Tensor | None = None,
    greedy: bool = False,
) -> Tensor:
    """Generate token ids ``[B, T]`` step by step, feeding each sampled word back.

    ``z`` ``[B, T, Z]`` fixes the latent of every step (a sentence's posterior path); with
    ``None`` z_t is drawn from the prior p(z_t | h_{t-1}), as in ``generate``. Each sequence
    gets exactly as many steps as ``mask`` has real ones, padded steps are 0 and ``banned``
    ids are never drawn. With ``end_id`` (``<eos>``), sequences flagged in ``ends`` ``[B]``
    (default: all) end with it at their last step and never draw it before; the others
    never draw it: the words keep the original sentence's length.
    """
    B, T = mask.shape
    lengths = mask.sum(1).round().long()
    ends = torch.ones(B, dtype=torch.bool, device=mask.device) if ends is None else ends.bool()
    h = mask.new_zeros(B, int(model.rnn_dim))
    c = torch.zeros_like(h)
    x = first_input
    out = []
    for t in range(T):
        z_t = model.sample_prior(h) if z is None else z[:, t]
        h, c = model.cell_step(model.embedding(x), z_t, h, c)
        logits = model.output_head(h).clone()
        if banned:
            logits[:, list(banned)] = float("-inf")
        if end_id is not None:
            logits[:, end_id] = float("-inf")
        x = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
        if end_id is not None:
            x = torch.where(ends & (t == lengths - 1), end_id, x)
        out.append(x)
    return torch.stack(out, 1) * (mask > 0.5).long()


def _matches(sampled: Tensor, targets: Tensor, mask: Tensor) -> int:
    """Number of real steps whose resampled word equals the original one."""
    return int(((sampled == targets) & (mask > 0.5)).sum())


def _log_wandb_table(key: str, columns: list[str], rows: list[list[object]]) -> None:
    """Log the text as a W&B table when a W&B run is active (no-op otherwise)."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a requirement
        return
    if wandb.run is not None:
        wandb.run.log({key: wandb.Table(columns=columns, data=rows)})


def resample_words(
    model: nn.Module,
    datamodule: SequenceDataModule,
    split: str,
    output_dir: str | Path | None = None,
    num_sentences: int = 50,
    samples_per_sentence: int = 2,
    greedy: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Keep each sentence's posterior z path, resample its words; write and score the result.

    For ``num_sentences`` sentences of ``split`` (a seeded subset) it decodes
    ``samples_per_sentence`` new sentences of the same length with z_t fixed to the
    posterior mean, and as many with z_t drawn from the prior. Returns
    ``{split}/resample_agree_posterior`` and ``{split}/resample_agree_prior``: the fraction
    of words (the forced final ``<eos>`` excluded) equal to the original. A model that uses
    z agrees more under its posterior; a collapsed one agrees equally. The text goes to
    ``<output_dir>/samples/resampled_<split>.txt`` (and to W&B as a table when a W&B run is
    active). Needs a vocabulary (text data).
    """
    if samples_per_sentence < 1:
        raise ValueError(f"samples_per_sentence must be >= 1, got {samples_per_sentence}")
    if not has_posterior(model, "resample_words"):
        return {}
    vocab = getattr(datamodule, "vocab", None)
    if vocab is None:
        log.warning("resample_words skipped: %s has no vocabulary (text data only)", type(datamodule).__name__)
        return {}
    names: list[str] = list(getattr(datamodule, "label_names", []))
    banned = [vocab.pad_id, vocab.bos_id]
    device = _device(model)
    matched = {"posterior": 0, "prior": 0}
    scored = 0
    lines: list[str] = []
    rows: list[list[object]] = []
    index = 0
    for batch in subset_batches(datamodule, split, num_sentences, seed):
        batch = batch.to(device)
        z = posterior_mean_pass(model, batch).z
        last = batch.targets.gather(1, (batch.lengths - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
        ends = last == vocab.eos_id  # truncated sentences have no <eos>, and their resamples neither
        words = batch.mask.clone()  # the steps that are scored: the forced final <eos> is not
        rows_ending = ends.nonzero().squeeze(1)
        words[rows_ending, batch.lengths[rows_ending] - 1] = 0.0
        decoded = {
            source: [
                decode_with_latents(model, batch.inputs[:, 0], batch.mask, z if source == "posterior" else None,
                                    banned, vocab.eos_id, ends, greedy)
                for _ in range(samples_per_sentence)
            ]
            for source in ("posterior", "prior")
        }
        for source, samples in decoded.items():
            matched[source] += sum(_matches(s, batch.targets, words) for s in samples)
        scored += int(words.sum().round()) * samples_per_sentence
        for i in range(batch.batch_size):
            label = int(batch.labels[i]) if batch.labels is not None else -1
            label_text = names[label] if 0 <= label < len(names) else str(label)
            original = vocab.decode(batch.targets[i].tolist())
            lines += [f"[{index}] label={label_text}", f"  {'original':<13}: {original}"]
            rows.append([index, label_text, "original", original])
            for source, samples in decoded.items():
                for k, sample in enumerate(samples):
                    text = vocab.decode(sample[i].tolist())
                    lines.append(f"  {source + ' z ' + str(k + 1):<13}: {text}")
                    rows.append([index, label_text, f"{source} z", text])
            lines.append("")
            index += 1
    metrics = {f"{split}/resample_agree_{source}": n / max(scored, 1) for source, n in matched.items()}
    if output_dir is not None:
        path = Path(output_dir) / "samples" / f"resampled_{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# {split}: each sentence's posterior-mean z path kept and its words resampled "
                  f"({'greedy' if greedy else 'sampled'}), then the same with z from the prior.\n"
                  f"# words equal to the original: posterior z {metrics[f'{split}/resample_agree_posterior']:.3f}, "
                  f"prior z {metrics[f'{split}/resample_agree_prior']:.3f}\n\n")
        path.write_text(header + "\n".join(lines), encoding="utf-8")
        log.info("resampled sentences written to %s", path)
    _log_wandb_table(f"{split}/resampled", ["sentence", "label", "source", "text"], rows)
    return metrics
