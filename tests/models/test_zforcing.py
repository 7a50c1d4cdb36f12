"""Z-Forcing model: shapes, probability terms, masking, gradient flow, reference equivalence."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import distributions as D

from tests.helpers import make_batch, make_model
from zf_lightning.models import BernoulliHead, CategoricalHead, GaussianHead
from zf_lightning.models.common import reverse_padded
from zf_lightning.models.distributions import gaussian_kl, gaussian_log_prob
from zf_lightning.models.zforcing import model as zforcing_model
from zf_lightning.models.zforcing.reference import reference_forward
from zf_lightning.types import DataSpec

TERMS = ("nll", "kl", "aux", "bwd", "log_p_z", "log_q_z")


@pytest.mark.parametrize("kind", ["real", "binary", "tokens"])
def test_terms_have_batch_time_shape_and_are_finite(kind: str) -> None:
    model = make_model(kind)
    batch = make_batch(kind)
    terms = model(batch)
    for name in TERMS:
        value = getattr(terms, name)
        assert value.shape == (3, 7), name
        assert torch.isfinite(value).all(), name
    assert (terms.kl[batch.mask > 0] >= 0).all()


def test_gaussian_log_prob_and_kl_match_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    x, m1, m2 = (torch.randn(4, 6, generator=g) for _ in range(3))
    lv1, lv2 = (torch.randn(4, 6, generator=g) for _ in range(2))
    q, p = D.Normal(m1, (0.5 * lv1).exp()), D.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(gaussian_log_prob(x, m1, lv1), q.log_prob(x).sum(-1))
    torch.testing.assert_close(gaussian_kl(m1, lv1, m2, lv2), D.kl_divergence(q, p).sum(-1))


def test_heads_nll_match_torch_distributions() -> None:
    torch.manual_seed(2)
    h = torch.randn(2, 3, 8)
    gauss = GaussianHead(8, 4)
    target = torch.randn(2, 3, 4)
    mean, logvar = gauss(h).chunk(2, -1)
    expected = -D.Normal(mean, (0.5 * logvar).exp()).log_prob(target).sum(-1)
    torch.testing.assert_close(gauss.nll(gauss(h), target), expected)

    bern = BernoulliHead(8, 4)
    bits = (torch.rand(2, 3, 4) > 0.5).float()
    expected = -D.Bernoulli(logits=bern(h)).log_prob(bits).sum(-1)
    torch.testing.assert_close(bern.nll(bern(h), bits), expected)

    cat = CategoricalHead(8, 11)
    ids = torch.randint(0, 11, (2, 3))
    expected = -D.Categorical(logits=cat(h)).log_prob(ids)
    torch.testing.assert_close(cat.nll(cat(h), ids), expected)


def test_reverse_padded_reverses_within_length_and_is_an_involution() -> None:
    x = torch.arange(10.0).view(2, 5, 1)
    lengths = torch.tensor([5, 3])
    out = reverse_padded(x, lengths)
    assert out[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    torch.testing.assert_close(reverse_padded(out, lengths), x)
    # the gradient is the reversed incoming one, as autograd's through the elementwise gather
    x = torch.randn(2, 5, 3, requires_grad=True)
    grad = torch.randn(2, 5, 3)
    index = torch.tensor([[4, 3, 2, 1, 0], [2, 1, 0, 3, 4]])[..., None].expand(2, 5, 3)
    (want,) = torch.autograd.grad(torch.gather(x, 1, index), x, grad)
    (got,) = torch.autograd.grad(reverse_padded(x, lengths), x, grad)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["real", "tokens"])
def test_padded_steps_contribute_exactly_zero_and_do_not_leak(kind: str) -> None:
    model = make_model(kind)
    batch = make_batch(kind)
    noise = torch.randn(3, 7, model.z_dim)
    terms = model(batch, noise)
    pad = batch.mask == 0
    for name in TERMS:
        assert (getattr(terms, name)[pad] == 0).all(), name
    # change the contents of padded steps: real steps must not notice (the backward LSTM
    # reverses within each length, so it never reads padding)
    garbage = make_batch(kind, seed=99)
    inputs = torch.where(pad.view(3, 7, *([1] * (batch.inputs.dim() - 2))), garbage.inputs, batch.inputs)
    targets = torch.where(pad.view(3, 7, *([1] * (batch.targets.dim() - 2))), garbage.targets, batch.targets)
    changed = model(type(batch)(inputs, targets, batch.mask), noise)
    for name in TERMS:
        torch.testing.assert_close(getattr(changed, name), getattr(terms, name))


def test_backward_state_at_t_reads_the_future_only() -> None:
    model = make_model("real")
    batch = make_batch("real", ragged=False)
    b = model.backward_states(batch)
    future_changed = make_batch("real", ragged=False)
    future_changed.targets[:, 5:] += 1.0
    b2 = model.backward_states(future_changed)
    torch.testing.assert_close(b[:, 6:].clone().zero_(), (b2[:, 6:] - b2[:, 6:]).zero_())
    assert not torch.allclose(b[:, 5], b2[:, 5])  # b_5 has read target 5
    assert not torch.allclose(b[:, 0], b2[:, 0])  # and so have all earlier states
    past_changed = make_batch("real", ragged=False)
    past_changed.targets[:, :3] += 1.0
    b3 = model.backward_states(past_changed)
    torch.testing.assert_close(b[:, 3:], b3[:, 3:])  # b_t never reads targets before t


def test_no_gradient_reaches_the_backward_lstm_through_the_aux_target() -> None:
    """The aux target b_t is detached: with z held fixed, aux gives the backward LSTM no gradient.

    (Through z the posterior, which reads b_t, still learns from the aux cost, as in the paper.)
    """
    model = make_model("real")
    batch = make_batch("real")
    b = model.backward_states(batch)
    h, z = torch.randn(3, 7, model.rnn_dim), torch.randn(3, 7, model.z_dim)
    model.aux_cost(h, z, b).sum().backward()
    for name, p in model.backward_rnn.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert torch.count_nonzero(model.aux_head.first.weight.grad) > 0
    model.zero_grad()
    model(batch).aux.sum().backward()  # through z, the posterior does learn from aux
    assert torch.count_nonzero(model.posterior.second.weight.grad) > 0


def test_z_only_aux_does_not_depend_on_h() -> None:
    model = make_model("real", aux_input="z")
    z, b = torch.randn(4, model.z_dim), torch.randn(4, model.rnn_dim)
    h1, h2 = torch.randn(4, model.rnn_dim), torch.randn(4, model.rnn_dim)
    torch.testing.assert_close(model.aux_cost(h1, z, b), model.aux_cost(h2, z, b))
    default = make_model("real", aux_input="h_z")
    assert not torch.allclose(default.aux_cost(h1, z, b), default.aux_cost(h2, z, b))


def test_l2_aux_loss_is_squared_error_to_tanh_mean() -> None:
    model = make_model("real", aux_loss="l2")
    h, z, b = torch.randn(4, 6), torch.randn(4, 3), torch.randn(4, 6)
    mean, _ = model.aux_head(torch.cat([h, z], -1))
    torch.testing.assert_close(model.aux_cost(h, z, b), (b - mean.tanh()).pow(2).sum(-1))


@pytest.mark.parametrize("aux_loss", ["gaussian", "l2"])
def test_the_mean_aux_reduction_is_the_sum_over_the_backward_states_size(aux_loss: str) -> None:
    summed, averaged = (make_model("real", aux_loss=aux_loss, aux_reduction=r) for r in ("sum", "mean"))
    batch = make_batch("real")
    noise = torch.randn(batch.inputs.shape[0], batch.inputs.shape[1], 3)
    a, b = summed(batch, noise=noise), averaged(batch, noise=noise)
    torch.testing.assert_close(b.aux, a.aux / summed.rnn_dim)
    torch.testing.assert_close(b.nll, a.nll)
    reference = reference_forward(averaged, batch, noise=noise)
    torch.testing.assert_close(reference.aux, b.aux)
    with pytest.raises(ValueError, match="aux_reduction"):
        make_model("real", aux_reduction="max")


KINDS = ["real", "binary", "tokens"]
VARIANTS = list(itertools.product(KINDS, [False, True], ["h_z", "z"], ["gaussian", "l2"], [None]))
# every head in these tests is narrow: width 0 gives each a product of its own, as a vocabulary gets
VARIANTS += [(kind, False, aux_input, "gaussian", 0) for kind in ("real", "tokens") for aux_input in ("h_z", "z")]


@pytest.mark.parametrize(("kind", "cln", "aux_input", "aux_loss", "own_product_width"), VARIANTS)
def test_fast_forward_equals_step_by_step_reference(
    kind: str, cln: bool, aux_input: str, aux_loss: str, own_product_width: int | None, monkeypatch
) -> None:
    if own_product_width is not None:
        monkeypatch.setattr(zforcing_model, "OWN_PRODUCT_HEAD_WIDTH", own_product_width)
    model = make_model(kind, cond_layer_norm=cln, aux_input=aux_input, aux_loss=aux_loss)
    batch = make_batch(kind)
    noise = torch.randn(3, 7, model.z_dim)
    fast = model(batch, noise)
    fast_loss = sum(getattr(fast, n).sum() for n in ("nll", "kl", "aux", "bwd"))
    fast_grads = torch.autograd.grad(fast_loss, list(model.parameters()), allow_unused=True)
    ref = reference_forward(model, batch, noise)
    ref_loss = sum(getattr(ref, n).sum() for n in ("nll", "kl", "aux", "bwd"))
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()), allow_unused=True)
    for name in TERMS:
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    for (pname, _), gf, gr in zip(model.named_parameters(), fast_grads, ref_grads, strict=True):
        if gr is None:
            assert gf is None or torch.count_nonzero(gf) == 0, pname
        else:
            torch.testing.assert_close(gf, gr, atol=1e-5, rtol=1e-4, msg=pname)


def test_same_noise_same_terms_and_noise_shape_is_checked() -> None:
    model = make_model("real")
    batch = make_batch("real")
    noise = torch.randn(3, 7, model.z_dim)
    torch.testing.assert_close(model(batch, noise).nll, model(batch, noise).nll)
    with pytest.raises(ValueError, match="noise must have shape"):
        model(batch, torch.randn(3, 7, model.z_dim + 1))


@pytest.mark.parametrize(("kind", "shape"), [("real", (4, 9, 5)), ("binary", (4, 9, 5)), ("tokens", (4, 9))])
def test_generate_samples_from_the_prior(kind: str, shape: tuple[int, ...]) -> None:
    model = make_model(kind)
    torch.manual_seed(0)
    x = model.generate(4, 9)
    assert x.shape == shape
    if kind == "binary":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    if kind == "tokens":
        assert x.dtype == torch.long and int(x.max()) < 5
    torch.manual_seed(0)
    torch.testing.assert_close(model.generate(4, 9), x)  # seeded → reproducible


def test_head_that_cannot_score_the_data_is_a_clear_error() -> None:
    from zf_lightning.models import ZForcing

    with pytest.raises(ValueError, match="output=bernoulli"):
        ZForcing(DataSpec("binary", 4, "image", 4), GaussianHead, emb_dim=4, rnn_dim=4, z_dim=2, mlp_dim=4)
