"""Decoder-only transformer of Nanda, Chan, Lieberum, Smith, Steinhardt 2023 ("Progress measures
for grokking via mechanistic interpretability"): learned token + positional embeddings, causal
multi-head attention without biases, ReLU MLP with biases, optional LayerNorm. Names, hooks,
the logits convention (``[batch, pos, d_vocab_out]``, the class logits at the last position) and
the ``run_with_cache`` cache follow TransformerLens (see :mod:`grokinterp.models.hooked`).
"""

from __future__ import annotations

import math

import torch
from einops import einsum
from torch import nn
from transformer_lens.hook_points import HookPoint

from grokinterp.config import ModelConfig
from grokinterp.models.components import Embed, MLPBlock, Unembed
from grokinterp.models.hooked import HookedConfig, HookedModel, model_output
from grokinterp.tasks import Task


class LayerNorm(nn.Module):
    """TransformerLens-style LayerNorm with parameters ``w`` and ``b``."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model) / math.sqrt(d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_pos[: tokens.shape[-1]].expand(tokens.shape[0], -1, -1)


class Attention(nn.Module):
    """Causal softmax attention on q·k/√d_head; no biases (Nanda et al. 2023)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int):
        super().__init__()
        s = 1 / math.sqrt(d_model)
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_model, d_head) * s)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_model, d_head) * s)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_model, d_head) * s)
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * s)
        self.register_buffer(
            "mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False
        )
        self.scale = math.sqrt(d_head)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # last_only: queries only at the last position (all the loss reads); keys/values everywhere.
        xq = x[:, -1:] if last_only else x
        q = self.hook_q(einsum(xq, self.W_Q, "b p d, h d e -> b p h e"))
        k = self.hook_k(einsum(x, self.W_K, "b p d, h d e -> b p h e"))
        v = self.hook_v(einsum(x, self.W_V, "b p d, h d e -> b p h e"))
        scores = einsum(q, k, "b q h e, b k h e -> b h q k") / self.scale
        n = x.shape[1]
        mask = self.mask[n - 1 : n, :n] if last_only else self.mask[:n, :n]
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(einsum(pattern, v, "b h q k, b k h e -> b q h e"))
        return einsum(z, self.W_O, "b q h e, h e d -> b q d")


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ctx: int):
        super().__init__()
        use_ln = cfg.normalization == "LN"
        self.ln1 = LayerNorm(cfg.d_model) if use_ln else nn.Identity()
        self.ln2 = LayerNorm(cfg.d_model) if use_ln else nn.Identity()
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, n_ctx)
        self.mlp = MLPBlock(cfg.d_model, cfg.d_mlp, cfg.d_model, cfg.act_fn, cfg.bias, init="nanda")
        for name in (
            "hook_resid_pre",
            "hook_attn_out",
            "hook_resid_mid",
            "hook_mlp_out",
            "hook_resid_post",
        ):
            setattr(self, name, HookPoint())

    def forward(self, resid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), last_only))
        resid = self.hook_resid_mid((resid[:, -1:] if last_only else resid) + attn_out)
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))


class Transformer(HookedModel):
    """``forward(tokens [batch, pos]) -> logits [batch, pos, d_vocab_out]`` (TransformerLens's
    convention; ``d_vocab_out`` = the task's classes, read at the last position).

    With ``last_position_only = True`` (set by the trainer) the last block computes attention
    queries, MLP, residual and logits only at the last position: the logits are
    ``[batch, 1, d_vocab_out]``, equal to the last position's, and the hooks of that block see
    one position. ``run_with_cache`` returns a TransformerLens ``ActivationCache``
    (``cache["post", 0]``, ``decompose_resid``, ``accumulated_resid``, ``logit_attrs``,
    ``stack_head_results``); ``W_E``, ``W_pos``, ``W_U``, ``b_U`` and the per-layer stacks
    ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``W_in``, ``b_in``, ``W_out``, ``b_out`` read as in
    TransformerLens.
    """

    last_position_only: bool = False

    def __init__(self, cfg: ModelConfig, task: Task):
        super().__init__()
        self.cfg = HookedConfig.of(cfg, task)
        n_ctx = task.x_train.shape[1]
        self.embed = Embed(
            task.vocab_size, cfg.d_model, cfg.embedding == "factorized", cfg.embed_rank
        )
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(n_ctx, cfg.d_model)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg, n_ctx) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = Unembed(
            cfg.d_model, task.n_classes, False, cfg.output_scale, 1 / math.sqrt(task.vocab_size)
        )
        self.setup()

    def forward(
        self,
        tokens: torch.Tensor,
        return_type: str | None = "logits",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """Logits ``[batch, pos, d_vocab_out]`` (``return_type="logits"``); see
        :func:`grokinterp.models.hooked.model_output` for ``None``, ``"loss"``, ``"both"``."""
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            resid = block(resid, last_only=self.last_position_only and i == n - 1)
        return model_output(self.unembed(self.ln_final(resid)), return_type, labels)

    # ---- TransformerLens's weight names
    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]`` (a factorized embedding's product ``W_A @ W_B``)."""
        return self.embed.weight

    @property
    def W_pos(self) -> torch.Tensor:
        return self.pos_embed.W_pos

    def _stack(self, part: str, name: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(b, part), name) for b in self.blocks])

    @property
    def W_Q(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_model, d_head]``"""
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> torch.Tensor:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> torch.Tensor:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> torch.Tensor:
        """``[n_layers, n_heads, d_head, d_model]``"""
        return self._stack("attn", "W_O")

    @property
    def W_in(self) -> torch.Tensor:
        """``[n_layers, d_model, d_mlp]``"""
        return self._stack("mlp", "W_in")

    @property
    def W_out(self) -> torch.Tensor:
        """``[n_layers, d_mlp, d_model]``"""
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> torch.Tensor:
        return torch.stack([self._bias(b.mlp.b_in, self.cfg.d_mlp) for b in self.blocks])

    @property
    def b_out(self) -> torch.Tensor:
        return torch.stack([self._bias(b.mlp.b_out, self.cfg.d_model) for b in self.blocks])

    def _bias(self, b: torch.Tensor | None, n: int) -> torch.Tensor:
        return b if b is not None else self.W_pos.new_zeros(n)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """The bias terms in the residual stream before ``layer`` (TransformerLens's
        ``accumulated_bias``): the MLPs' ``b_out`` (attention has no output bias)."""
        out = self.W_pos.new_zeros(self.cfg.d_model)
        if include_mlp_biases:
            for block in self.blocks[:layer]:
                if block.mlp.b_out is not None:
                    out = out + block.mlp.b_out
        return out
