"""MLPs: ``embed_mlp`` for token tasks and ``mlp`` for vector inputs.

``embed_mlp`` (Minegishi et al. 2024, "Bridging Lottery Ticket and Grokking"; GrokTransfer's FNN,
Xu et al. 2025): embed a and b, combine them (``sum`` E[a]+E[b], or ``concat``), then
``n_layers`` hidden layers ``act(x @ W_in + b_in)``, optionally projected back to ``d_embed`` by
``W_out`` (Minegishi's out-projection), then ``W_U``. The ``=`` token is ignored.

``mlp`` (Omnigrok, Liu et al. 2023; Deep Grokking, Fan et al. 2024): ``n_layers`` hidden layers
of width ``d_mlp`` on a vector input, then ``W_U``, ``b_U``. With ``embedding = "factorized"``
(GrokTransfer on XOR-cluster data, Xu et al. 2025 §3) the first layer's input weight
``blocks.0.mlp.W_in [input_dim, d_mlp]`` is replaced by ``embed.W_A [input_dim, r] @ embed.W_B
[r, d_mlp]`` (r = ``embed_rank``; :class:`~grokinterp.models.components.InputEmbed`), hooked at
``hook_embed`` (``x @ W_A @ W_B``, before ``b_in``); ``embed.merge()`` folds it into ``embed.W_E``.
Every other parameter is drawn exactly as in the full model with the same seed.

Logits (TransformerLens's convention, :mod:`grokinterp.models.hooked`): ``embed_mlp`` is a token
model that answers at one position, ``[batch, 1, d_vocab_out]`` (so ``logits[:, -1]`` are the
class logits, as for the transformer); ``mlp`` has no positions, ``[batch, n_classes]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from grokinterp.config import ModelConfig
from grokinterp.models.components import Embed, InputEmbed, MLPBlock, Unembed
from grokinterp.models.hooked import HookedConfig, HookedModel, model_output
from grokinterp.tasks import Task


class Block(nn.Module):
    """Holds one ``mlp`` so that names read ``blocks.{i}.mlp.W_in`` as in TransformerLens."""

    def __init__(self, mlp: MLPBlock):
        super().__init__()
        self.mlp = mlp
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_resid_post(self.mlp(x))


def _stack(cfg: ModelConfig, d_in: int, d_out_last: int | None) -> nn.ModuleList:
    blocks = []
    for i in range(cfg.n_layers):
        last = i == cfg.n_layers - 1
        d = d_in if i == 0 else cfg.d_mlp
        blocks.append(
            Block(
                MLPBlock(
                    d, cfg.d_mlp, d_out_last if last else None, cfg.act_fn, cfg.bias, init="torch"
                )
            )
        )
    return nn.ModuleList(blocks)


class EmbedMLP(HookedModel):
    """``forward(tokens [batch, pos]) -> logits [batch, 1, d_vocab_out]``: one output position
    (the ``=`` token's), so that ``logits[:, -1]`` are the class logits as for the transformer.
    The hidden layers' hooks (``blocks.{i}.mlp.hook_pre`` / ``hook_post``) are ``[batch, d_mlp]``.
    """

    def __init__(self, cfg: ModelConfig, task: Task):
        super().__init__()
        self.cfg = HookedConfig.of(cfg, task)
        self.embed = Embed(
            task.vocab_size, cfg.d_embed, cfg.embedding == "factorized", cfg.embed_rank
        )
        self.hook_embed = HookPoint()
        d_in = cfg.d_embed * (2 if cfg.combine == "concat" else 1)
        self.blocks = _stack(cfg, d_in, cfg.d_embed if cfg.mlp_out else None)
        d_last = cfg.d_embed if cfg.mlp_out else cfg.d_mlp
        self.unembed = Unembed(
            d_last,
            task.n_classes,
            cfg.bias and not cfg.mlp_out,
            cfg.output_scale,
            1 / math.sqrt(d_last),
        )
        self.setup()

    def forward(
        self,
        tokens: torch.Tensor,
        return_type: str | None = "logits",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        e = self.hook_embed(self.embed(tokens[:, :2]))  # [batch, 2, d_embed]; '=' ignored
        x = e[:, 0] + e[:, 1] if self.cfg.combine == "sum" else e.flatten(1)
        for block in self.blocks:
            x = block(x)
        # [batch, 1, d]: a view, so the unembedding is the same matmul as on [batch, d]
        return model_output(self.unembed(x.unsqueeze(1)), return_type, labels)


class MLP(HookedModel):
    """``forward(x [batch, input_dim]) -> logits [batch, n_classes]`` (no positions)."""

    def __init__(self, cfg: ModelConfig, task: Task):
        super().__init__()
        self.cfg = HookedConfig.of(cfg, task)
        self.hook_input = HookPoint()
        self.blocks = _stack(cfg, task.input_dim, None)
        self.unembed = Unembed(
            cfg.d_mlp, task.n_classes, cfg.bias, cfg.output_scale, 1 / math.sqrt(cfg.d_mlp)
        )
        if cfg.embedding == "factorized":
            # drawn after the full model's parameters, so that those stay the same draw
            self.blocks[0].mlp.drop_input_weight()
            self.embed = InputEmbed(task.input_dim, cfg.d_mlp, cfg.embed_rank)
            self.hook_embed = HookPoint()
        self.setup()

    def forward(
        self,
        x: torch.Tensor,
        return_type: str | None = "logits",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        x = self.hook_input(x)
        if self.cfg.embedding == "factorized":
            x = self.hook_embed(self.embed(x))  # [batch, d_mlp]: the first layer's x @ W_in
        for block in self.blocks:
            x = block(x)
        return model_output(self.unembed(x), return_type, labels)
