"""The fast engine (issue 9): the same training as the eager engine, computed faster.

- **Functional, seed-batched forward** (:class:`grokinterp.models.functional.FastForward`):
  parameters are stacked ``[S, ...]`` (``S = 1`` for one run), one GEMM serves every seed, only
  what the loss reads is computed and a token model's first layer runs on per-token tables.
- **Fused AdamW** (``fused=True``; ``capturable=True`` on CUDA) and, on CUDA, **the whole step
  (forward, backward, gradient filter, masks, optimizer) captured in one CUDA graph** once the
  learning-rate warm-up is over (:mod:`grokinterp.training.cuda_graph`).
- **No host syncs inside a step**; metrics are read back once per evaluation; checkpoint files
  are written by a background thread (:mod:`grokinterp.store.writer`).

Numerics contract: the fast and the eager engines compute the same function; their losses agree
to float rounding (``tests/test_fast.py`` compares 50 steps). ``train.tf32 = true`` opts into
TF32 matmuls on CUDA (about 1e-3 relative error per matmul; off by default); ``train.compile``
compiles the training loss with ``torch.compile`` on CUDA.

A model the functional forward does not know, or whose logits disagree with the module's at
start-up, raises :class:`~grokinterp.training.engines.base.EngineUnavailable` with the reason;
the loop warns and trains with the eager engine instead (``run.json`` records which engine ran).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from grokinterp.config import TrainConfig
from grokinterp.models.functional import FastForward, Inputs, matmul_precision
from grokinterp.training.cuda_graph import graph_blockers
from grokinterp.training.engines.base import Engine, EngineUnavailable, TrainData
from grokinterp.training.numerics import per_seed_loss

CHECK_SAMPLES = 256  # training inputs on which the functional forward is checked at start-up


def training_loss(
    fast: FastForward, kind: str, inputs: Inputs, y: torch.Tensor, compile: bool
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> Σ_seeds loss`` on the fixed training set; with ``compile`` (CUDA only)
    through ``torch.compile``, which fuses the elementwise and reduction work of the step."""

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return per_seed_loss(kind, fast.logits(params, inputs), y).sum()

    if compile and fast.device.type == "cuda":
        return torch.compile(loss, dynamic=False)
    return loss


class FastEngine(Engine):
    name = "fast"
    stacked = True
    background_writes = True

    def __init__(self, models: list[nn.Module], data: TrainData, tc: TrainConfig) -> None:
        super().__init__(models, data, tc)
        task, device = data.task, data.device
        self.template = models[0]
        if hasattr(self.template, "last_position_only"):
            self.template.last_position_only = True
        cfg = data.model
        self.fast = FastForward.build(cfg, task, device, data.dtype)
        if self.fast is None:
            raise EngineUnavailable(f"the functional forward does not know model {cfg.name!r}")
        why = self.fast.check(self.template, data.x_train[:CHECK_SAMPLES])
        if why is not None:
            raise EngineUnavailable(f"model {cfg.name!r}: {why}")
        named = [dict(m.named_parameters()) for m in models]
        self.params = {
            k: nn.Parameter(torch.stack([n[k].detach() for n in named]))
            for k, p in named[0].items()
            if p.requires_grad
        }
        self.buffers = [
            {k: v for k, v in m.state_dict().items() if k not in named[0]} for m in models
        ]
        self.state_keys = list(self.template.state_dict())
        cuda = device.type == "cuda"
        self.tf32 = tc.tf32 and cuda
        self.fused_on = device
        self.graphable = cuda and not graph_blockers(tc)
        self.full_batch = tc.batch_size is None or tc.batch_size >= len(data.y_train)
        self._build_train_loss()

    def _build_train_loss(self) -> None:
        self.train_loss = None
        if self.full_batch:
            inputs = self.fast.prepare(self.data.x_train)
            self.train_loss = training_loss(
                self.fast, self.tc.loss, inputs, self.data.y_train, self.tc.compile
            )

    # ------------------------------------------------------------------ forward / loss
    def loss(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            return self.train_loss(self.params)
        logits = self.fast.logits(self.params, self.fast.prepare(x, backward=False))
        return per_seed_loss(self.tc.loss, logits, y).sum()

    def prepare_eval(self, x: torch.Tensor) -> Inputs:
        return self.fast.prepare(x, backward=False)

    def eval_logits(self, prepared: Inputs) -> torch.Tensor:
        with matmul_precision(self.tf32):
            return self.fast.logits(self.params, prepared)

    # ------------------------------------------------------------------ weights
    def weights(self, i: int) -> dict[str, torch.Tensor]:
        return {
            k: self.params[k][i] if k in self.params else self.buffers[i][k]
            for k in self.state_keys
        }

    @torch.no_grad()
    def load_weights(self, i: int, weights: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.state_keys) - set(weights))
        unexpected = sorted(set(weights) - set(self.state_keys))
        if missing or unexpected:
            raise KeyError(f"weights missing {missing}, unexpected {unexpected}")
        for k, v in weights.items():
            if k in self.params:
                self.params[k][i].copy_(v)
            else:
                self.buffers[i][k] = v.to(self.data.device)

    @torch.no_grad()
    def merge_embedding(self) -> None:
        """Fold ``W_A·W_B`` into ``W_E`` per seed (as ``Embed.merge``: the same product, the
        same function); the parameters follow the merged module's order."""
        a, b = self.params["embed.W_A"], self.params["embed.W_B"]
        merged = torch.stack([a[i] @ b[i] for i in range(len(a))])
        self.template.embed.merge()
        old = self.params
        self.params = {
            k: old[k] if k in old else nn.Parameter(merged)
            for k, p in self.template.named_parameters()
            if p.requires_grad
        }
        self.state_keys = list(self.template.state_dict())
        self._build_train_loss()


__all__ = ["FastEngine", "training_loss"]
