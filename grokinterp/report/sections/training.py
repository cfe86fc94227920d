"""The training-curves section: accuracy, loss, weight norm and loss against weight norm, with a
reading of when the run fit its training set and when it generalised.

``fit_step`` / ``generalize_step`` come from the run's summary, i.e. from
:func:`grokinterp.analysis.curves.grok_times` at the report's threshold — the one definition of
"it grokked".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, first_crossing
from grokinterp.report.figures import training as figures
from grokinterp.report.sections.base import (
    Rendered,
    RunData,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = ["climb_window", "metric_columns", "training_reading"]


def metric_columns(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows of ``metrics`` that carry ``key``."""
    rows = [(m["step"], float(m[key])) for m in metrics if m.get(key) is not None]
    return ([r[0] for r in rows], [r[1] for r in rows]) if rows else ([], [])


def climb_window(
    steps: Sequence[int], values: Sequence[float], lo: float, hi: float
) -> tuple[int, int] | None:
    """(last step ≤ ``lo`` before the first step ≥ ``hi``, that first step ≥ ``hi``): where a
    curve climbs from ``lo`` to ``hi`` (None if it never reaches ``hi`` or starts above ``lo``)."""
    end = first_crossing(steps, values, hi)
    if end is None:
        return None
    below = [s for s, v in zip(steps, values, strict=True) if s <= end and v <= lo]
    return (int(below[-1]), int(end)) if below else None


def _weight_norm_phrase(metrics: Sequence[Mapping[str, Any]]) -> str:
    steps, vals = metric_columns(metrics, "weight_norm_l2")
    if len(steps) < 2:
        return ""
    i = int(np.argmax(vals))
    peak, final = vals[i], vals[-1]
    if final < 0.97 * peak:
        return (
            f"the weight norm falls by {fmt_pct(1 - final / peak)} from its peak "
            f"{peak:.3g} at step {fmt_step(steps[i])} to {final:.3g}"
        )
    if final > 1.03 * vals[0]:
        return f"the weight norm grows from {vals[0]:.3g} to {final:.3g}"
    return f"the weight norm stays near {final:.3g}"


def training_reading(metrics: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """Two sentences on when the run fit its training set and generalised (``summary``'s
    ``fit_step``, ``generalize_step`` and ``threshold``), and how test accuracy and the weight
    norm moved, read off ``metrics``."""
    if not metrics:
        return "No evaluations were recorded for this run."
    thr = fmt_pct(summary.get("threshold", DEFAULT_THRESHOLD))
    t_fit, t_gen = summary.get("fit_step"), summary.get("generalize_step")
    last = metrics[-1]
    n = fmt_step(last.get("step"))
    if t_fit is None:
        first = f"Train accuracy never reaches {thr} within {n} steps (final {fmt_pct(last.get('train_acc'))})."
    elif t_gen is None:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_fit)}, but test accuracy stays below "
            f"{thr} through step {n} (final {fmt_pct(last.get('test_acc'))}): the training set is "
            "fit, the task not (yet) learned."
        )
    elif t_fit > 0 and t_gen >= 2 * t_fit:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_fit)} and test accuracy at step "
            f"{fmt_step(t_gen)}, {t_gen / t_fit:.1f}× later: the run groks."
        )
    else:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_fit)} and test accuracy at step "
            f"{fmt_step(t_gen)}, with no long delay between fitting and generalising."
        )
    s, acc = metric_columns(metrics, "test_acc")
    window = None
    if s:
        # The jump: from 20% to 90% of the way between the test accuracy when the training set is
        # fit (the plateau after it) and its best value.
        base = acc[s.index(t_fit)] if t_fit in s else acc[0]
        top = max(acc)
        if top - base > 0.2:
            window = climb_window(s, acc, base + 0.2 * (top - base), base + 0.9 * (top - base))
    wn = _weight_norm_phrase(metrics)
    if window is not None:
        a, b = acc[s.index(window[0])], acc[s.index(window[1])]
        second = (
            f"Test accuracy jumps from {fmt_pct(a)} to {fmt_pct(b)} between steps "
            f"{fmt_step(window[0])} and {fmt_step(window[1])}"
        )
    elif acc:
        second = f"Test accuracy ends at {fmt_pct(acc[-1])} (best {fmt_pct(max(acc))})"
    else:
        second = "No test accuracy was recorded"
    second += f", while {wn}." if wn else "."
    return f"{first} {second}"


def _figures(rds: Sequence[RunData]) -> list[go.Figure]:
    metrics = {rd.label: rd.metrics for rd in rds}
    marks = {rd.label: (rd.fit_step, rd.generalize_step) for rd in rds}
    return [
        figures.accuracy_figure(metrics, threshold=rds[0].threshold, marks=marks),
        figures.loss_figure(metrics),
        figures.weight_norm_figure(metrics),
    ]


def _overlay(rds: Sequence[RunData]) -> Rendered:
    thr = fmt_pct(rds[0].threshold)
    gen = [(rd.generalize_step, rd.label) for rd in rds]
    done = sorted((t, lab) for t, lab in gen if t is not None)
    never = [lab for t, lab in gen if t is None]
    if done:
        first = f"Test accuracy reaches {thr} first in {done[0][1]} (step {fmt_step(done[0][0])})"
        if len(done) > 1:
            first += f" and last in {done[-1][1]} (step {fmt_step(done[-1][0])})"
        first += (
            f"; {', '.join(never)} never {'does' if len(never) == 1 else 'do'}." if never else "."
        )
    else:
        first = f"No run reaches {thr} test accuracy."
    fit = ", ".join(f"{rd.label} {fmt_step(rd.fit_step)}" for rd in rds)
    second = f"Train accuracy reaches {thr} at steps: {fit}."
    return _figures(rds), f"{first} {second}"


@register_section(
    "training",
    "Training curves",
    None,
    "Accuracy, loss and total weight norm over training (log step axis). Grokking: test accuracy "
    "rises long after train accuracy (Power et al. 2022).",
    order=0,
    overlay=_overlay,
)
def _training_section(rd: RunData) -> Rendered:
    figs = _figures([rd])
    if any("weight_norm_l2" in m for m in rd.metrics):  # Omnigrok's view: loss against norm
        figs.append(figures.norm_trajectory_figure(rd.metrics))
    return figs, training_reading(rd.metrics, rd.summary)
