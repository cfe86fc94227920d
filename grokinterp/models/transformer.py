"""Decoder-only transformer of Nanda, Chan, Lieberum, Smith, Steinhardt 2023 ("Progress measures
for grokking via mechanistic interpretability"): learned token + positional embeddings, causal
multi-head attention without biases, ReLU MLP with biases, optional LayerNorm, logits read at
the last position. Names and hooks follow TransformerLens.
"""

from __future__ import annotations

import math

import torch
from einops import einsum
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokinterp.config import ModelConfig
from grokinterp.models.components import Embed, MLPBlock, Unembed
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


class Transformer(HookedRootModule):
    """``forward(tokens [batch, pos]) -> logits [batch, n_classes]`` at the last position.

    With ``last_position_only = True`` (set by the trainer) the last block computes attention
    queries, MLP and residual only at the last position: the logits are identical, the hooks of
    that block then see one position.
    """

    last_position_only: bool = False

    def __init__(self, cfg: ModelConfig, task: Task):
        super().__init__()
        self.cfg = cfg
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            resid = block(resid, last_only=self.last_position_only and i == n - 1)
        return self.unembed(self.ln_final(resid[:, -1]))
