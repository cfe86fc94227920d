"""Adversarial robustness under an L∞ PGD attack.

Humayun, Balestriero, Baraniuk 2024, "Deep Networks Always Grok and Here is Why": besides test
accuracy, *robustness* is delayed — accuracy under an L∞ projected-gradient-descent attack (paper:
ε up to 0.2, 10 steps) rises only long after the training set is fitted, during the second
descent of local complexity.

PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"):
``x_{t+1} = Π_{‖x' − x‖∞ ≤ ε} (x_t + α · sign(∇_x L(f(x_t), y)))`` with the cross-entropy loss on
the logits, starting from ``x`` (or a uniform random point of the ε-ball with ``random_start``).
Vector inputs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grokinterp.config import GrokinterpError


def _check(x: Tensor, y: Tensor, eps: float, step_size: float | None, steps: int) -> float:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise GrokinterpError("x must be a float tensor [n, D] (PGD needs vector inputs)")
    if not isinstance(y, Tensor) or y.shape != x.shape[:1]:
        raise GrokinterpError(f"y must be an integer tensor of shape [{x.shape[0]}]")
    if not (isinstance(eps, (int, float)) and 0 <= eps < float("inf")):
        raise GrokinterpError(f"eps must be a finite number ≥ 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise GrokinterpError(f"steps must be an integer ≥ 1, got {steps!r}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if not (isinstance(alpha, (int, float)) and 0 <= alpha < float("inf")):
        raise GrokinterpError(f"step_size must be a finite number ≥ 0 or None, got {step_size!r}")
    return float(alpha)


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    random_start: bool = False,
    clamp: tuple[float, float] | None = None,
    seed: int = 0,
) -> Tensor:
    """Adversarial examples ``x_adv`` with ``‖x_adv − x‖∞ ≤ eps`` from an L∞ PGD attack.

    ``step_size`` α defaults to ``2.5·eps/steps`` (Madry et al.). ``clamp=(lo, hi)`` keeps the
    points inside the input domain. The model is run in eval mode; its parameters get no grads.
    """
    alpha = _check(x, y, eps, step_size, steps)
    x = x.detach()
    was_training = model.training
    model.eval()
    try:
        if random_start and eps > 0:
            g = torch.Generator().manual_seed(int(seed))
            noise = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
            x_adv = x + noise.to(x.device)
        else:
            x_adv = x.clone()
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
        if eps == 0:
            return x_adv
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                # Summed (not averaged) loss: each sample's gradient is independent of the batch.
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + alpha * grad.sign()
                x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
                if clamp is not None:
                    x_adv = x_adv.clamp(*clamp)
            x_adv = x_adv.detach()
    finally:
        model.train(was_training)
    return x_adv


def pgd_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    random_start: bool = False,
    clamp: tuple[float, float] | None = None,
    seed: int = 0,
) -> float:
    """Accuracy on ``(x, y)`` of ``model`` under the L∞ PGD attack of :func:`pgd_attack`."""
    x_adv = pgd_attack(model, x, y, eps, step_size, steps, random_start, clamp, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(x_adv).argmax(dim=-1)
    finally:
        model.train(was_training)
    return float((pred == y).to(torch.float64).mean())
