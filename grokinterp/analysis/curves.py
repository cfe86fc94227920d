"""Reading training curves: the one definition of "it grokked", and where a curve turns.

Every part of grokinterp (report, CLI, phases, dynamics, tickets, transfer, sweeps) asks "when did
the model fit the training set, when did it generalise" through :func:`grok_times`, with
:data:`DEFAULT_THRESHOLD`; the two numbers are called ``fit_step`` and ``generalize_step``
everywhere, and their difference is the ``delay``.

Why 95 %: it is the convention of the papers that define a grokking *time* — Minegishi et al.
("Bridging Lottery Ticket and Grokking", τ = t_gen / t_mem with t the first step above 95 %),
Xu et al. 2025 (GrokTransfer's time gap at 95 %) and Lee et al. 2024 (Grokfast's 95 % validation
accuracy). A threshold is a parameter everywhere it is used.

Turning points of measures (the feature-rank drop of Fan et al. 2024, the local-complexity
phases of Humayun et al. 2024, the half-way fall of a loss) live here too: they are functions of
``(steps, values)`` only — no model, no run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from grokinterp.config import GrokinterpError

__all__ = [
    "DEFAULT_THRESHOLD",
    "GrokTimes",
    "as_floats",
    "complexity_phases",
    "drop_step",
    "excluded_rise",
    "first_crossing",
    "generalization_window",
    "grok_times",
    "fall_below_step",
    "half_drop_step",
    "half_rise_step",
    "largest_drop",
    "transition_step",
]

DEFAULT_THRESHOLD = 0.95


def as_floats(values: Any, name: str = "values") -> list[float]:
    """A curve (tensor or sequence; None → NaN) as a list of floats, else a GrokinterpError
    naming ``name``."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().flatten().tolist()
    try:
        return [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        raise GrokinterpError(f"{name} must be a sequence of numbers") from None


def check_level(level: float, name: str = "threshold") -> float:
    """A fraction in (0, 1] (an accuracy level), else a GrokinterpError naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
        raise GrokinterpError(f"{name}={level!r} is not valid; allowed: a number in (0, 1]")
    return float(level)


def first_crossing(
    steps: Sequence[int], values: Sequence[float], level: float, sustain: int = 1
) -> int | None:
    """First ``steps[i]`` from which ``values`` stays ≥ ``level`` for ``sustain`` consecutive
    evaluations (None if never). A streak still running when the curve ends counts: the budget,
    not the model, cut it short. NaN and None never reach the level."""
    s, v = [int(a) for a in as_floats(steps)], as_floats(values)
    if len(s) != len(v):
        raise GrokinterpError(
            f"steps and values must have the same length, got {len(s)} and {len(v)}"
        )
    if isinstance(sustain, bool) or not isinstance(sustain, int) or sustain < 1:
        raise GrokinterpError(f"sustain={sustain!r} must be an integer ≥ 1")
    start, count = None, 0
    for step, value in zip(s, v, strict=True):
        if not math.isnan(value) and value >= level:
            if count == 0:
                start = step
            count += 1
            if count >= sustain:
                return start
        else:
            start, count = None, 0
    return start


@dataclass(frozen=True)
class GrokTimes:
    """When a run fit its training set and when it generalised (steps; None = never)."""

    fit_step: int | None
    generalize_step: int | None
    threshold: float = DEFAULT_THRESHOLD

    @property
    def delay(self) -> int | None:
        """``generalize_step - fit_step`` when both exist (the grokking delay, in steps)."""
        if self.fit_step is None or self.generalize_step is None:
            return None
        return self.generalize_step - self.fit_step

    @property
    def ratio(self) -> float | None:
        """``generalize_step / max(fit_step, 1)``: Minegishi et al.'s τ = t_gen / t_mem."""
        if self.fit_step is None or self.generalize_step is None:
            return None
        return self.generalize_step / max(self.fit_step, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delay": self.delay, "ratio": self.ratio}


def grok_times(
    metrics: Sequence[Mapping[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
    sustain: int = 1,
    train_key: str = "train_acc",
    test_key: str = "test_acc",
) -> GrokTimes:
    """:class:`GrokTimes` of a run's metric rows (``Run.metrics``): the first evaluated steps at
    which train / test accuracy reach ``threshold`` (for ``sustain`` evaluations)."""
    threshold = check_level(threshold)

    def cross(key: str) -> int | None:
        rows = [m for m in metrics if m.get(key) is not None]
        return first_crossing([m["step"] for m in rows], [m[key] for m in rows], threshold, sustain)

    return GrokTimes(cross(train_key), cross(test_key), threshold)


# ---------------------------------------------------------------------------------------------
# Where a measure turns
# ---------------------------------------------------------------------------------------------


def transition_step(
    metrics: Sequence[Mapping[str, Any]], key: str = "test_acc", fraction: float = 0.5
) -> int | None:
    """First evaluated step where ``key`` has covered ``fraction`` of its change from its first
    to its final value (``fraction=0.5``: the midpoint of the test-accuracy jump)."""
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
    s, v = as_floats(steps), as_floats(values)
    if not v:
        return None
    i_max = max(range(len(v)), key=lambda i: v[i])
    v_min = min(v[i_max:])
    if v[i_max] - v_min <= min_drop * abs(v[i_max]):
        return None
    target = v[i_max] - fraction * (v[i_max] - v_min)
    for i in range(i_max, len(v)):
        if v[i] <= target:
            return int(s[i])
    return None


def generalization_window(
    metrics: Sequence[Mapping[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
    span: float = 2.0,
    onset_level: float = 0.1,
) -> dict[str, int] | None:
    """Where a run generalises, and the window of steps "around" it (None if it never does).

    ``generalize_step`` is :func:`grok_times`'s (test accuracy first ≥ ``threshold``);
    ``onset_step`` is the last evaluation before it at which test accuracy had covered at most
    ``onset_level`` of its climb from its lowest value (before ``generalize_step``) to the
    threshold — where the rise starts. The window is ``[onset_step / span, generalize_step ·
    span]`` (``lo``, ``hi``): a factor on both sides, because the phases of grokking are spread on
    a log scale of steps (memorisation in the first hundreds, generalisation thousands later), so
    that a measure's turn inside the window belongs to generalisation and not to memorisation.
    """
    threshold = check_level(threshold)
    if not (isinstance(span, int | float) and span >= 1 and math.isfinite(span)):
        raise GrokinterpError(f"span={span!r} must be a finite number ≥ 1")
    gen = grok_times(metrics, threshold).generalize_step
    if gen is None:
        return None
    rows = [m for m in metrics if m.get("test_acc") is not None and int(m["step"]) <= gen]
    base = min(float(m["test_acc"]) for m in rows)
    level = base + onset_level * (threshold - base)
    low = [int(m["step"]) for m in rows if float(m["test_acc"]) <= level and int(m["step"]) < gen]
    onset = low[-1] if low else int(rows[0]["step"])
    return {
        "onset_step": onset,
        "generalize_step": int(gen),
        "lo": int(math.floor(onset / span)),
        "hi": int(math.ceil(gen * span)),
    }


def largest_drop(
    steps: Any,
    values: Any,
    lo: float | None = None,
    hi: float | None = None,
    fraction: float = 0.5,
    min_drop: float = 0.05,
) -> tuple[int | None, float]:
    """:func:`drop_step` of the part of the curve with ``lo ≤ step ≤ hi``, and the relative size
    of that fall, ``(max − min after it) / max`` (0.0 when the window has fewer than two points).
    The step is None when the fall is below ``min_drop`` (no real drop in the window)."""
    s, v = as_floats(steps), as_floats(values)
    keep = [
        i
        for i in range(len(s))
        if (lo is None or s[i] >= lo) and (hi is None or s[i] <= hi) and not math.isnan(v[i])
    ]
    if len(keep) < 2:
        return None, 0.0
    ws, wv = [s[i] for i in keep], [v[i] for i in keep]
    i_max = max(range(len(wv)), key=lambda i: wv[i])
    top = wv[i_max]
    size = (top - min(wv[i_max:])) / abs(top) if top else 0.0
    return drop_step(ws, wv, fraction, min_drop), size


def half_drop_step(steps: Any, values: Any) -> int | None:
    """First step after the curve's maximum at which it has made half of its (log-scale) descent
    from that maximum to its final value: ``log y <= (log max y + log y_final) / 2``.

    A threshold-free "when did this loss fall" marker, used to compare restricted and test loss
    (Nanda et al. 2023). None if the curve does not fall."""
    s = as_floats(steps)
    y = [math.log(max(a, 1e-300)) for a in as_floats(values)]
    i_max = max(range(len(y)), key=lambda i: (y[i], -i))
    if y[-1] >= y[i_max]:
        return None
    mid = (y[i_max] + y[-1]) / 2
    return next(int(s[i]) for i in range(i_max, len(y)) if y[i] <= mid)


def fall_below_step(steps: Any, values: Any, level: float) -> int | None:
    """First step, from the curve's maximum on, at which it is at or below ``level``; None if it
    never gets there.

    With one ``level`` for two curves (e.g. half the chance loss, ``log(C) / 2``) it marks when
    each *begins* to fall, comparably: Nanda et al. 2023's "restricted loss falls before test
    loss". (:func:`half_drop_step` measures each curve against its own final value, so a curve
    that ends at 1e-8 is marked far later than one that ends at 1e-2.)"""
    s, y = as_floats(steps), as_floats(values)
    i_max = max(range(len(y)), key=lambda i: (y[i], -i))
    return next((int(s[i]) for i in range(i_max, len(y)) if y[i] <= level), None)


def half_rise_step(steps: Any, values: Any) -> int | None:
    """First step at which a rising curve has covered half of its range from its initial value
    to its maximum (linear scale; for the Gini coefficient of Nanda et al. 2023)."""
    s, y = as_floats(steps), as_floats(values)
    top = max(y)
    if top <= y[0]:
        return None
    mid = (y[0] + top) / 2
    return next(int(s[i]) for i in range(len(y)) if y[i] >= mid)


def excluded_rise(steps: Any, excluded: Any) -> tuple[int, int]:
    """``(start, peak)``: the excluded loss's peak step and the step of its minimum before the
    peak, where it starts to rise (Nanda et al. 2023: it rises during circuit formation)."""
    s, y = as_floats(steps), as_floats(excluded)
    peak = max(range(len(y)), key=lambda i: (y[i], -i))
    start = min(range(peak + 1), key=lambda i: (y[i], i))
    return int(s[start]), int(s[peak])


def _smooth(v: list[float], window: int) -> list[float]:
    if window <= 1:
        return v
    h = window // 2
    return [
        sum(v[max(0, i - h) : i + h + 1]) / len(v[max(0, i - h) : i + h + 1]) for i in range(len(v))
    ]


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
    s, raw = as_floats(steps), as_floats(values)
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
