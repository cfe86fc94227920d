"""Adversarial robustness under an L∞ PGD attack.

Humayun, Balestriero, Baraniuk 2024, "Deep Networks Always Grok and Here is Why": besides test
accuracy, *robustness* is delayed — accuracy under an L∞ projected-gradient-descent attack (paper:
ε up to 0.2, 10 steps) rises only long after the training set is fitted, during the second
descent of local complexity.

PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"):
``x_{t+1} = Π_{‖x' − x‖∞ ≤ ε} (x_t + α · sign(∇_x L(f(x_t), y)))`` with the cross-entropy loss on
the logits, starting from ``x`` (or a uniform random point of the ε-ball with ``random_start``).
Vector inputs only.

This module also registers the ``robustness`` analysis (:func:`make_robustness`): the
per-checkpoint reference (``Measure.at_step``: :func:`pgd_accuracy` per ε) and a batched path
(``Measure.at_steps``: :func:`batched_pgd_correct`, the same attack for a chunk of checkpoints
and all ε at once, the input gradient taken with ``torch.func.grad`` inside ``vmap``). The
analysis starts the attack at ``x`` itself (no random start) in both paths, so they agree up to
float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch, class_logits
from grokinterp.analysis.curves import transition_step
from grokinterp.analysis.inputs import model_inputs, sample_split
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "batched_pgd_correct",
    "make_robustness",
    "pgd_accuracy",
    "pgd_attack",
    "robustness_applies",
    "robustness_summary",
]


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
                loss = F.cross_entropy(class_logits(model, x_adv), y, reduction="sum")
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
            pred = class_logits(model, x_adv).argmax(dim=-1)
    finally:
        model.train(was_training)
    return float((pred == y).to(torch.float64).mean())


# ---------------------------------------------------------------------------------------------
# Batched PGD and the "robustness" analysis
# ---------------------------------------------------------------------------------------------


def batched_pgd_correct(
    batch: CheckpointBatch,
    x: Tensor,
    y: Tensor,
    eps: Sequence[float],
    step_size: float | None = None,
    steps: int = 10,
    clamp: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Correct counts ``[C, len(eps)]`` under :func:`pgd_attack` (no random start) and clean
    correct counts ``[C]``, for every checkpoint of ``batch`` and every ε at once.

    The ε are stacked along the sample axis (``len(eps)·n`` points, each with its own ε and step
    size): the attack's loss is summed over samples, so each point's gradient is that of its
    own loss, as in :func:`pgd_attack`. The input gradient is ``torch.func.grad`` inside the
    checkpoint ``vmap``.
    """
    alphas = [_check(x, y, e, step_size, steps) for e in eps]
    n, E = len(y), len(alphas)
    dev = batch.device
    x, y = x.detach().to(dev), y.to(dev)
    shape = (E * n,) + (1,) * (x.ndim - 1)
    xe = x.repeat(E, *([1] * (x.ndim - 1)))
    ye = y.repeat(E)
    # Per-point ε and α in the input's dtype, as the reference's python floats become in
    # ``x + eps`` and ``alpha * sign``.
    ev = torch.tensor(eps, dtype=x.dtype, device=dev).repeat_interleave(n).reshape(shape)
    av = torch.tensor(alphas, dtype=x.dtype, device=dev).repeat_interleave(n).reshape(shape)

    def attack(model: nn.Module, xe: Tensor, ye: Tensor, x: Tensor, y: Tensor):
        def loss(xa: Tensor) -> Tensor:
            return F.cross_entropy(class_logits(model, xa), ye, reduction="sum")

        x_adv = xe if clamp is None else xe.clamp(*clamp)
        for _ in range(steps):
            x_adv = x_adv + av * torch.func.grad(loss)(x_adv).sign()
            x_adv = torch.max(torch.min(x_adv, xe + ev), xe - ev)
            if clamp is not None:
                x_adv = x_adv.clamp(*clamp)
        correct = (class_logits(model, x_adv).argmax(dim=-1) == ye).reshape(E, n).sum(-1)
        clean = (class_logits(model, x).argmax(dim=-1) == y).sum()
        return correct, clean

    return batch.apply(attack, xe, ye, x, y)


def robustness_applies(run: Any) -> str | None:
    """None for vector-input tasks (digits, parity, xor); PGD needs continuous inputs."""
    if run.task().input_kind != "vector":
        return f"PGD robustness needs vector inputs (digits, sparse_parity, xor_cluster); {run.config.task.name!r} has tokens"
    return None


def robustness_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """Headline numbers, per ε (lists aligned with ``eps``): accuracy under PGD at the first and
    the last checkpoint and the step where it is half-way between them
    (:func:`~grokinterp.analysis.curves.transition_step`; None if it never gets there); clean
    accuracy at both ends; ``test_acc_half_way_step``, the same for test accuracy, to compare."""
    steps = [int(s) for s in run.steps]
    acc, eps = results["accuracy"], results["eps"][0]
    half = []
    for j in range(acc.shape[1]):
        rows = [{"step": s, "a": float(a)} for s, a in zip(steps, acc[:, j], strict=True)]
        half.append(transition_step(rows, "a", 0.5))
    return {
        "eps": [float(e) for e in eps],
        "accuracy_start": [float(a) for a in acc[0]],
        "accuracy_end": [float(a) for a in acc[-1]],
        "half_way_step": half,
        "clean_accuracy_start": float(results["clean_accuracy"][0]),
        "clean_accuracy_end": float(results["clean_accuracy"][-1]),
        "test_acc_half_way_step": transition_step(run.metrics, "test_acc", 0.5),
    }


@register_analysis("robustness", applies=robustness_applies, summarize=robustness_summary)
def make_robustness(
    run: Any,
    eps: Sequence[float] = (0.01, 0.03, 0.1),
    steps: int = 10,
    step_size: float | None = None,
    split: str = "test",
    n_samples: int | None = 500,
    clamp: bool = True,
    seed: int = 0,
) -> Measure:
    """Accuracy under an L∞ PGD attack (Humayun et al. 2024's delayed robustness).

    For each ε in ``eps`` (paper: up to 0.2, 10 steps), :func:`pgd_accuracy` with ``steps`` steps
    of size ``step_size`` (default 2.5·ε/steps) on a fixed seeded sample of ``split``, starting at
    the clean points (no random start: the measure is deterministic); ``clamp`` keeps adversarial
    points in ``[min, max]`` of the training inputs. Keys ``accuracy`` ``[len(eps)]``,
    ``clean_accuracy``, ``eps``.
    """
    task = run.task()
    eps = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    if not eps or any(not (e >= 0 and math.isfinite(e)) for e in eps):
        raise GrokinterpError(f"eps must be a non-empty list of finite numbers ≥ 0, got {eps!r}")
    x, y = sample_split(task, split, n_samples, seed)
    box = (float(task.x_train.min()), float(task.x_train.max())) if clamp else None
    for e in eps:
        _check(x.float(), y, e, step_size, steps)

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        xs = model_inputs(x, model)
        ys = y.to(xs.device)
        accs = [pgd_accuracy(model, xs, ys, e, step_size, steps, clamp=box, seed=seed) for e in eps]
        with torch.no_grad():
            clean = float((class_logits(model, xs).argmax(-1) == ys).double().mean())
        return {
            "accuracy": torch.tensor(accs),
            "clean_accuracy": torch.tensor(clean),
            "eps": torch.tensor(eps),
        }

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        C, n = len(batch), len(y)
        xs = model_inputs(x, batch.model)
        correct, clean = batched_pgd_correct(batch, xs, y, eps, step_size, steps, box)
        return {
            "accuracy": (correct.double() / n).float().cpu(),
            "clean_accuracy": (clean.double() / n).float().cpu(),
            "eps": torch.tensor(eps).expand(C, -1).clone(),
        }

    return Measure(at_step=at_step, at_steps=at_steps)
