"""Shared building blocks: embeddings (full or factorized), activations, unembedding."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from grokinterp.config import GrokinterpError

# Every nonlinearity is one of these modules; its input is the pre-activation, so analyses
# (local complexity) can hook all of them.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(ACTIVATIONS.values())


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise GrokinterpError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Embed(nn.Module):
    """Token embedding ``W_E [d_vocab, d_model]``, or factorized ``W_E = W_A @ W_B`` with
    ``W_A [d_vocab, r]`` and ``W_B [r, d_model]`` (GrokTransfer, Xu et al. 2025).

    Both variants index rows of the effective matrix ``weight``. ``a_std`` overrides the
    standard deviation of ``W_A`` (default ``1/√r``).
    """

    def __init__(
        self,
        d_vocab: int,
        d_model: int,
        factorized: bool = False,
        rank: int = 4,
        a_std: float | None = None,
    ):
        super().__init__()
        self.factorized = factorized
        if factorized:
            # Each factor ~ N(0, 1/√r·1/√d) scale so that A·B has the scale of a full W_E.
            a_std = 1 / math.sqrt(rank) if a_std is None else a_std
            self.W_A = nn.Parameter(torch.randn(d_vocab, rank) * a_std)
            self.W_B = nn.Parameter(torch.randn(rank, d_model) / math.sqrt(d_model))
        else:
            self.W_E = nn.Parameter(torch.randn(d_vocab, d_model) / math.sqrt(d_model))

    @property
    def weight(self) -> torch.Tensor:
        return self.W_A @ self.W_B if self.factorized else self.W_E

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.weight[tokens]

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``W_A @ W_B`` into a full ``W_E`` (GrokTransfer, Xu et al. 2025, Fig. 15b).

        The function computed is unchanged; training then continues on ``W_E``.
        """
        if not self.factorized:
            return
        full = (self.W_A @ self.W_B).clone()
        del self.W_A, self.W_B
        self.factorized = False
        self.W_E = nn.Parameter(full)


class InputEmbed(Embed):
    """The first layer's input weight of the vector-input ``mlp`` as an "embedding" (GrokTransfer
    on XOR-cluster data, Xu et al. 2025 §3): ``x @ W_E`` with ``W_E [input_dim, d_mlp]``, or
    factorized ``x @ W_A @ W_B`` with ``W_A [input_dim, r]``, ``W_B [r, d_mlp]``.

    ``W_B ~ N(0, 1/d_mlp)`` as in the token case; ``W_A ~ N(0, d_mlp / (3·r·input_dim))`` so that
    ``A·B`` has the variance of the full layer's ``U(±1/√input_dim)`` initialisation (it only
    matters when A is not overwritten, e.g. by a weak model's ``W_in``). ``merge()`` folds the
    factors into ``W_E`` (the same function, bit for bit). The bias ``b_in`` stays in the first
    MLP block.
    """

    def __init__(self, d_in: int, d_out: int, rank: int = 4):
        super().__init__(d_in, d_out, True, rank, math.sqrt(d_out / (3 * rank * d_in)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x @ (A·B), not (x @ A) @ B: the same cost as the full layer, and bit for bit the function
        # of a full layer W_in = A·B (so that merge() changes nothing, not even float rounding)
        return x @ self.weight


def effective_embedding(state: dict[str, torch.Tensor], prefix: str = "embed.") -> torch.Tensor:
    """``W_E [d_vocab, d_model]`` from a state dict holding either a full or factorized embedding."""
    if prefix + "W_E" in state:
        return state[prefix + "W_E"]
    if prefix + "W_A" in state and prefix + "W_B" in state:
        return state[prefix + "W_A"] @ state[prefix + "W_B"]
    raise GrokinterpError("state dict has no embedding (embed.W_E or embed.W_A/W_B)")


def first_layer_weight(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight the input meets first, from a state dict: a token model's embedding
    ``W_E [d_vocab, d]`` (:func:`effective_embedding`), or the vector-input ``mlp``'s first-layer
    ``W_in [input_dim, d_mlp]`` — ``blocks.0.mlp.W_in`` (full), ``embed.W_A @ embed.W_B``
    (factorized) or ``embed.W_E`` (factorized, merged). GrokTransfer's ``E_W``."""
    if any(k.startswith("embed.") for k in state):
        return effective_embedding(state)
    if "blocks.0.mlp.W_in" in state:
        return state["blocks.0.mlp.W_in"]
    raise GrokinterpError(
        "state dict has no embedding or first layer (embed.W_E, embed.W_A/W_B, blocks.0.mlp.W_in)"
    )


class Unembed(nn.Module):
    """``logits = output_scale · (x @ W_U + b_U)``."""

    def __init__(self, d_in: int, n_out: int, bias: bool, output_scale: float, init_std: float):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_in, n_out) * init_std)
        self.b_U = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.output_scale = output_scale
        self.hook_logits = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.W_U
        if self.b_U is not None:
            out = out + self.b_U
        return self.hook_logits(out * self.output_scale)


class MLPBlock(nn.Module):
    """``post = act(x @ W_in + b_in)``; optionally ``out = post @ W_out + b_out``.

    Hooks ``hook_pre`` (pre-activation) and ``hook_post`` (activation) as in TransformerLens.
    :meth:`drop_input_weight` removes ``W_in`` (the input then arrives already multiplied by it:
    the factorized first layer of ``mlp``, see :class:`InputEmbed`).
    """

    def __init__(
        self, d_in: int, d_mlp: int, d_out: int | None, act_fn: str, bias: bool, init: str
    ):
        super().__init__()
        if init == "nanda":  # Nanda et al. 2023: N(0, 1/d_model)
            w_in = torch.randn(d_in, d_mlp) / math.sqrt(d_in)
            w_out = torch.randn(d_mlp, d_out) / math.sqrt(d_out) if d_out else None
        else:  # PyTorch nn.Linear default: U(±1/√fan_in)
            w_in = (torch.rand(d_in, d_mlp) * 2 - 1) / math.sqrt(d_in)
            w_out = (torch.rand(d_mlp, d_out) * 2 - 1) / math.sqrt(d_mlp) if d_out else None
        self.W_in = nn.Parameter(w_in)
        self.b_in = nn.Parameter(_bias_init(d_mlp, d_in, init)) if bias else None
        self.act = make_activation(act_fn)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        if d_out:
            self.W_out = nn.Parameter(w_out)
            self.b_out = nn.Parameter(torch.zeros(d_out)) if bias else None
        else:
            self.W_out = None
            self.b_out = None

    def drop_input_weight(self) -> None:
        del self.W_in
        self.register_parameter("W_in", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = x if self.W_in is None else x @ self.W_in
        if self.b_in is not None:
            pre = pre + self.b_in
        post = self.hook_post(self.act(self.hook_pre(pre)))
        if self.W_out is None:
            return post
        out = post @ self.W_out
        return out + self.b_out if self.b_out is not None else out


def _bias_init(n: int, fan_in: int, init: str) -> torch.Tensor:
    if init == "nanda":
        return torch.zeros(n)
    return (torch.rand(n) * 2 - 1) / math.sqrt(fan_in)
