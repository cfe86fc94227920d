"""Figures for grokking tickets (Minegishi et al., "Bridging Lottery Ticket and Grokking",
arXiv 2310.19470): accuracy curves of a ticket and its controls, mask similarity over training,
per-tensor density of a mask. Plotly only; inputs are plain arrays / dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from grokinterp.analysis.curves import DEFAULT_THRESHOLD
from grokinterp.config import GrokinterpError
from grokinterp.report.figures._style import white_template

__all__ = [
    "ticket_curves_figure",
    "mask_similarity_figure",
    "ticket_similarity_figure",
    "mask_density_figure",
]

# Fixed colours per run kind so that every figure of a comparison reads the same way.
KIND_COLORS = {
    "dense": "#222222",
    "ticket": "#d62728",
    "dense_l2": "#1f77b4",
    "dense_l1": "#17becf",
    "random": "#7f7f7f",
    "snip": "#2ca02c",
    "grasp": "#9467bd",
    "synflow": "#ff7f0e",
}


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    if a.ndim != 1:
        raise GrokinterpError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def ticket_curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "test_acc",
    threshold: float | None = DEFAULT_THRESHOLD,
    show_train: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Accuracy (or any metric) over training steps, one line per run.

    Args:
        curves: ``{label: {"step": [...], metric: [...], "train_acc": [...]}}`` (e.g. the
            ``curves`` of :func:`grokinterp.experiments.tickets.compare_tickets`).
        metric: key plotted as solid lines.
        threshold: a dashed horizontal line (the grokking threshold of
            :mod:`grokinterp.analysis.curves`, 95 % by default).
        show_train: also draw ``train_acc`` dotted, in the same colour.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise GrokinterpError("curves must be a non-empty mapping label -> {step, metric}")
    fig = go.Figure()
    palette = iter(["#8c564b", "#e377c2", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a"] * 10)
    for label, c in curves.items():
        if "step" not in c or metric not in c:
            raise GrokinterpError(f"curves[{label!r}] needs keys 'step' and {metric!r}")
        steps = _arr(c["step"], f"curves[{label!r}]['step']")
        color = KIND_COLORS.get(label.split(" ")[0]) or next(palette)
        fig.add_trace(
            go.Scatter(
                x=steps, y=_arr(c[metric], metric), mode="lines", name=label, line={"color": color}
            )
        )
        if show_train and "train_acc" in c:
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_arr(c["train_acc"], "train_acc"),
                    mode="lines",
                    name=f"{label} (train)",
                    line={"color": color, "dash": "dot", "width": 1},
                    showlegend=False,
                )
            )
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="gray", opacity=0.6)
    fig.update_layout(
        title=title or f"{metric.replace('_', ' ')} over training: ticket vs controls",
        xaxis_title="step",
        yaxis_title=metric.replace("_", " "),
        **white_template(),
        legend_title="run",
    )
    return fig


def mask_similarity_figure(steps: Sequence[int], jaccard, title: str | None = None) -> go.Figure:
    """Jaccard similarity of magnitude masks across checkpoints.

    ``jaccard`` 1-D ``[n]`` (similarity of each checkpoint's mask to a reference mask: a line) or
    2-D ``[n, n]`` (all pairs: a heatmap), indexed like ``steps``.
    """
    s = _arr(steps, "steps")
    j = np.asarray(jaccard.detach().cpu() if hasattr(jaccard, "detach") else jaccard, dtype=float)
    if j.ndim == 1 and len(j) == len(s):
        fig = go.Figure(go.Scatter(x=s, y=j, mode="lines+markers", name="Jaccard"))
        fig.update_layout(xaxis_title="step", yaxis_title="Jaccard with reference mask")
        fig.update_yaxes(range=[0, 1.02])
    elif j.ndim == 2 and j.shape == (len(s), len(s)):
        labels = [str(int(v)) for v in s]
        fig = go.Figure(
            go.Heatmap(
                z=j,
                x=labels,
                y=labels,
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                colorbar={"title": "J"},
            )
        )
        fig.update_layout(xaxis_title="step", yaxis_title="step", yaxis_autorange="reversed")
    else:
        raise GrokinterpError(
            f"jaccard must have shape [{len(s)}] or [{len(s)}, {len(s)}], got {j.shape}"
        )
    fig.update_layout(
        title=title or "Ticket (magnitude mask) similarity over training", **white_template()
    )
    return fig


def ticket_similarity_figure(
    steps: Sequence[int], jaccard_ref, jaccard_init=None, jaccard_random=None
) -> go.Figure:
    """How the magnitude mask approaches the final ticket over training: its Jaccard similarity to
    the final ticket (``jaccard_ref``), to the initial mask (``jaccard_init``, dashed) and the
    chance level of two random masks of that density (``jaccard_random``, dotted), each ``[n]``
    indexed like ``steps`` (the ``tickets`` analysis's keys of those names)."""
    fig = mask_similarity_figure(steps, jaccard_ref)
    if np.ndim(fig.data[0].y) != 1:
        raise GrokinterpError("jaccard_ref must be 1-D (one value per step)")
    fig.data[0].update(name="vs final ticket", showlegend=True)
    for values, name, dash in (
        (jaccard_init, "vs initial mask", "dash"),
        (jaccard_random, "chance level", "dot"),
    ):
        if values is not None:
            fig.add_trace(
                go.Scatter(x=fig.data[0].x, y=_arr(values, name), name=name, line={"dash": dash})
            )
    fig.update_layout(yaxis_title="Jaccard similarity", legend={"orientation": "h", "y": -0.2})
    return fig


def mask_density_figure(mask: Mapping[str, object], title: str | None = None) -> go.Figure:
    """Fraction of entries kept per tensor of a mask (bool tensors / arrays), as bars."""
    if not isinstance(mask, Mapping) or not mask:
        raise GrokinterpError("mask must be a non-empty mapping name -> bool tensor")
    names = sorted(mask)
    dens = []
    for k in names:
        m = mask[k]
        a = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m)
        if a.dtype != bool:
            raise GrokinterpError(f"mask[{k!r}] must be boolean")
        dens.append(float(a.mean()) if a.size else 0.0)
    fig = go.Figure(go.Bar(x=names, y=dens))
    fig.update_layout(
        title=title or "Kept fraction per tensor",
        yaxis_title="kept fraction",
        yaxis_range=[0, 1],
        **white_template(),
    )
    return fig
