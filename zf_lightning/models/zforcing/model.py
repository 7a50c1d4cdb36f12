"""Z-Forcing (Goyal et al., NeurIPS 2017): a forward LSTM driven by per-step latents z_t,
a posterior that reads a backward LSTM over the future, and an auxiliary cost that makes
z_t predict the backward state.

Naming follows the DVAE toolkit's split into *inference* (backward LSTM, posterior),
*generation* (prior, output head) and *recurrence* (the forward cell).

The forward pass is written for speed: everything that does
not depend on h_{t-1} runs for all steps at once before or after the Python loop, and the
loop itself does one product from h_{t-1} (to the gates and the posterior) and one from
z_t. In plain mode the loop is one autograd node with backpropagation through time written
out (``zf_lightning.models.zforcing.recurrence``), as fused RNN kernels do; the conditional-layer-norm
loop runs under autograd with its in-loop weight gradients formed once after the loop
(``LoopLinear``). ``zf_lightning.models.zforcing.reference`` computes the same terms the plain way,
step by step, and the tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zf_lightning.models.common import (
    InputEmbedding,
    LabelEmbedding,
    StepSampler,
    ValueEmbedding,
    check_head,
    reverse_padded,
)
from zf_lightning.models.distributions import gaussian_nll, reparameterize, tanh_gaussian_nll
from zf_lightning.models.heads import HeadFactory, label_nll, natural_head
from zf_lightning.models.latent import LatentPath, latent_noise, latent_terms
from zf_lightning.models.layers import ClippedLeakyReLU, GaussianMLP, ZLSTMCell, lstm_pointwise, sigmoid_tanh
from zf_lightning.models.products import linear, linear_feature_major
from zf_lightning.models.zforcing.cell import LoopLinear
from zf_lightning.models.zforcing.native import NativeLoops, native_loops
from zf_lightning.models.zforcing.recurrence import plain_recurrence, step_ops
from zf_lightning.types import (
    DataSpec,
    DeterministicStep,
    HasAuxCost,
    HasBackwardCost,
    HasMeanPath,
    HasPosterior,
    PosteriorPass,
    PredictsClasses,
    PredictsValues,
    SequenceBatch,
    StepTerms,
)

AuxInput = Literal["h_z", "z"]
# whether ZForcing runs its step loops in C++ unless told otherwise (docs/speed.md: what it saves)
NATIVE_LOOP_DEFAULT = True
# an output head wider than this gets a product of its own instead of a slice of the one over all states
OWN_PRODUCT_HEAD_WIDTH = 1024


AuxLoss = Literal["gaussian", "l2"]
AuxReduction = Literal["sum", "mean"]


class ZForcing(
    nn.Module, HasPosterior, HasAuxCost, HasBackwardCost, HasMeanPath, PredictsClasses, PredictsValues, StepSampler
):
    """Z-Forcing with the options of the authors' code.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)`` for p(x_{t+1} | h_t); a second instance
            predicts the inputs from the backward states (the "bwd" cost, filled while
            ``backward_cost`` is on; the objective switches it off when its weight is 0).
        emb_dim, rnn_dim, z_dim, mlp_dim: layer sizes (TIMIT: 512, 1024, 256, 512).
        cond_layer_norm: z_t sets the layer-norm gain and bias of the hidden-to-hidden
            pre-activations instead of entering the cell as input.
        aux_input: ``h_z`` feeds [h_{t-1}; z_t] to the auxiliary MLP (authors' default),
            ``z`` feeds z_t alone (the paper's equation).
        aux_loss: ``gaussian`` (-log N(b_t; tanh(mu), var)) or ``l2`` (squared error to tanh(mu)).
        aux_reduction: ``sum`` over the dimensions of b_t (the paper's) or ``mean`` over them. Summed,
            the cost grows with the backward state's size and its scale next to the data's NLL
            differs by orders of magnitude between data sets; averaged, a weight means the same
            per dimension everywhere.
        dropout: on the input embedding.
        compile_step: compile the pointwise parts of each recurrence step with ``torch.compile``
            (True: the default backend; a string: that backend). Off by default: it needs a
            compiler and a cold compile of tens of seconds on a CPU, and there the compiled step
            measured slower than the eager one at the FSDD studies' sizes (docs/speed.md); on a
            GPU it replaces many small kernel launches with a few.
        native_loop: run the plain recurrence's step loops (forward and backward) in C++
            (``zf_lightning.models.zforcing.native``) on CPU tensors: the same buffers, products
            and kernels as the Python loops, without their per-operation cost. Built on first use
            and cached; where it cannot be built the Python loops run (one log line). Ignored
            with ``cond_layer_norm``, ``compile_step``, on a GPU and for half-precision weights.
    """

    def __init__(
        self,
        spec: DataSpec,
        head: HeadFactory,
        emb_dim: int = 512,
        rnn_dim: int = 1024,
        z_dim: int = 256,
        mlp_dim: int = 512,
        cond_layer_norm: bool = False,
        aux_input: AuxInput = "h_z",
        aux_loss: AuxLoss = "gaussian",
        aux_reduction: AuxReduction = "sum",
        dropout: float = 0.0,
        compile_step: bool | str = False,
        native_loop: bool = NATIVE_LOOP_DEFAULT,
    ) -> None:
        super().__init__()
        if aux_input not in ("h_z", "z"):
            raise ValueError(f"aux_input must be 'h_z' or 'z', got {aux_input!r}")
        if aux_loss not in ("gaussian", "l2"):
            raise ValueError(f"aux_loss must be 'gaussian' or 'l2', got {aux_loss!r}")
        if aux_reduction not in ("sum", "mean"):
            raise ValueError(f"aux_reduction must be 'sum' or 'mean', got {aux_reduction!r}")
        self.spec = spec
        self.rnn_dim = rnn_dim
        self.z_dim = z_dim
        self.aux_input = aux_input
        self.aux_loss = aux_loss
        self.aux_reduction = aux_reduction
        self.cond_layer_norm = cond_layer_norm
        self.compile_step = compile_step
        self._ops = step_ops(compile_step)
        self.native_loop = native_loop
        self.backward_cost = True
        if native_loop and not compile_step and not cond_layer_norm:  # the loops _native would run
            # loaded now, not at the first forward: the extension also forms this model's products and
            # Gaussian terms wherever it is loaded, so a run resumed in a fresh process must have it
            # from its first update on, as the uninterrupted run had
            native_loops()

        self.embedding = InputEmbedding(spec, emb_dim, dropout)
        # labelled data: the targets the backward LSTM reads are labels (class ids or real values,
        # absent at most steps), embedded on their own
        self.label_embedding: nn.Module | None = None
        if spec.classes is not None:
            self.label_embedding = LabelEmbedding(spec.classes, emb_dim)
        elif spec.regression:
            self.label_embedding = ValueEmbedding(spec.output_dim, emb_dim)
        # inference
        self.backward_rnn = nn.LSTM(emb_dim, rnn_dim, batch_first=True)
        nn.init.orthogonal_(self.backward_rnn.weight_hh_l0)
        self.posterior = GaussianMLP(2 * rnn_dim, mlp_dim, z_dim)  # input [h_{t-1}; b_t]
        # generation
        self.prior = GaussianMLP(rnn_dim, mlp_dim, z_dim)
        self.output_head = head(rnn_dim, spec.output_dim)
        # predicts the inputs: with the configured head when the targets are the inputs, else
        # with the plain head of the inputs' kind (labelled data: the output head scores labels)
        self.backward_head = (natural_head(spec.kind) if spec.labelled else head)(rnn_dim, spec.dim)
        check_head(self.output_head, spec)
        # recurrence: z enters through a linear map (plain) or an MLP to 8H LN gains/biases
        if cond_layer_norm:
            self.z_map: nn.Module = nn.Sequential(
                nn.Linear(z_dim, mlp_dim), ClippedLeakyReLU(), nn.Linear(mlp_dim, 8 * rnn_dim)
            )
        else:
            self.z_map = nn.Linear(z_dim, mlp_dim)
        self.cell = ZLSTMCell(emb_dim, mlp_dim, rnn_dim, cond_layer_norm=cond_layer_norm)
        # auxiliary cost
        aux_in = z_dim + (rnn_dim if aux_input == "h_z" else 0)
        self.aux_head = GaussianMLP(aux_in, mlp_dim, rnn_dim)

    # ------------------------------------------------------------------ pieces
    def backward_states(self, batch: SequenceBatch) -> Tensor:
        """b_t for every step: the backward LSTM's state after reading targets T..t."""
        lengths = batch.lengths
        emb = self.embedding(batch.targets) if self.label_embedding is None else self.label_embedding(batch.targets)
        states, _ = self.backward_rnn(reverse_padded(emb, lengths))
        return reverse_padded(states, lengths)

    def z_condition(self, z: Tensor) -> Tensor:
        """What z_t contributes to the cell: the linear z map, or clipped CLN gains/biases."""
        out = self.z_map(z)
        return torch.clamp(out, -3.0, 3.0) if self.cond_layer_norm else out

    def aux_features(self, h_prev: Tensor, z: Tensor) -> Tensor:
        return torch.cat([h_prev, z], dim=-1) if self.aux_input == "h_z" else z

    def aux_cost(self, h_prev: Tensor, z: Tensor, b: Tensor) -> Tensor:
        """-log p(b_t | z_t[, h_{t-1}]) with the target detached: no gradient reaches the backward LSTM."""
        return self._aux_loss(*self.aux_head(self.aux_features(h_prev, z)), b)

    def _aux_cost_from_preactivation(self, pre: Tensor, b: Tensor) -> Tensor:
        """The auxiliary cost from the aux head's first-layer pre-activation: the Gaussian one as one
        fused node over the head's output (clamp, tanh and density: ``tanh_gaussian_nll``)."""
        if self.aux_loss != "gaussian":
            return self._aux_loss(*self.aux_head.from_hidden_preactivation(pre), b)
        cost = tanh_gaussian_nll(b.detach(), self.aux_head.unclamped_output(pre), self.aux_head.clamp)
        return cost / b.shape[-1] if self.aux_reduction == "mean" else cost

    def _aux_loss(self, mean: Tensor, logvar: Tensor, b: Tensor) -> Tensor:
        target = b.detach()
        if self.aux_loss == "l2":
            cost = (target - sigmoid_tanh(mean)).pow(2).sum(-1)
        else:
            cost = gaussian_nll(target, sigmoid_tanh(mean), logvar)
        return cost / target.shape[-1] if self.aux_reduction == "mean" else cost

    # ------------------------------------------------------------------ forward
    def forward(self, batch: SequenceBatch, noise: Tensor | None = None) -> StepTerms:
        """Per-step objective terms for one posterior sample path.

        ``noise`` is N(0, I) of shape [B, T, z_dim]; pass it to reproduce a sample path.
        """
        states, z, q, b, bwd_params = self._posterior_pass(batch, noise, with_backward_head=self.backward_cost)
        return self._terms(batch, states, z, q, b, bwd_params)

    def infer(self, batch: SequenceBatch, noise: Tensor | None = None) -> PosteriorPass:
        """Run the recurrence under the posterior: states, latents and posterior parameters.

        Analyses (active units, probes) read ``mean_q`` and ``h`` from here.
        """
        states, z, q, b, _ = self._posterior_pass(batch, noise, with_backward_head=False)
        mean_q, logvar_q = q.chunk(2, dim=-1)
        return PosteriorPass(h_prev=states[:, :-1], h=states[:, 1:], z=z, mean_q=mean_q, logvar_q=logvar_q, b=b)

    def _posterior_pass(
        self, batch: SequenceBatch, noise: Tensor | None, with_backward_head: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """States h_0..h_T [B, T+1, H], z, q = [mean; logvar], b, and the backward head's parameters.

        Each _loop_* does all that does not depend on h_{t-1} for all steps before its Python
        loop; the heads, KL and log-densities run on the stacked states in _terms. What reads
        b_t (the backward head and the posterior's b part) is one product.
        """
        noise = latent_noise(noise, batch.mask, self.z_dim)
        emb = self.embedding(batch.inputs)
        b = self.backward_states(batch)
        first = self.posterior.first
        weights, biases = [first.weight[:, self.rnn_dim :]], [first.bias]
        if with_backward_head:
            weights.insert(0, self.backward_head.proj.weight)
            biases.insert(0, self.backward_head.proj.bias)
        from_b = linear(b, torch.cat(weights), torch.cat(biases))
        bwd_params, post_from_b = from_b.split([from_b.shape[-1] - first.out_features, first.out_features], dim=-1)
        loop = self._loop_cond_layer_norm if self.cond_layer_norm else self._loop_plain
        states, z, q = loop(emb, post_from_b, noise)
        return states, z, q, b, bwd_params if with_backward_head else None

    def _weight_from_h(self, transposed: bool = False) -> Tensor:
        """[W_hh; W_qh] ([4H + M, H]): every in-loop product from h_{t-1} (gates, posterior) as one map.

        ``transposed``: the same map stored as its transpose, the layout in which ``LoopLinear``'s
        per-step product x @ W^T reads it row-major without another copy.
        """
        parts = [self.cell.weight_hh, self.posterior.first.weight[:, : self.rnn_dim]]
        if transposed:
            return torch.cat([p.t() for p in parts], dim=1).t()
        return torch.cat(parts, dim=0)

    def _posterior_step(self, post: LoopLinear, pre: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_t) parameters [mean; logvar] from the posterior's first-layer pre-activation, and z_t."""
        act = self.posterior.act
        out = post.step(self._ops.act(pre, act.slope, act.bound))
        return self._ops.sample(out, noise, self.posterior.clamp, -1)

    def _loop_plain(self, emb: Tensor, post_from_b: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The recurrence with the linear z map folded into the gates (``plain_recurrence``).

        Before the loop, for all steps at once and feature-major ([features, T, B]):
        [W_ix emb_t + bias + W_iz a ; W_qb b_t + c] (a, c: the z-map and posterior biases).
        The loop adds [W_hh; W_qh] h_{t-1}, forms z_t and adds (W_iz A) z_t to the gates.
        Returns h_0..h_T [B, T+1, H], z and q batch-major.
        """
        B, T, _ = emb.shape
        cell, second = self.cell, self.posterior.second
        w_iz = cell.weight_iz
        bias = cell.bias + w_iz @ self.z_map.bias
        gates_x = linear_feature_major(emb.transpose(0, 1).reshape(T * B, -1), cell.weight_ix, bias)
        pre = torch.cat([gates_x.view(-1, T, B), post_from_b.permute(2, 1, 0)], 0)  # [4H + M, T, B]
        act = self.posterior.act
        hs, z, q = plain_recurrence(
            pre,
            noise.permute(1, 2, 0).contiguous(),  # [T, Z, B]
            self._weight_from_h(),
            second.weight,
            second.bias,
            w_iz @ self.z_map.weight,
            self._ops,
            act.slope,
            act.bound,
            self.posterior.clamp,
            self._native(pre),
        )

        def batch_major(x: Tensor) -> Tensor:
            return x.permute(2, 0, 1).contiguous()  # [T, ., B] -> [B, T, .]

        return batch_major(hs), batch_major(z), batch_major(q)

    def _native(self, x: Tensor) -> NativeLoops | None:
        """The C++ step loops when this model uses them for ``x`` (built on the first call), else None."""
        if not self.native_loop or self.compile_step or x.device.type != "cpu":
            return None
        if x.dtype not in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu"):
            return None  # the C++ loops are built for these (under autocast the recurrence runs in fp32)
        return native_loops()

    def _loop_cond_layer_norm(self, emb: Tensor, post_from_b: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The recurrence with z_t setting the gain and bias of LN(W_hh h_{t-1}); returns h_0..h_T
        [B, T+1, H], z and q."""
        H = self.rnn_dim
        cell, first = self.cell, self.posterior.first
        gates_x = cell.input_gates(emb.transpose(0, 1))  # [T, B, 4H]
        post_from_b = post_from_b.transpose(0, 1)
        from_h = LoopLinear(self._weight_from_h(transposed=True))
        post = LoopLinear(self.posterior.second.weight, self.posterior.second.bias)
        z_in, z_act, z_out = self.z_map
        cond_in, cond_out = LoopLinear(z_in.weight, z_in.bias), LoopLinear(z_out.weight, z_out.bias)

        h = c = emb.new_zeros(emb.shape[0], H)
        h_all, z_all, q_all = [h], [], []
        steps = zip(gates_x.unbind(0), post_from_b.unbind(0), noise.unbind(1), strict=True)
        for gates_x_t, post_from_b_t, noise_t in steps:
            gh, post_h = from_h.step(h).split([4 * H, first.out_features], dim=1)
            q, z = self._posterior_step(post, post_h + post_from_b_t, noise_t)
            cond = cond_out.step(self._ops.act(cond_in.step(z), z_act.slope, z_act.bound))
            h, c = self._ops.cln_cell(gates_x_t, gh, cond, c)
            h_all.append(h)
            z_all.append(z)
            q_all.append(q)
        return torch.stack(h_all, 1), torch.stack(z_all, 1), torch.stack(q_all, 1)

    def _terms(
        self, batch: SequenceBatch, states: Tensor, z: Tensor, q: Tensor, b: Tensor, bwd_params: Tensor | None
    ) -> StepTerms:
        """The per-step terms from the states h_0..h_T [B, T+1, H]: whatever reads them (output
        head on h_1..h_T, prior and aux head on h_0..h_{T-1}) is one product over all states, unless
        the output head is wider than ``OWN_PRODUCT_HEAD_WIDTH`` (a vocabulary): its slice of the
        shared product would be copied for the loss and its gradient copied into the shared buffer,
        which costs more than the second product saves."""
        H = self.rnn_dim
        aux_first = self.aux_head.first
        head = self.output_head.proj
        readers = [self.prior.first]
        weights = [layer.weight for layer in readers]
        if self.aux_input == "h_z":
            weights.append(aux_first.weight[:, :H])
            readers.append(aux_first)
        widths = [w.shape[0] for w in weights]
        if head.out_features > OWN_PRODUCT_HEAD_WIDTH:
            out_params = linear(states[:, 1:], head.weight, head.bias)
            from_prev = linear(states[:, :-1], torch.cat(weights), torch.cat([layer.bias for layer in readers]))
            prior_pre, *aux_from_h = from_prev.split(widths, dim=-1)
        else:
            weights.insert(0, head.weight)
            readers.insert(0, head)
            from_h = linear(states, torch.cat(weights), torch.cat([layer.bias for layer in readers]))
            out_params, prior_pre, *aux_from_h = step_rows(from_h, [head.out_features, *widths])
        h_prev = states[:, :-1]
        if aux_from_h:
            aux_pre = aux_from_h[0] + linear(z, aux_first.weight[:, H:])
        else:
            aux_pre = linear(z, aux_first.weight, aux_first.bias)
        mean_q, logvar_q = q.chunk(2, dim=-1)
        path = LatentPath(h_prev, z, *self.prior.from_hidden_preactivation(prior_pre), mean_q, logvar_q)
        extra = {"aux": self._aux_cost_from_preactivation(aux_pre, b)}
        if bwd_params is not None:
            extra["bwd"] = self.backward_head.nll(bwd_params, batch.inputs)
        nll = label_nll(self.output_head, out_params, batch.targets, self.spec)
        return latent_terms(path, nll, batch.mask, **extra)

    # ------------------------------------------------------------------ sampling
    def sample_prior(self, h_prev: Tensor) -> Tensor:
        """z_t ~ p(z_t | h_{t-1}), a reparameterised draw (used by generate and text decoding)."""
        mean_p, logvar_p = self.prior(h_prev)
        return reparameterize(mean_p, logvar_p, torch.randn_like(mean_p))

    def cell_step(self, emb_t: Tensor, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One forward-LSTM step from an embedded input and a latent sample (used by generate)."""
        gates = self.cell.input_gates(emb_t) + self.cell.hidden_gates(
            F.linear(h, self.cell.weight_hh), self.z_condition(z)
        )
        return lstm_pointwise(gates, c)

    def initial_state(self, n: int) -> tuple[Tensor, Tensor]:
        """(h_0, c_0) = 0."""
        h = self.cell.weight_hh.new_zeros(n, self.rnn_dim)
        return h, torch.zeros_like(h)

    def mean_path(self) -> PriorMeanStep:
        return PriorMeanStep(self)

    def prior_states(self, inputs: Tensor) -> Tensor:
        """h_t ``[B, T, H]`` of the forward LSTM reading ``inputs`` with every z_t drawn from the
        prior p(z_t | h_{t-1}): what the model predicts from the past alone (no backward LSTM)."""
        emb = self.embedding(inputs)
        h, c = self.initial_state(emb.shape[0])
        states = []
        for emb_t in emb.unbind(1):
            h, c = self.cell_step(emb_t, self.sample_prior(h), h, c)
            states.append(h)
        return torch.stack(states, 1)

    def predict_proba(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """Class probabilities ``[B, T, C]``, the average over ``samples`` prior paths.

        The posterior reads the targets (the label included), so accuracy must never come from
        ``forward``; this path reads only ``batch.inputs``.
        """
        if self.spec.classes is None:
            raise ValueError("ZForcing.predict_proba needs classification data (DataSpec.classes)")
        return self._prior_average(batch, samples, lambda params: torch.softmax(params, dim=-1))

    def predict_value(self, batch: SequenceBatch, samples: int = 1) -> Tensor:
        """Predicted values ``[B, T]``: the output head's mean averaged over ``samples`` prior
        paths (as ``predict_proba``, never from the posterior, which reads the label)."""
        if not self.spec.regression:
            raise ValueError("ZForcing.predict_value needs regression data (DataSpec.regression)")
        return self._prior_average(batch, samples, lambda params: self.output_head.mean(params)[..., 0])

    def _prior_average(self, batch: SequenceBatch, samples: int, readout: Callable[[Tensor], Tensor]) -> Tensor:
        """``readout`` of the output head's parameters, averaged over ``samples`` prior paths run
        side by side (the batch repeated), per sequence and step."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        B, T = batch.mask.shape
        out = readout(self.output_head(self.prior_states(batch.inputs.repeat_interleave(samples, dim=0))))
        return out.view(B, samples, T, *out.shape[2:]).mean(dim=1)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor], z: Tensor | None = None) -> tuple[Tensor, Any]:
        """One forward-LSTM step driven by z_t (``z``, or drawn from p(z_t | h_{t-1})); the head
        reads the new h_t."""
        h, c = state
        if z is None:
            z = self.sample_prior(h)
        h, c = self.cell_step(self.embedding(x), z, h, c)
        return self.output_head(h), (h, c)


def step_rows(from_h: Tensor, widths: list[int]) -> list[Tensor]:
    """Split the product over the states h_0..h_T [B, T+1, sum(widths)] along its features into
    what reads h_t (the first width: steps 1..T) and what reads h_{t-1} (the others: steps 0..T-1).

    The same views as slicing each part, as one autograd node: the gradient of ``from_h`` is
    assembled in one buffer (only the two rows no part reads are zeroed), where slicing's backward
    zero-fills a buffer per part and concatenates them."""
    if not (torch.is_grad_enabled() and from_h.requires_grad):
        parts = from_h.split(widths, dim=-1)
        return [parts[0][:, 1:], *(p[:, :-1] for p in parts[1:])]
    return list(_StepRows.apply(from_h, widths))


class _StepRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_h: Tensor, widths: list[int]) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.shape, ctx.widths = from_h.shape, widths
        parts = from_h.split(widths, dim=-1)
        return (parts[0][:, 1:], *(p[:, :-1] for p in parts[1:]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        like = next(g for g in grads if g is not None)
        d = like.new_empty(ctx.shape)
        first = ctx.widths[0]
        d[:, 0, :first].zero_()
        d[:, -1, first:].zero_()
        slots = d.split(ctx.widths, dim=-1)
        for i, (slot, grad) in enumerate(zip(slots, grads, strict=True)):
            rows = slot[:, 1:] if i == 0 else slot[:, :-1]
            if grad is None:
                rows.zero_()
            else:
                rows.copy_(grad)
        return d, None


class PriorMeanStep(DeterministicStep):
    """Z-Forcing's forward recurrence with z_t at the prior mean E[z_t | h_{t-1}]: a deterministic
    step (the same weights as the model's), so SIRE can compare the states two orders reach
    (``regularizer.latent_path=prior_mean``). State: (h, c), compared as [h; c]."""

    def __init__(self, model: ZForcing) -> None:
        self.model = model

    def initial_state(self, n: int) -> tuple[Tensor, Tensor]:
        return self.model.initial_state(n)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor], z: Tensor | None = None) -> tuple[Tensor, Any]:
        mean_p, _ = self.model.prior(state[0])
        return self.model.step(x, state, z=mean_p if z is None else z)

    def state_vector(self, state: tuple[Tensor, Tensor]) -> Tensor:
        return torch.cat(state, dim=-1)

    def output_vector(self, state: tuple[Tensor, Tensor]) -> Tensor:
        return state[0]
