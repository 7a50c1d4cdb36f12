"""Transformer and LRU as models of the framework, and how every model is scored on
classification data: causality, the parallel scan, the loss over labelled steps only, and
Z-Forcing's accuracy that never reads the label."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import HEADS, make_batch
from zf_lightning.lit import SequenceLitModule
from zf_lightning.lit.module import EVAL_WEIGHTS
from zf_lightning.models import LRU, RNN, VRNN, CategoricalHead, Transformer, ZForcing
from zf_lightning.models.lru import LRULayer, diagonal_recurrence, diagonal_scan
from zf_lightning.types import IGNORE_TARGET, DataSpec, PredictsClasses, SequenceBatch

VOCAB, CLASSES = 7, 3
SPEC = DataSpec("tokens", VOCAB, "label", 1, classes=CLASSES)
SIZES = {
    "rnn": lambda spec: RNN(spec, CategoricalHead, emb_dim=8, rnn_dim=12),
    "transformer": lambda spec: Transformer(spec, CategoricalHead, d_model=16, layers=2, heads=2),
    "lru": lambda spec: LRU(spec, CategoricalHead, d_model=12, state_dim=10, layers=2),
    "zforcing": lambda spec: ZForcing(spec, CategoricalHead, emb_dim=8, rnn_dim=12, z_dim=3, mlp_dim=8),
}


def classification_batch(seed: int = 0, B: int = 4, T: int = 6) -> SequenceBatch:
    """Token inputs, ragged lengths, a label at each sequence's last step and IGNORE elsewhere."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, VOCAB, (B, T), generator=g)
    lengths = torch.tensor([T, T - 1, 3, T][:B])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    labels = torch.randint(0, CLASSES, (B,), generator=g)
    targets = torch.full((B, T), IGNORE_TARGET)
    targets[torch.arange(B), lengths - 1] = labels
    return SequenceBatch(inputs, targets, mask, labels=labels, sizes=lengths)


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SIZES[name](SPEC).eval()


def test_transformer_is_causal() -> None:
    model = build("transformer")
    batch = classification_batch()
    changed = batch.inputs.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    with torch.no_grad():
        before = model.states(batch.inputs)
        after = model.states(changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-3)  # later steps do read it


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
def test_transformer_position_options_and_max_len(positions: str) -> None:
    torch.manual_seed(0)
    model = Transformer(SPEC, CategoricalHead, d_model=8, layers=1, heads=2, positions=positions, max_len=6).eval()
    x = torch.full((1, 6), 3)  # the same token everywhere: only positions tell the steps apart
    with torch.no_grad():
        states = model.states(x)
    assert torch.allclose(states[0, 0], states[0, 5], atol=1e-5) == (positions == "none")
    if positions == "learned":
        with pytest.raises(ValueError, match=r"model\.max_len=6"):
            model.states(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"divisible by model\.heads"):
        Transformer(SPEC, CategoricalHead, d_model=10, heads=4)


def test_lru_scan_equals_step_by_step_recurrence() -> None:
    torch.manual_seed(0)
    lam = torch.polar(torch.rand(5) * 0.99, torch.rand(5) * 6.28)
    drive = torch.randn(3, 37, 5, dtype=torch.complex64)  # 37: not a power of two
    scanned, stepped = diagonal_scan(lam, drive), diagonal_recurrence(lam, drive)
    assert torch.allclose(scanned, stepped, atol=1e-5)
    # x_3 = lam^2 u_1 + lam u_2 + u_3 written out
    assert torch.allclose(stepped[:, 2], lam**2 * drive[:, 0] + lam * drive[:, 1] + drive[:, 2], atol=1e-6)
    layer = LRULayer(width=6, state_dim=5)
    u = torch.randn(2, 20, 6, requires_grad=True)
    fast, slow = layer(u), layer(u, parallel=False)
    assert torch.allclose(fast, slow, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), u)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), u)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-4)
    assert (layer.eigenvalues().abs() < 1).all()


def test_lru_model_states_match_the_sequential_path() -> None:
    model = build("lru")
    x = classification_batch().inputs
    with torch.no_grad():
        assert torch.allclose(model.states(x), model.states(x, parallel=False), atol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "lru"])
@pytest.mark.parametrize("kind", ["real", "binary", "tokens"])
def test_new_models_train_on_generative_data(name: str, kind: str) -> None:
    torch.manual_seed(0)
    spec = DataSpec(kind, 5, "sequence", 5 if kind != "tokens" else 1)
    cls, sizes = (Transformer, {"d_model": 8, "heads": 2}) if name == "transformer" else (LRU, {"d_model": 8})
    model = cls(spec, HEADS[kind], **sizes)
    batch = make_batch(kind, D=5)
    terms = model(batch)
    assert terms.nll.shape == (3, 7) and torch.all(terms.kl == 0)
    assert torch.all(terms.nll[batch.mask == 0] == 0) and torch.all(terms.nll[batch.mask > 0] != 0)
    terms.nll.sum().backward()
    assert all(p.grad is not None for p in model.output_head.parameters())


@pytest.mark.parametrize("name", list(SIZES))
def test_classification_loss_counts_only_the_labelled_steps(name: str) -> None:
    model = build(name)
    lit = SequenceLitModule(model, SPEC, optimizer=torch.optim.Adam)
    batch = classification_batch()
    torch.manual_seed(1)
    loss, sums = lit.objective(batch, EVAL_WEIGHTS)
    loss = loss.detach()
    assert isinstance(model, PredictsClasses)
    if name != "zforcing":  # deterministic: the loss is the cross-entropy of the labels, by hand
        rows, last = torch.arange(4), batch.lengths - 1
        with torch.no_grad():
            logp = torch.log(model.predict_proba(batch))[rows, last, batch.labels]
        assert float(loss) == pytest.approx(float(-logp.mean()), rel=1e-5)
    # the nll of every unlabelled step is exactly zero, so only labels count
    torch.manual_seed(1)
    terms = model(batch)
    assert torch.all(terms.nll[batch.scored == 0] == 0) and torch.all(terms.nll[batch.scored > 0] > 0)
    assert torch.allclose(sums["nll"], terms.nll.sum(1))
    # changing a label changes the loss; the labelled step is what is scored
    relabelled = SequenceBatch(batch.inputs, batch.targets.clone(), batch.mask, batch.labels, batch.sizes)
    relabelled.targets[0, batch.lengths[0] - 1] = (batch.labels[0] + 1) % CLASSES
    torch.manual_seed(1)
    assert float(lit.objective(relabelled, EVAL_WEIGHTS)[0]) != pytest.approx(float(loss), rel=1e-6)


def test_zforcing_accuracy_never_reads_the_label() -> None:
    model = build("zforcing")
    batch = classification_batch()
    relabelled = SequenceBatch(batch.inputs, batch.targets.clone(), batch.mask, batch.labels, batch.sizes)
    rows, last = torch.arange(4), batch.lengths - 1
    relabelled.targets[rows, last] = (batch.labels + 1) % CLASSES
    with torch.no_grad():
        torch.manual_seed(3)
        probs = model.predict_proba(batch, samples=5)
        torch.manual_seed(3)
        probs_relabelled = model.predict_proba(relabelled, samples=5)
        torch.manual_seed(3)
        noise = torch.randn(4, 6, 3)
        posterior_a, posterior_b = model(batch, noise), model(relabelled, noise)
    assert probs.shape == (4, 6, CLASSES) and torch.allclose(probs.sum(-1), torch.ones(4, 6))
    assert torch.equal(probs, probs_relabelled)
    # ...whereas the training objective does read it: the posterior sees the label through the backward LSTM
    assert not torch.allclose(posterior_a.kl, posterior_b.kl)
    # and the prior samples are averaged: more samples, a different (smoother) estimate
    torch.manual_seed(3)
    single = model.predict_proba(batch, samples=1)
    assert not torch.allclose(single, probs)


def test_lit_module_accuracy_per_size_on_a_classification_batch() -> None:
    model = build("rnn")
    lit = SequenceLitModule(model, SPEC, optimizer=torch.optim.Adam, class_samples=2)
    batch = classification_batch()
    lit.test_step(batch, 0)
    metrics = lit.epoch_metrics("test")
    with torch.no_grad():
        predicted = model.predict_proba(batch).argmax(-1)[torch.arange(4), batch.lengths - 1]
    hits = (predicted == batch.labels).float()
    assert metrics["test/acc"] == pytest.approx(float(hits.mean()))
    for size in (3, 5, 6):
        pick = batch.sizes == size
        assert metrics[f"test/acc_len{size}"] == pytest.approx(float(hits[pick].mean()))
    assert metrics["test/nll"] == pytest.approx(metrics["test/pred_nll"], rel=1e-5)  # no latents: the same


def test_models_that_cannot_classify_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="cannot be trained on labelled data"):
        VRNN(SPEC, CategoricalHead, emb_dim=4, rnn_dim=4, z_dim=2, mlp_dim=4)

    class NoProba(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="NoProba cannot predict classes"):
        SequenceLitModule(NoProba(), SPEC, optimizer=torch.optim.Adam)
