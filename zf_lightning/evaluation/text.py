"""What the latents of a text model carry: decoding words with a sentence's posterior z_1..z_T
against z from the prior (the ``resample_words`` analysis)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from zf_lightning.data.base import SequenceDataModule
from zf_lightning.data.text.base import WordDataModule
from zf_lightning.evaluation.posterior import has_posterior, model_device, posterior_mean_pass
from zf_lightning.evaluation.probes import AnalysisResult, Table, subset_batches
from zf_lightning.types import HasStepFunction

log = logging.getLogger(__name__)


@torch.no_grad()
def decode_with_latents(
    model: HasStepFunction,
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
    state = model.initial_state(B)
    x = first_input
    out = []
    for t in range(T):
        logits, state = model.step(x, state, None if z is None else z[:, t])
        logits = logits.clone()
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


def resample_words(
    model: nn.Module,
    datamodule: SequenceDataModule,
    split: str,
    output_dir: str | Path | None = None,
    num_sentences: int = 50,
    samples_per_sentence: int = 2,
    greedy: bool = False,
    seed: int = 0,
) -> AnalysisResult:
    """Keep each sentence's posterior z path, resample its words; write and score the result.

    For ``num_sentences`` sentences of ``split`` (a seeded subset) it decodes
    ``samples_per_sentence`` new sentences of the same length with z_t fixed to the
    posterior mean, and as many with z_t drawn from the prior. Returns
    ``{split}/resample_agree_posterior`` and ``{split}/resample_agree_prior``: the fraction
    of words (the forced final ``<eos>`` excluded) equal to the original. A model that uses
    z agrees more under its posterior; a collapsed one agrees equally. The text goes to
    ``<output_dir>/samples/resampled_<split>.txt``, and is returned as the table
    ``{split}/resampled`` (``.tables``) for the job's loggers. Needs a vocabulary (text data).
    """
    if samples_per_sentence < 1:
        raise ValueError(f"samples_per_sentence must be >= 1, got {samples_per_sentence}")
    if not has_posterior(model, "resample_words"):
        return AnalysisResult()
    if not isinstance(datamodule, WordDataModule):
        log.warning("resample_words skipped: %s has no vocabulary (text data only)", type(datamodule).__name__)
        return AnalysisResult()
    vocab = datamodule.vocab
    names = datamodule.label_names
    banned = [vocab.pad_id, vocab.bos_id]
    device = model_device(model)
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
    return AnalysisResult(metrics, {f"{split}/resampled": Table(["sentence", "label", "source", "text"], rows)})
