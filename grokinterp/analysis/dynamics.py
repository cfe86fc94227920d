"""Training-dynamics measures over a run's checkpoints: ``rank``, ``complexity``, ``norms``,
``robustness`` (registered with :func:`grokinterp.analysis.over_training`), plus helpers that
locate where each measure turns.

==============  ===================================================  ==============================
analysis        paper                                                applies to
==============  ===================================================  ==============================
``rank``        Fan, Pascanu, Jaggi 2024, "Deep Grokking"             every model (activation modules)
``complexity``  Humayun, Balestriero, Baraniuk 2024, "Deep Networks   every model; token models in
                Always Grok and Here is Why"                          embedding space
==============  ===================================================  ==============================

Every analysis fixes its inputs (a seeded sample of the split) once, in the factory, so that all
checkpoints are measured on the same points. Output keys are ``<quantity>/<layer>`` for per-layer
scalars so that each key keeps one shape across checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis import (  # noqa: F401  (registers "rank", "complexity", "norms", "robustness"; until __init__ does)
    complexity,
    norms,
    rank,
    robustness,
)
from grokinterp.config import GrokinterpError

__all__ = [
    "complexity_phases",
    "domain_points",
    "drop_step",
    "sample_split",
    "summarize",
    "transition_step",
]

StepFn = Callable[[int, dict[str, Tensor], nn.Module], dict[str, Tensor]]


# ----------------------------------------------------------------------------- inputs


def sample_split(
    task: Any, split: str, n_samples: int | None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a seeded random subset of ``n_samples`` points of ``split``.

    ``split`` is ``"train"``, ``"test"`` or ``"both"`` (train then test); ``n_samples=None`` keeps
    all points.
    """
    if split not in ("train", "test", "both"):
        raise GrokinterpError(f"split must be 'train', 'test' or 'both', got {split!r}")
    if split == "both":
        x = torch.cat([task.x_train, task.x_test])
        y = torch.cat([task.y_train, task.y_test])
    else:
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    if n_samples is not None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise GrokinterpError(f"n_samples must be an integer ≥ 1 or None, got {n_samples!r}")
        if n_samples < len(y):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_samples]
            idx = idx.sort().values
            x, y = x[idx], y[idx]
    return x, y


def domain_points(task: Any, n: int, seed: int = 0) -> Tensor:
    """``n`` random points of the input domain (Humayun et al. 2024's "random" samples).

    Vector tasks: uniform in the per-feature box ``[min, max]`` of the training inputs (a feature
    constant on the training set, e.g. a blank border pixel, stays constant). Token tasks: each
    position drawn uniformly from the tokens seen at that position in the training set — for a
    complete modular grid these are valid inputs, half train-like and half test-like.
    """
    g = torch.Generator().manual_seed(seed)
    x = task.x_train
    if x.is_floating_point():
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        return lo + (hi - lo) * torch.rand((n, *x.shape[1:]), generator=g, dtype=x.dtype)
    cols = []
    for j in range(x.shape[1]):
        vals = torch.unique(x[:, j])
        cols.append(vals[torch.randint(len(vals), (n,), generator=g)])
    return torch.stack(cols, dim=1)


def _model_inputs(x: Tensor, model: nn.Module) -> Tensor:
    if x.is_floating_point():
        p = next(model.parameters())
        return x.to(dtype=p.dtype, device=p.device)
    return x.to(next(model.parameters()).device)


# ----------------------------------------------------------------------------- turning points


def _np(v: Any) -> list[float]:
    if isinstance(v, Tensor):
        return [float(a) for a in v.detach().cpu().flatten()]
    return [float(a) for a in v]


def _smooth(v: list[float], window: int) -> list[float]:
    if window <= 1:
        return v
    h = window // 2
    return [
        sum(v[max(0, i - h) : i + h + 1]) / len(v[max(0, i - h) : i + h + 1]) for i in range(len(v))
    ]


def transition_step(
    metrics: Sequence[Mapping[str, Any]], key: str = "test_acc", fraction: float = 0.5
) -> int | None:
    """First evaluated step where ``key`` has covered ``fraction`` of its rise from its value at
    step 0 to its final value (``fraction=0.5``: the midpoint of the test-accuracy jump)."""
    rows = [m for m in metrics if m.get(key) is not None]
    if not rows:
        return None
    v0, v1 = rows[0][key], rows[-1][key]
    target = v0 + fraction * (v1 - v0)
    for m in rows:
        if (m[key] >= target) if v1 >= v0 else (m[key] <= target):
            return int(m["step"])
    return None


def drop_step(steps: Any, values: Any, fraction: float = 0.5, min_drop: float = 0.05) -> int | None:
    """Step at which ``values`` has fallen ``fraction`` of the way from its maximum to the minimum
    that follows it; None if that fall is smaller than ``min_drop`` × the maximum (no real drop).
    Used for the feature-rank drop (Fan et al. 2024)."""
    s, v = _np(steps), _np(values)
    if not v:
        return None
    i_max = max(range(len(v)), key=lambda i: v[i])
    tail = v[i_max:]
    v_min = min(tail)
    if v[i_max] - v_min <= min_drop * abs(v[i_max]):
        return None
    target = v[i_max] - fraction * (v[i_max] - v_min)
    for i in range(i_max, len(v)):
        if v[i] <= target:
            return int(s[i])
    return None


def complexity_phases(
    steps: Any, values: Any, smooth: int = 3, min_change: float = 0.05
) -> dict[str, Any]:
    """Descent → ascent → second descent of a local-complexity curve (Humayun et al. 2024).

    On the curve smoothed by a moving average of ``smooth`` checkpoints: ``peak`` is the index
    maximising the rise ``v[i] − min(v[:i+1])`` (end of the ascent), ``first_min`` the minimum
    before it (end of the first descent), ``second_min`` the minimum after it (end of the second
    descent so far). A phase is ``present`` when its change exceeds ``min_change`` × max |v|.
    Returns the steps and values of these points and the three presence flags.
    """
    s, raw = _np(steps), _np(values)
    if len(raw) < 2:
        raise GrokinterpError("complexity_phases needs at least two checkpoints")
    v = _smooth(raw, smooth)
    running_min, argmins = [], []
    for i, a in enumerate(v):
        if not running_min or a < running_min[-1]:
            running_min.append(a)
            argmins.append(i)
        else:
            running_min.append(running_min[-1])
            argmins.append(argmins[-1])
    peak = max(range(len(v)), key=lambda i: v[i] - running_min[i])
    first_min = argmins[peak]
    second_min = min(range(peak, len(v)), key=lambda i: v[i])
    scale = max(abs(a) for a in v) or 1.0
    return {
        "start_step": int(s[0]),
        "start_value": v[0],
        "first_min_step": int(s[first_min]),
        "first_min_value": v[first_min],
        "peak_step": int(s[peak]),
        "peak_value": v[peak],
        "second_min_step": int(s[second_min]),
        "second_min_value": v[second_min],
        "descent": v[0] - v[first_min] > min_change * scale,
        "ascent": v[peak] - v[first_min] > min_change * scale,
        "second_descent": v[peak] - v[second_min] > min_change * scale,
    }


def summarize(name: str, run: Any, results: Mapping[str, Tensor]) -> str:
    """A few text lines on where ``name``'s measure turns, for ``grokinterp analyze``.

    ``results`` holds that analysis's keys without the ``"<name>/"`` prefix, over all of the
    run's checkpoints (``run.steps``).
    """
    t_half = transition_step(run.metrics, "test_acc", 0.5)
    head = f"[bold]{name}[/] (test accuracy half-way through its jump at step {t_half})"
    lines = [head]
    return "\n".join(lines)
