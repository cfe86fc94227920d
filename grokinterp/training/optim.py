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
from grokinterp.training.numerics import seed_norms


def make_optimizer(
    params: list[torch.Tensor], cfg: TrainConfig, fused_on: torch.device | None = None
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with the config's learning rate and weight decay.

    ``foreach`` implementations keep the step to a handful of kernels (DESIGN issue 9). With
    ``fused_on`` (the fast engine) AdamW / Adam are fused into one kernel, ``capturable`` on
    CUDA so that a CUDA graph can hold the step; SGD stays ``foreach``. Same hyper-parameters,
    the same update up to float rounding.
    """
    if cfg.optimizer in ("adamw", "adam"):
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        impl = (
            {"foreach": True}
            if fused_on is None
            else {"fused": True, "capturable": fused_on.type == "cuda"}
        )
        return kind(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **impl
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
    )


def portable_optimizer_state(opt_state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``opt_state`` (of a fused / capturable optimizer) in the format the ``foreach`` optimizer
    saves, so a resume state is the same whichever engine wrote it."""
    probe = make_optimizer([torch.zeros(1)], cfg).param_groups[0]
    flags = {k: probe[k] for k in ("foreach", "fused", "capturable") if k in probe}
    groups = [
        {**g, **{k: v for k, v in flags.items() if k in g}} for g in opt_state["param_groups"]
    ]
    return {"state": opt_state["state"], "param_groups": groups}


def adopt_fused_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """After ``load_state_dict`` of a portable state into a fused optimizer: restore the fused /
    capturable flags and keep Adam's step counters on the parameters' device, as the fused
    kernel needs."""
    cuda = device.type == "cuda"
    for g in opt.param_groups:
        if "capturable" in g:  # Adam / AdamW
            g.update(foreach=None, fused=True, capturable=cuda)
            for p in g["params"]:
                st = opt.state.get(p, {})
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


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


def seed_view(p: torch.Tensor, stacked: bool) -> torch.Tensor:
    """``p`` as ``[S, ...]``: itself when its leading dimension is the seed, else a view with
    ``S = 1`` (in-place changes of the view change ``p``)."""
    return p if stacked else p.unsqueeze(0)


def global_norm(params: list[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """‖θ‖_p over all parameters together (p = 1 or 2), the same on every thread count."""
    l2, l1 = seed_norms(t.unsqueeze(0) for t in params)
    return (l2 if p == 2 else l1)[0]


class NormConstraint:
    """Omnigrok (Liu, Michaud, Tegmark 2023): after every step rescale each seed's parameters
    so that its global L2 norm stays at ``target`` (default: its value now, at initialisation).

    ``stacked``: the parameters carry a leading seed dimension (one target per seed); otherwise
    they are one run's. ``target`` is a float64 tensor ``[S]`` on the parameters' device.
    """

    def __init__(
        self, params: list[torch.Tensor], target: float | None = None, stacked: bool = False
    ):
        self.stacked = stacked
        self.target = self.norms(params)
        if target is not None:
            self.target = torch.full_like(self.target, float(target))

    def norms(self, params: list[torch.Tensor]) -> torch.Tensor:
        return seed_norms(seed_view(p, self.stacked) for p in params)[0].double()

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> None:
        scale = self.target / self.norms(params)  # in float64, then in the parameters' dtype
        for p in params:
            v = seed_view(p, self.stacked)
            v.mul_(scale.to(p.dtype).view(-1, *([1] * (v.ndim - 1))))


class FixedMask:
    """Holds pruned weights at exactly zero (Minegishi et al.: masks applied in the forward pass).

    ``masks`` (True = kept) are by parameter name and shaped like one seed's parameter; they
    broadcast over a leading seed dimension (``stacked``). Gradients of pruned entries are
    zeroed before the update (so Adam moments and any gradient filter never see them) and
    weights re-multiplied after it (weight decay cannot revive them).
    """

    def __init__(
        self, masks: dict[str, torch.Tensor], params: dict[str, torch.Tensor], stacked: bool
    ):
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise GrokinterpError(
                f"mask names parameters the model does not have: {', '.join(unknown)}"
            )
        self.masks = {}
        for name, m in masks.items():
            p = params[name]
            shape = p.shape[1:] if stacked else p.shape
            if m.shape != shape:
                raise GrokinterpError(
                    f"mask {name} has shape {tuple(m.shape)}, parameter has {tuple(shape)}"
                )
            self.masks[name] = m.to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def apply_to_grads(self, params: dict[str, torch.Tensor]) -> None:
        for name, m in self.masks.items():
            p = params.get(name)  # (a factorized embedding's mask is gone after a merge)
            if p is not None and p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def apply_to_weights(self, params: dict[str, torch.Tensor]) -> None:
        for name, m in self.masks.items():
            if name in params:
                params[name].mul_(m)
