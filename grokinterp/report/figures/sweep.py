"""Figures of a hyperparameter sweep: phase diagram, delay heatmap, table, accuracy curves.

Phase diagrams after Liu et al. 2022, "Towards Understanding Grokking: An Effective Theory of
Representation Learning" (comprehension / grokking / memorization / confusion over two
hyperparameters); the phase rule is :mod:`grokinterp.analysis.phases`. Plotly only.

Inputs are the ``cells`` of a sweep manifest (``sweep.json``): a list of dicts with

- ``values``: ``{grid key: value}`` (e.g. ``{"train.weight_decay": 0.3}``),
- ``labels``: ``{grid key: text}`` (optional; ``str(value)`` otherwise),
- ``runs``: a list of per-seed dicts with ``phase`` (None while not finished), ``fit_step``,
  ``generalize_step``, ``delay``, ``ratio``, ``final_test_acc``, ``status`` and ``error`` (or the
  ``t_train``, ``t_test``, ``delay`` = ratio of version-1 manifests).

When the grid has more axes than the two plotted, fix the others with ``where`` or the runs of
every cell that falls on the same (x, y) square are pooled (fractions over all of them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokinterp.analysis.phases import PHASES, aggregate_phases
from grokinterp.config import GrokinterpError
from grokinterp.report.figures._style import white_template

__all__ = [
    "PHASE_COLORS",
    "delay_heatmap_figure",
    "phase_diagram_figure",
    "phase_table_figure",
    "sweep_curves_figure",
    "sweep_table_rows",
]

PHASE_COLORS = {
    "comprehension": "#2ca02c",
    "grokking": "#ff7f0e",
    "memorization": "#1f77b4",
    "confusion": "#7f7f7f",
    "failed": "#d62728",
}
_SHORT = {
    "comprehension": "compr.",
    "grokking": "grok",
    "memorization": "memo",
    "confusion": "conf.",
}


def _label(cell: Mapping[str, Any], key: str) -> str:
    labels = cell.get("labels") or {}
    return str(labels.get(key, cell["values"][key]))


def _axis_labels(cells: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Distinct labels of one axis: numeric order when every value is a number, else grid order."""
    seen: dict[str, Any] = {}
    for c in cells:
        seen.setdefault(_label(c, key), c["values"][key])
    vals = list(seen.values())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return [k for k, _ in sorted(seen.items(), key=lambda kv: kv[1])]
    return list(seen)


def _check_cells(cells: Sequence[Mapping[str, Any]], keys: Sequence[str | None]) -> None:
    if not isinstance(cells, Sequence) or not cells:
        raise GrokinterpError("cells must be a non-empty list of sweep cells (sweep.json 'cells')")
    for c in cells:
        if not isinstance(c, Mapping) or "values" not in c:
            raise GrokinterpError("each cell must be a mapping with 'values' and 'runs'")
        for k in keys:
            if k is not None and k not in c["values"]:
                raise GrokinterpError(
                    f"axis {k!r} is not a grid key; grid keys: {', '.join(c['values'])}"
                )


def _select(
    cells: Sequence[Mapping[str, Any]], where: Mapping[str, Any] | None
) -> list[Mapping[str, Any]]:
    if not where:
        return list(cells)
    out = [
        c
        for c in cells
        if all(_label(c, k) == str(v) or c["values"].get(k) == v for k, v in where.items())
    ]
    if not out:
        raise GrokinterpError(f"where={dict(where)!r} selects no cell")
    return out


def _squares(
    cells: Sequence[Mapping[str, Any]], x: str, y: str | None
) -> tuple[list[str], list[str], dict[tuple[str, str], list[Mapping[str, Any]]]]:
    """Group the runs of the cells by (x label, y label)."""
    xs = _axis_labels(cells, x)
    ys = _axis_labels(cells, y) if y else [""]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in cells:
        key = (_label(c, x), _label(c, y) if y else "")
        groups.setdefault(key, []).extend(c.get("runs") or [])
    return xs, ys, groups


def _summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    finished = [r for r in runs if r.get("phase") in PHASES]
    failed = [r for r in runs if r.get("status") == "failed"]
    agg = aggregate_phases(finished)
    return {"agg": agg, "n": len(runs), "failed": len(failed), "finished": len(finished)}


def _axis_title(key: str | None) -> str:
    return key or ""


def phase_diagram_figure(
    cells: Sequence[Mapping[str, Any]],
    x: str,
    y: str | None = None,
    where: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of the majority phase over two grid axes (one if ``y`` is None).

    Each square is coloured by the most frequent phase of its finished runs and labelled with it
    (``grok 3/5`` for multi-seed cells); squares whose runs all failed are red, squares with no
    finished run yet are blank. Hover shows the fraction of seeds in every phase.
    """
    _check_cells(cells, [x, y, *(where or {})])
    xs, ys, groups = _squares(_select(cells, where), x, y)
    codes = {p: i for i, p in enumerate(PHASES)}
    codes["failed"] = len(PHASES)
    z = np.full((len(ys), len(xs)), np.nan)
    text = [["" for _ in xs] for _ in ys]
    hover = [["" for _ in xs] for _ in ys]
    for (xl, yl), runs in groups.items():
        i, j = ys.index(yl), xs.index(xl)
        s = _summary(runs)
        agg = s["agg"]
        if agg.phase is not None:
            z[i, j] = codes[agg.phase]
            frac = f" {agg.counts[agg.phase]}/{agg.n_runs}" if agg.n_runs > 1 else ""
            text[i][j] = _SHORT[agg.phase] + frac
        elif s["failed"]:
            z[i, j] = codes["failed"]
            text[i][j] = "failed"
        parts = [f"{p}: {agg.counts.get(p, 0)}" for p in PHASES if agg.counts.get(p)]
        if s["failed"]:
            parts.append(f"failed: {s['failed']}")
        pending = s["n"] - s["finished"] - s["failed"]
        if pending:
            parts.append(f"not finished: {pending}")
        if agg.median_ratio is not None:
            parts.append(f"median generalize/fit step: {agg.median_ratio:.3g}")
        hover[i][j] = "<br>".join(parts) or "no runs"
    n = len(PHASES) + 1
    names = [*PHASES, "failed"]
    # A stepwise colour scale: code k ↦ colour k on [k/n, (k+1)/n].
    scale = []
    for k, name in enumerate(names):
        scale += [[k / n, PHASE_COLORS[name]], [(k + 1) / n, PHASE_COLORS[name]]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate=f"{x}=%{{x}}"
            + (f"<br>{y}=%{{y}}" if y else "")
            + "<br>%{customdata}<extra></extra>",
            xgap=2,
            ygap=2,
            colorbar=dict(
                title="phase",
                tickvals=list(range(n)),
                ticktext=names,
            ),
        )
    )
    fig.update_layout(
        title=title or "phase diagram",
        xaxis=dict(title=_axis_title(x), type="category"),
        yaxis=dict(title=_axis_title(y), type="category", showticklabels=bool(y)),
        **white_template(),
        height=max(260, 70 * len(ys) + 160),
    )
    return fig


def delay_heatmap_figure(
    cells: Sequence[Mapping[str, Any]],
    x: str,
    y: str | None = None,
    where: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of the median ratio ``generalize_step / fit_step`` (log colour scale) over two
    grid axes.

    Squares where no run has both times (memorization, confusion, unfinished) are blank.
    """
    _check_cells(cells, [x, y, *(where or {})])
    xs, ys, groups = _squares(_select(cells, where), x, y)
    z = np.full((len(ys), len(xs)), np.nan)
    text = [["" for _ in xs] for _ in ys]
    for (xl, yl), runs in groups.items():
        i, j = ys.index(yl), xs.index(xl)
        d = _summary(runs)["agg"].median_ratio
        if d is not None and d > 0 and math.isfinite(d):
            z[i, j] = math.log10(d)
            text[i][j] = f"×{d:.3g}"
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    # ticks at 1, 2, 5 × powers of ten inside the range of the data
    ticks = [
        math.log10(m * 10**e)
        for e in range(math.floor(lo) - 1, math.ceil(hi) + 1)
        for m in (1, 2, 5)
        if lo - 1e-9 <= math.log10(m * 10**e) <= hi + 1e-9
    ] or [lo]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            zmin=lo,
            zmax=hi,
            colorscale="Viridis",
            text=text,
            texttemplate="%{text}",
            hovertemplate=f"{x}=%{{x}}"
            + (f"<br>{y}=%{{y}}" if y else "")
            + "<br>generalize/fit step %{text}<extra></extra>",
            xgap=2,
            ygap=2,
            colorbar=dict(
                title="generalize / fit step",
                tickvals=ticks,
                ticktext=[f"{10**t:.3g}" for t in ticks],
            ),
        )
    )
    fig.update_layout(
        title=title
        or "median ratio generalize step / fit step (first steps at the accuracy threshold)",
        xaxis=dict(title=_axis_title(x), type="category"),
        yaxis=dict(title=_axis_title(y), type="category", showticklabels=bool(y)),
        **white_template(),
        height=max(260, 70 * len(ys) + 160),
    )
    return fig


def _fmt(v: Any, spec: str = "{:.3g}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return spec.format(v)


def sweep_table_rows(
    cells: Sequence[Mapping[str, Any]], axes: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sweep table: one row per cell, in grid order.

    Columns: the grid values, runs (finished/total), status, majority phase, the fraction of
    runs in each phase, median fit step, generalize step, their ratio and final test accuracy,
    first error.
    """
    if not isinstance(cells, Sequence):
        raise GrokinterpError("cells must be a list of sweep cells")
    axes = list(axes) if axes is not None else (list(cells[0]["values"]) if cells else [])
    if cells:
        _check_cells(cells, axes)
    header = [
        *axes,
        "runs",
        "status",
        "phase",
        *PHASES,
        "fit step",
        "generalize step",
        "ratio",
        "test acc",
        "error",
    ]
    rows = []
    for c in cells:
        runs = c.get("runs") or []
        s = _summary(runs)
        agg = s["agg"]
        accs = [r["final_test_acc"] for r in runs if r.get("final_test_acc") is not None]
        errors = [r["error"] for r in runs if r.get("error")]
        rows.append(
            [
                *[_label(c, a) for a in axes],
                f"{s['finished']}/{s['n']}",
                str(c.get("status", "")),
                agg.phase or "—",
                *[(_fmt(agg.fractions[p], "{:.2f}") if agg.n_runs else "—") for p in PHASES],
                _fmt(agg.median_fit_step, "{:.0f}"),
                _fmt(agg.median_generalize_step, "{:.0f}"),
                _fmt(agg.median_ratio),
                _fmt(float(np.median(accs)) if accs else None, "{:.3f}"),
                (errors[0][:200] if errors else ""),
            ]
        )
    return header, rows


def phase_table_figure(
    cells: Sequence[Mapping[str, Any]], axes: Sequence[str] | None = None, title: str | None = None
) -> go.Figure:
    """The sweep table (:func:`sweep_table_rows`) as a plotly Table."""
    header, rows = sweep_table_rows(cells, axes)
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in header]
    fig = go.Figure(
        go.Table(
            header=dict(values=header, fill_color="#eeeeee", align="left"),
            cells=dict(values=columns, align="left"),
        )
    )
    fig.update_layout(title=title or "sweep cells", height=min(1200, 120 + 28 * len(rows)))
    return fig


def sweep_curves_figure(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    columns: int = 4,
    threshold: float | None = None,
    phases: Mapping[str, str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Small multiples of train (dashed) and test (solid) accuracy, one panel per cell.

    Args:
        curves: ``{cell label: [{"step": [...], "train_acc": [...], "test_acc": [...]}, ...]}``
            with one dict per seed of the cell.
        columns: panels per row.
        threshold: a dotted horizontal line at the phase threshold.
        phases: ``{cell label: phase}``; colours each panel's lines by its phase.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise GrokinterpError("curves must be a non-empty mapping cell label -> list of curves")
    if not (isinstance(columns, int) and columns >= 1):
        raise GrokinterpError(f"columns={columns!r} must be an integer ≥ 1")
    labels = list(curves)
    cols = min(columns, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=labels,
        shared_yaxes=True,
        vertical_spacing=min(0.08, 0.3 / rows),
        horizontal_spacing=0.03,
    )
    for k, label in enumerate(labels):
        r, c = divmod(k, cols)
        color = PHASE_COLORS.get((phases or {}).get(label, ""), "#444444")
        for seed_curve in curves[label]:
            for key, dash in (("train_acc", "dash"), ("test_acc", "solid")):
                if key not in seed_curve or "step" not in seed_curve:
                    raise GrokinterpError(f"curves[{label!r}] entries need 'step' and {key!r}")
                fig.add_trace(
                    go.Scatter(
                        x=list(seed_curve["step"]),
                        y=list(seed_curve[key]),
                        mode="lines",
                        line=dict(color=color, dash=dash, width=1.2),
                        name=key,
                        showlegend=False,
                        hovertemplate=f"{label}<br>{key} %{{y:.3f}} at step %{{x}}<extra></extra>",
                    ),
                    row=r + 1,
                    col=c + 1,
                )
        if threshold is not None:
            fig.add_hline(
                y=threshold, line=dict(color="#999999", dash="dot", width=1), row=r + 1, col=c + 1
            )
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title or "accuracy curves (dashed: train, solid: test; colour: phase)",
        **white_template(),
        height=max(300, 190 * rows + 80),
        margin=dict(t=80),
    )
    return fig
