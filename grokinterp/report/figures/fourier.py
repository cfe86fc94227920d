"""Figures of the Fourier progress measures (Nanda, Chan, Lieberum, Smith, Steinhardt 2023,
"Progress measures for grokking via mechanistic interpretability"): the embedding / W_L spectrum
over training, restricted / excluded / train / test loss on one log chart with the grokking
window shaded, the per-neuron frequency map, and the Gini coefficients over training (of one run,
or of several runs on shared axes).

Inputs are the flat dict returned by ``over_training(run, ["fourier"])`` (keys ``"steps"`` and
``"fourier/<key>"``) or plain arrays; every function returns a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.config import GrokinterpError
from grokinterp.report.figures._results import as_array, result, result_steps
from grokinterp.report.figures._style import white_template
from grokinterp.report.figures.training import COLORS, checkpoint_slider_figure

__all__ = [
    "embedding_norms_slider",
    "fourier_gini_figure",
    "fourier_loss_figure",
    "fourier_spectrum_figure",
    "gini_comparison_figure",
    "neuron_fraction_heatmap",
    "neuron_frequency_figure",
]

PREFIX = "fourier/"
LOSS_STYLE = {
    "train_loss": ("train", "#1f77b4", "solid"),
    "test_loss": ("test", "#d62728", "solid"),
    "restricted_loss": ("restricted (key frequencies only)", "#2ca02c", "dash"),
    "excluded_loss": ("excluded (key frequencies removed, train)", "#9467bd", "dash"),
}


def _np(x: Any) -> np.ndarray:
    return as_array(x)


def _get(results: Mapping[str, Any], key: str) -> np.ndarray:
    return result(results, "fourier", key)


def _steps(results: Mapping[str, Any]) -> np.ndarray:
    return result_steps(results, "fourier")


def fourier_spectrum_figure(
    results: Mapping[str, Any],
    which: str = "embed",
    log_color: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of a Fourier spectrum over training: frequency (y) x step (x). The step axis spans
    exactly the analysed checkpoints, first to last (the heatmap's edge cells are not drawn past
    them).

    Args:
        results: ``over_training`` output.
        which: ``"embed"`` (norms of ``W_E`` without ``=``), ``"wl"`` (``W_L = W_out W_U`` per
            output class) or ``"logit"`` (energy of the logits along ``cos/sin w_k(a+b)``).
        log_color: colour by ``log10`` of the norm (the structure spans decades).
    """
    names = {"embed": "embedding W_E", "wl": "W_L = W_out W_U", "logit": "logits (a+b directions)"}
    if which not in names:
        raise GrokinterpError(f"which={which!r} is not valid; allowed: {', '.join(names)}")
    steps = _steps(results)
    norms = _get(results, f"{which}_norms").astype(float)  # [T, K]
    if norms.ndim != 2 or norms.shape[0] != len(steps):
        raise GrokinterpError(f"{which}_norms must be [steps, K], got {norms.shape}")
    z = np.log10(np.maximum(norms, 1e-12)) if log_color else norms
    K = norms.shape[1]
    freqs = np.arange(1, K + 1)
    fig = go.Figure(
        go.Heatmap(
            x=steps,
            y=freqs,
            z=z.T,
            colorscale="Viridis",
            colorbar={"title": "log10 norm" if log_color else "norm"},
            hovertemplate="step %{x}<br>frequency %{y}<br>%{z:.3g}<extra></extra>",
        )
    )
    if PREFIX + "key_mask" in results:
        key = freqs[_np(results[PREFIX + "key_mask"])[-1].astype(bool)]
        fig.add_trace(
            go.Scatter(
                x=np.full(len(key), steps[-1]),
                y=key,
                mode="markers",
                cliponaxis=False,  # drawn on the axis's right edge, the last checkpoint
                marker={"symbol": "triangle-left", "size": 10, "color": "#d62728"},
                name="key frequencies",
                hovertemplate="key frequency %{y}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or f"Fourier spectrum of the {names[which]} over training",
        xaxis={"title": "step", "range": [float(steps[0]), float(steps[-1])]},
        yaxis_title="frequency k",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def embedding_norms_slider(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """The Fourier norms of the embedding ``W_E`` per frequency, one checkpoint at a time (a
    slider picks the checkpoint; the last one is shown first)."""
    return checkpoint_slider_figure(
        _steps(results).astype(int).tolist(),
        _get(results, "embed_norms"),
        title=title or "Fourier norms of the embedding W_E",
        xtitle="frequency k",
        ytitle="‖projection of W_E on cos/sin k‖",
    )


def gini_comparison_figure(
    results_by_run: Mapping[str, Mapping[str, Any]], title: str | None = None
) -> go.Figure:
    """Several runs on shared axes: the Gini coefficient of the Fourier spectra of ``W_E``
    (solid) and ``W_L`` (dotted) over training, one colour per run (``{label: results}``, each
    an ``over_training`` output; their step grids may differ)."""
    if not results_by_run:
        raise GrokinterpError("results_by_run must name at least one run")
    fig = go.Figure()
    for i, (label, res) in enumerate(results_by_run.items()):
        steps = _steps(res)
        for key, name, dash in (("embed_gini", "W_E", "solid"), ("wl_gini", "W_L", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_get(res, key),
                    name=f"{label} · {name}",
                    line={"color": COLORS[i % len(COLORS)], "dash": dash},
                )
            )
    fig.update_layout(
        title=title or "Gini coefficient of the Fourier spectra (W_E solid, W_L dotted)",
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "Gini", "range": [0, 1]},
        **white_template(),
        height=400,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _window(
    metrics: Sequence[Mapping[str, Any]] | None, window: tuple | None, threshold: float
) -> tuple | None:
    if window is not None:
        return window
    if metrics:
        times = grok_times(list(metrics), threshold)
        t_mem, t_gen = times.fit_step, times.generalize_step
        if t_mem is not None and t_gen is not None and t_gen > t_mem:
            return (t_mem, t_gen)
    return None


def fourier_loss_figure(
    results: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]] | None = None,
    window: tuple[float, float] | None = None,
    title: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> go.Figure:
    """Train, test, restricted and excluded loss on one log-scale chart (Nanda et al. 2023,
    Fig. 7), with the grokking window shaded.

    Args:
        results: ``over_training`` output (restricted/excluded loss exist for add/sub/mul/div).
        metrics: the run's metrics; the window is then ``[fit_step, generalize_step]`` of
            :func:`~grokinterp.analysis.curves.grok_times` at ``threshold``.
        window: explicit ``(start, end)`` steps to shade instead.
        threshold: the accuracy defining the window (default 95 %).
    """
    steps = _steps(results)
    fig = go.Figure()
    for key, (label, color, dash) in LOSS_STYLE.items():
        if PREFIX + key not in results and key not in results:
            continue
        y = np.maximum(_get(results, key).astype(float), 1e-12)
        fig.add_trace(
            go.Scatter(x=steps, y=y, name=label, mode="lines", line={"color": color, "dash": dash})
        )
    w = _window(metrics, window, threshold)
    if w is not None:
        fig.add_vrect(
            x0=w[0],
            x1=w[1],
            fillcolor="#ffbf00",
            opacity=0.15,
            line_width=0,
            annotation_text="grokking window",
            annotation_position="top left",
        )
    fig.update_layout(
        title=title
        or "Progress measures: restricted loss falls before test loss; excluded loss rises",
        xaxis_title="step",
        yaxis_title="cross-entropy loss",
        yaxis_type="log",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def fourier_gini_figure(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Gini coefficient (Hurley & Rickard 2009) of the Fourier norms of ``W_E`` and ``W_L`` over
    training, with the share of neurons > 85 % explained by one frequency (dotted)."""
    steps = _steps(results)
    fig = go.Figure()
    for key, label, color in (
        ("embed_gini", "Gini of W_E spectrum", "#1f77b4"),
        ("wl_gini", "Gini of W_L spectrum", "#ff7f0e"),
    ):
        fig.add_trace(go.Scatter(x=steps, y=_get(results, key), name=label, line={"color": color}))
    if PREFIX + "neurons_85" in results:
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=_get(results, "neurons_85"),
                name="neurons > 85 % one frequency",
                line={"color": "#7f7f7f", "dash": "dot"},
            )
        )
    fig.update_layout(
        title=title or "Sparsity in the Fourier basis over training",
        xaxis_title="step",
        yaxis_title="Gini coefficient / share",
        yaxis_range=[0, 1],
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def neuron_frequency_figure(
    results: Mapping[str, Any], step: int | None = None, title: str | None = None
) -> go.Figure:
    """Per-neuron frequency map at one checkpoint (default: the last): each MLP neuron (sorted by
    cluster) at its best frequency, coloured by the share of its variance that frequency explains;
    next to it, the cluster sizes per frequency (Nanda et al. 2023, neurons cluster by frequency)."""
    steps = _steps(results)
    if step is None:
        i = len(steps) - 1
    else:
        hits = np.nonzero(steps == step)[0]
        if len(hits) == 0:
            raise GrokinterpError(f"step={step} is not among the analysed steps")
        i = int(hits[0])
    best = _get(results, "neuron_freq")[i].astype(int)
    frac = _get(results, "neuron_frac")[i].astype(float)
    order = np.lexsort((-frac, best))
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.75, 0.25], shared_yaxes=True, horizontal_spacing=0.02
    )
    fig.add_trace(
        go.Scatter(
            x=np.arange(len(best)),
            y=best[order],
            mode="markers",
            marker={
                "color": frac[order],
                "colorscale": "Viridis",
                "cmin": 0,
                "cmax": 1,
                "size": 5,
                "colorbar": {"title": "variance<br>explained", "x": 1.02},
            },
            customdata=np.stack([order, frac[order]], -1),
            hovertemplate="neuron %{customdata[0]}<br>frequency %{y}<br>explained %{customdata[1]:.2f}<extra></extra>",
            name="neurons",
        ),
        row=1,
        col=1,
    )
    sizes = np.bincount(best, minlength=int(best.max(initial=0)) + 1)
    fig.add_trace(
        go.Bar(
            y=np.arange(len(sizes)),
            x=sizes,
            orientation="h",
            marker_color="#7f7f7f",
            name="cluster size",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="neuron (sorted by cluster)", row=1, col=1)
    fig.update_xaxes(title_text="neurons", row=1, col=2)
    fig.update_yaxes(title_text="best frequency (0 = dead)", row=1, col=1)
    fig.update_layout(
        title=title or f"MLP neurons by frequency at step {int(steps[i])}", showlegend=False
    )
    return fig


def neuron_fraction_heatmap(
    fractions: Any, max_neurons: int | None = None, title: str | None = None
) -> go.Figure:
    """Heatmap neuron x frequency of the share of each neuron's variance explained by each single
    frequency (``grokinterp.analysis.fourier.neuron_frequency_fractions`` at one checkpoint),
    neurons sorted by their best frequency."""
    f = _np(fractions).astype(float)
    if f.ndim != 2:
        raise GrokinterpError(f"fractions must be [neurons, K], got shape {f.shape}")
    order = np.lexsort((-f.max(1), f.argmax(1)))
    if max_neurons is not None:
        order = order[:max_neurons]
    fig = go.Figure(
        go.Heatmap(
            z=f[order],
            x=np.arange(1, f.shape[1] + 1),
            y=[str(j) for j in order],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": "share"},
            hovertemplate="neuron %{y}<br>frequency %{x}<br>%{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or "Variance of each neuron explained by each frequency",
        xaxis_title="frequency k",
        yaxis_title="neuron (sorted by best frequency)",
        yaxis={"showticklabels": False},
    )
    return fig
