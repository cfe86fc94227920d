"""Optimizers, Grokfast gradient filters, Omnigrok's norm constraint and fixed masks.

Every piece here acts on a list of parameters and has ``state_dict``/``load_state_dict`` where
it keeps state, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import nn

from grokinterp.config import GrokinterpError, TrainConfig


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with the config's learning rate and weight decay.

    ``foreach`` implementations keep the step to a handful of kernels (DESIGN issue 9).
    """
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=True
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
    )


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup to 1 over the first ``warmup_steps`` updates (Nanda et al.)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class GrokfastEMA:
    """Grokfast-EMA (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients").

    ``μ ← α·μ + (1−α)·g`` (μ starts at the first gradient, no bias correction), then
    ``g ← g + λ·μ``. Paper code defaults α = 0.98, λ = 2.0.
    """

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise GrokinterpError(f"train.grokfast.alpha={alpha} must be in [0, 1)")
        self.alpha, self.lamb = float(alpha), float(lamb)
        self.mu: list[torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params]
        if self.mu is None:
            self.mu = [g.detach().clone() for g in grads]
        else:
            torch._foreach_mul_(self.mu, self.alpha)
            torch._foreach_add_(self.mu, grads, alpha=1 - self.alpha)
        torch._foreach_add_(grads, self.mu, alpha=self.lamb)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "ema", "mu": self.mu}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu = state["mu"]


class GrokfastMA:
    """Grokfast-MA (Lee et al. 2024): a queue of the last ``window`` gradients (current included);
    ``g ← g + λ·mean(Q)`` (or sum). With ``warmup`` the filter acts only once the queue is full.
    Paper code defaults window 100, λ 5.
    """

    def __init__(
        self, window: int = 100, lamb: float = 5.0, reduction: str = "mean", warmup: bool = True
    ):
        if int(window) < 1:
            raise GrokinterpError(f"train.grokfast.window={window} must be ≥ 1")
        if reduction not in ("mean", "sum"):
            raise GrokinterpError(f"train.grokfast.reduction={reduction!r}; allowed: mean, sum")
        self.window, self.lamb, self.reduction, self.warmup = (
            int(window),
            float(lamb),
            reduction,
            bool(warmup),
        )
        self.queue: deque[list[torch.Tensor]] = deque(maxlen=self.window)

    @torch.no_grad()
    def __call__(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params]
        self.queue.append([g.detach().clone() for g in grads])
        if self.warmup and len(self.queue) < self.window:
            return
        for i, g in enumerate(grads):
            total = torch.stack([q[i] for q in self.queue]).sum(0)
            if self.reduction == "mean":
                total = total / len(self.queue)
            g.add_(total, alpha=self.lamb)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "ma", "queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = deque(state["queue"], maxlen=self.window)


def make_gradient_filter(spec: dict[str, Any]) -> GrokfastEMA | GrokfastMA | None:
    """Build the filter described by ``TrainConfig.grokfast`` (empty dict: no filter)."""
    if not spec:
        return None
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return GrokfastEMA(**kwargs) if spec["kind"] == "ema" else GrokfastMA(**kwargs)
    except TypeError as e:
        raise GrokinterpError(f"train.grokfast: {e}") from None


def global_norm(params: list[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """‖θ‖_p over all parameters together."""
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t.detach(), p) for t in params]), p
    )


class NormConstraint:
    """Omnigrok (Liu, Michaud, Tegmark 2023): after every step rescale all parameters so the
    global L2 norm stays at its value at initialisation."""

    def __init__(self, params: list[nn.Parameter], target: float | None = None):
        self.target = float(global_norm(params)) if target is None else float(target)

    @torch.no_grad()
    def __call__(self, params: list[nn.Parameter]) -> None:
        torch._foreach_mul_(params, self.target / float(global_norm(params)))


class FixedMask:
    """Holds pruned weights at exactly zero (Minegishi et al.: masks applied in the forward pass).

    Gradients of pruned entries are zeroed before the update (so Adam moments and any gradient
    filter never see them) and weights re-multiplied after it (weight decay cannot revive them).
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        named = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(named))
        if unknown:
            raise GrokinterpError(
                f"mask names parameters the model does not have: {', '.join(unknown)}"
            )
        self.pairs = []
        for name, m in masks.items():
            if m.shape != named[name].shape:
                raise GrokinterpError(
                    f"mask {name} has shape {tuple(m.shape)}, parameter has {tuple(named[name].shape)}"
                )
            self.pairs.append(
                (named[name], m.to(device=named[name].device, dtype=named[name].dtype))
            )

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        for p, m in self.pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        for p, m in self.pairs:
            p.mul_(m)
