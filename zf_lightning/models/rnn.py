"""The deterministic baseline (Table 1's RNN-Gauss / RNN-GMM): a fused LSTM over the embedded
inputs and an output head, so its ``nll`` is the exact log-likelihood. Also the LSTM of the
capacity tasks (sequence classification).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zf_lightning.models.common import InputEmbedding, StepSampler, check_head
from zf_lightning.models.deterministic import DeterministicModel
from zf_lightning.models.heads import HeadFactory
from zf_lightning.types import DataSpec, DeterministicStep


def make_rnn(kind: str, input_size: int, hidden_size: int) -> nn.RNNBase:
    """A fused single-layer batch-first LSTM or GRU (``kind``: ``lstm`` | ``gru``)."""
    if kind not in ("lstm", "gru"):
        raise ValueError(f"rnn kind must be 'lstm' or 'gru', got {kind!r}")
    rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
    return rnn_cls(input_size, hidden_size, batch_first=True)


class RNN(DeterministicModel, StepSampler, DeterministicStep):
    """Deterministic LSTM baseline: h_t = LSTM(emb(x_t), h_{t-1}), p(y_t | h_t) from the head.

    Args:
        spec: the data's kind and size (from the data module).
        head: factory ``head(in_features, dim)`` (Gaussian, GMM, Bernoulli, categorical).
        emb_dim, rnn_dim: layer sizes.
        dropout: on the input embedding.

    Padding needs no packing: masks are prefixes, so real steps never read padded ones.
    The step is deterministic (``DeterministicStep``, what SIRE needs) when ``dropout`` is 0
    or the model is in eval mode.
    """

    def __init__(self, spec: DataSpec, head: HeadFactory, emb_dim: int = 64, rnn_dim: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.rnn_dim = rnn_dim
        self.embedding = InputEmbedding(spec, emb_dim, dropout)
        self.rnn = make_rnn("lstm", emb_dim, rnn_dim)
        self.output_head = head(rnn_dim, spec.output_dim)
        check_head(self.output_head, spec)

    def states(self, inputs: Tensor) -> Tensor:
        return self.rnn(self.embedding(inputs))[0]

    def initial_state(self, n: int) -> Any:
        return None  # the LSTM's zero state

    def step(self, x: Tensor, state: Any, z: Tensor | None = None) -> tuple[Tensor, Any]:
        """One LSTM step (``z`` is ignored: the model has no latents)."""
        h, state = self.rnn(self.embedding(x).unsqueeze(1), state)
        return self.output_head(h.squeeze(1)), state

    def state_vector(self, state: Any) -> Tensor:
        """The LSTM state (h, c) as ``[n, 2 H]``: SIRE compares both, since c carries what h forgets."""
        if state is None:
            raise ValueError("the LSTM's initial state is implicit (None); read a state after at least one step")
        h, c = state
        return torch.cat([h[-1], c[-1]], dim=-1)

    def output_vector(self, state: Any) -> Tensor:
        """The LSTM's h, ``[n, H]``: what the output head reads."""
        return self.state_vector(state)[:, : self.rnn.hidden_size]
