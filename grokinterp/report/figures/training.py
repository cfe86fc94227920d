"""Training-curve figures: accuracy, loss and weight norm over steps (log-x step axis), and
one run's path in the (weight norm, loss) plane.

Grokking (Power et al. 2022, "Grokking: generalization beyond overfitting on small algorithmic
datasets") is a delay between train and test accuracy that spans orders of magnitude of steps,
so the step axis is logarithmic (step 0, the initialisation, cannot be placed on it and is left
out). Every function takes ``{label: metrics rows}`` (rows as in ``metrics.jsonl``, e.g.
``{"demo": run.metrics}``) so the same figure overlays several runs on shared axes, whatever
their step grids; with one run, train and test get their own colours, with several each run
gets a colour and the split a dash style.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from grokinterp.analysis.curves import DEFAULT_THRESHOLD
from grokinterp.config import GrokinterpError
from grokinterp.report.figures._style import white_template

__all__ = [
    "COLORS",
    "accuracy_figure",
    "checkpoint_slider_figure",
    "loss_figure",
    "metric_series",
    "norm_trajectory_figure",
    "weight_norm_figure",
]

COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
]
SPLIT_COLORS = {"train": "#1f77b4", "test": "#d62728"}
SPLIT_DASH = {"train": "solid", "test": "dash"}

MetricsByRun = Mapping[str, Sequence[Mapping[str, Any]]]


def metric_series(
    rows: Sequence[Mapping[str, Any]], key: str, positive_steps: bool = True
) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in metrics rows; rows without it (or with step 0 when
    ``positive_steps``, for a log axis) are skipped."""
    xs, ys = [], []
    for m in rows:
        v = m.get(key)
        if v is None or (positive_steps and m.get("step", 0) <= 0):
            continue
        xs.append(int(m["step"]))
        ys.append(float(v))
    return xs, ys


def _check(metrics_by_run: MetricsByRun) -> None:
    if not isinstance(metrics_by_run, Mapping) or not metrics_by_run:
        raise GrokinterpError(
            "metrics_by_run must be a non-empty mapping label -> metrics rows, e.g. {'demo': run.metrics}"
        )


def _style(label: str, split: str, i: int, n_runs: int) -> dict[str, Any]:
    if n_runs == 1:
        return {"color": SPLIT_COLORS.get(split, COLORS[2]), "dash": "solid"}
    return {"color": COLORS[i % len(COLORS)], "dash": SPLIT_DASH.get(split, "dot")}


def _name(label: str, split: str, n_runs: int) -> str:
    return split if n_runs == 1 else f"{label} · {split}"


def _layout(fig: go.Figure, title: str, ytitle: str, log_y: bool = False) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis={"title": "step (log scale)", "type": "log"},
        yaxis={"title": ytitle, "type": "log" if log_y else "linear"},
        **white_template(),
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        hovermode="x unified",
    )
    return fig


def _split_figure(
    metrics_by_run: MetricsByRun, keys: Sequence[tuple[str, str]], fmt: str
) -> go.Figure:
    _check(metrics_by_run)
    fig = go.Figure()
    n = len(metrics_by_run)
    for i, (label, rows) in enumerate(metrics_by_run.items()):
        for split, key in keys:
            xs, ys = metric_series(rows, key)
            if not xs:
                continue
            st = _style(label, split, i, n)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=_name(label, split, n),
                    line={"color": st["color"], "dash": st["dash"], "width": 2},
                    hovertemplate=f"%{{y:{fmt}}}",
                )
            )
    return fig


def accuracy_figure(
    metrics_by_run: MetricsByRun,
    threshold: float | None = DEFAULT_THRESHOLD,
    marks: Mapping[str, tuple[int | None, int | None]] | None = None,
    title: str = "Accuracy",
) -> go.Figure:
    """Train and test accuracy over steps (log-x), with the ``threshold`` as a dotted line and,
    for each run in ``marks`` (label → (``fit_step``, ``generalize_step``), as in
    :class:`~grokinterp.analysis.curves.GrokTimes`), vertical markers at those steps."""
    fig = _split_figure(metrics_by_run, [("train", "train_acc"), ("test", "test_acc")], ".3f")
    if threshold is not None:
        fig.add_hline(
            y=threshold,
            line={"color": "#888", "dash": "dot", "width": 1},
            annotation_text=f"{threshold:.0%}",
            annotation_position="bottom right",
        )
    for label, (t_fit, t_gen) in (marks or {}).items():
        suffix = "" if len(metrics_by_run) == 1 else f" ({label})"
        for t, what, color in ((t_fit, "fit", "#1f77b4"), (t_gen, "generalised", "#d62728")):
            if t:  # step 0 cannot be drawn on a log axis
                # Shapes take data coordinates, annotations log10 ones on a log axis.
                fig.add_vline(x=t, line={"color": color, "dash": "dot", "width": 1})
                fig.add_annotation(
                    x=math.log10(t),
                    y=1.0,
                    yref="paper",
                    text=f"{what}{suffix}",
                    showarrow=False,
                    xanchor="right" if what == "fit" else "left",
                    yanchor="bottom",
                    font={"size": 10, "color": color},
                )
    fig = _layout(fig, title, "accuracy")
    fig.update_yaxes(range=[-0.02, 1.05])
    return fig


def loss_figure(metrics_by_run: MetricsByRun, title: str = "Loss") -> go.Figure:
    """Train and test loss over steps, log-log (the grokking 'double descent' of test loss
    shows as a rise then a fall)."""
    fig = _split_figure(metrics_by_run, [("train", "train_loss"), ("test", "test_loss")], ".3g")
    return _layout(fig, title, "loss (log scale)", log_y=True)


def weight_norm_figure(
    metrics_by_run: MetricsByRun, key: str = "weight_norm_l2", title: str = "Total weight norm"
) -> go.Figure:
    """The global L2 norm of all parameters over steps: weight decay shrinking it is the
    'cleanup' phase of Nanda et al. 2023 and the 'LU mechanism' of Liu et al. 2023 (Omnigrok)."""
    _check(metrics_by_run)
    fig = go.Figure()
    for i, (label, rows) in enumerate(metrics_by_run.items()):
        xs, ys = metric_series(rows, key)
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=label,
                    line={
                        "color": COLORS[i % len(COLORS)] if len(metrics_by_run) > 1 else "#2ca02c"
                    },
                    hovertemplate="%{y:.4g}",
                )
            )
    return _layout(fig, title, "‖θ‖₂" if key == "weight_norm_l2" else key)


def checkpoint_slider_figure(
    steps: Sequence[int],
    values: Any,
    x: Sequence[Any] | None = None,
    kind: str = "bar",
    title: str = "",
    xtitle: str = "",
    ytitle: str = "",
    max_frames: int = 40,
    log_y: bool = False,
) -> go.Figure:
    """One curve per checkpoint with a plotly slider choosing the checkpoint (default: the last).

    ``values`` is ``[n_steps, n]`` (e.g. the Fourier norms of the embedding at each step); at most
    ``max_frames`` checkpoints, spread evenly over the run (first and last always kept), are
    included so the file stays small. ``kind`` is "bar" or "line".
    """
    import numpy as np

    v = values.detach().cpu().float().numpy() if hasattr(values, "detach") else np.asarray(values)
    v = np.asarray(v, dtype=float)
    steps = [int(s) for s in steps]
    if v.ndim != 2 or v.shape[0] != len(steps) or len(steps) == 0:
        raise GrokinterpError(
            f"values must be [n_steps={len(steps)}, n], got shape {tuple(v.shape)}"
        )
    if kind not in ("bar", "line"):
        raise GrokinterpError(f"kind={kind!r} is not valid; allowed: bar, line")
    if max_frames < 1:
        raise GrokinterpError(f"max_frames={max_frames} is not valid; allowed: an integer >= 1")
    idx = sorted(
        set(np.linspace(0, len(steps) - 1, min(max_frames, len(steps))).round().astype(int))
    )
    xs = list(range(1, v.shape[1] + 1)) if x is None else list(x)
    fig = go.Figure()
    for j, i in enumerate(idx):
        visible = j == len(idx) - 1
        common = {"x": xs, "y": v[i], "name": f"step {steps[i]}", "visible": visible}
        if kind == "bar":
            fig.add_trace(go.Bar(marker_color="#1f77b4", **common))
        else:
            fig.add_trace(go.Scatter(mode="lines+markers", line={"color": "#1f77b4"}, **common))
    slider_steps = []
    for j, i in enumerate(idx):
        vis = [k == j for k in range(len(idx))]
        slider_steps.append(
            {
                "method": "update",
                "label": str(steps[i]),
                "args": [{"visible": vis}, {"title.text": f"{title} — step {steps[i]}"}],
            }
        )
    ymax = float(np.nanmax(v[idx])) if np.isfinite(v[idx]).any() else 1.0
    fig.update_layout(
        title=f"{title} — step {steps[idx[-1]]}",
        xaxis_title=xtitle,
        yaxis={
            "title": ytitle,
            "type": "log" if log_y else "linear",
            **({} if log_y else {"range": [0, 1.05 * ymax if ymax > 0 else 1]}),
        },
        **white_template(),
        height=420,
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        sliders=[
            {
                "active": len(idx) - 1,
                "currentvalue": {"prefix": "checkpoint step: "},
                "pad": {"t": 40},
                "steps": slider_steps,
            }
        ],
    )
    return fig


def norm_trajectory_figure(
    metrics: Sequence[Mapping[str, Any]], title: str | None = None
) -> go.Figure:
    """One run's path in the (weight norm, loss) plane: train and test loss against
    ``weight_norm_l2`` over training (Omnigrok's view of grokking as norm decay). The markers are
    coloured by step (log scale, with a colorbar) so the direction of time can be read."""
    rows = [m for m in metrics if "weight_norm_l2" in m]
    if not rows:
        raise GrokinterpError("metrics carry no weight_norm_l2")
    w = np.array([m["weight_norm_l2"] for m in rows], dtype=float)
    steps = np.array([m["step"] for m in rows])
    log_steps = np.log10(np.maximum(steps, 1))
    top = max(int(np.ceil(log_steps.max())), 1)
    ticks = list(range(top + 1))
    fig = go.Figure()
    for key, color, symbol in (
        ("train_loss", "#1f77b4", "circle"),
        ("test_loss", "#d62728", "diamond"),
    ):
        fig.add_trace(
            go.Scatter(
                x=w,
                y=[m.get(key) for m in rows],
                mode="lines+markers",
                name=key.replace("_", " "),
                line={"color": color, "width": 1},
                marker={"size": 6, "symbol": symbol, "color": log_steps, "coloraxis": "coloraxis"},
                customdata=steps,
                hovertemplate="step %{customdata}<br>‖w‖ %{x:.3g}<br>%{y:.3g}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or "Loss against weight norm over training (colour: step)",
        xaxis_title="weight norm ‖w‖₂",
        yaxis={"title": "loss", "type": "log"},
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": top,
            "colorbar": {
                "title": {"text": "step"},
                "tickvals": ticks,
                "ticktext": [f"{10**t:,}" for t in ticks],
            },
        },
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
