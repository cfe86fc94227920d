"""Figures for GrokTransfer, Grokfast and Omnigrok.

- GrokTransfer (Xu, Ni, Wang, Hu 2025, "Let Me Grok for You"): Fourier spectra of the weak
  embedding E_W, of A·B at initialisation and of the target embedding (once it generalizes);
  the target spectrum over training; overlap with E_W's key frequencies over training against
  chance; linear CKA / subspace energy / principal angles between E_W and the target embedding
  over training; test-accuracy curves of the comparison runs.
- Omnigrok (Liu, Michaud, Tegmark 2023, "Omnigrok: Grokking Beyond Algorithmic Data"): the "LU"
  figure, train and test loss against the weight norm (one run's path in that plane is
  :func:`grokinterp.report.figures.training.norm_trajectory_figure`, re-exported here).

Inputs are the flat dict of ``over_training(run, ["transfer"])`` (keys ``"steps"`` and
``"transfer/<key>"``), metrics rows or plain arrays; every function returns a
``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokinterp.analysis.curves import DEFAULT_THRESHOLD
from grokinterp.config import GrokinterpError
from grokinterp.report.figures import training
from grokinterp.report.figures._results import as_array, result, result_steps
from grokinterp.report.figures._style import white_template
from grokinterp.report.figures.training import norm_trajectory_figure

__all__ = [
    "transfer_spectra_figure",
    "transfer_spectrum_heatmap",
    "target_spectrum_slider",
    "transfer_overlap_figure",
    "transfer_share_figure",
    "transfer_subspace_figure",
    "comparison_curves_figure",
    "lu_figure",
    "norm_trajectory_figure",
]

COLORS = {
    "weak": "#7f7f7f",
    "init": "#ff7f0e",
    "target": "#1f77b4",
    "scratch": "#d62728",
    "transfer": "#1f77b4",
    "random_a": "#9467bd",
    "grokfast": "#2ca02c",
    "baseline": "#d62728",
}


def _np(x: Any) -> np.ndarray:
    return as_array(x, float)


def _get(results: Mapping[str, Any], key: str) -> np.ndarray:
    return result(results, "transfer", key, float)


def _steps(results: Mapping[str, Any]) -> np.ndarray:
    return result_steps(results, "transfer")


def _index(steps: np.ndarray, at: int | None) -> int:
    if at is None:
        return len(steps) - 1
    hits = np.nonzero(steps == at)[0]
    if not len(hits):
        raise GrokinterpError(f"at={at} is not one of the analysed steps")
    return int(hits[0])


def transfer_spectra_figure(
    results: Mapping[str, Any], at: int | None = None, title: str | None = None
) -> go.Figure:
    """Normalised Fourier spectra (share of the non-constant energy per frequency) of E_W, of
    A·B at step 0 and of the target embedding at step ``at`` (default: the last analysed step;
    pass the first step at ≥ 95 % test accuracy). Key frequencies are outlined."""
    steps = _steps(results)
    i = _index(steps, at)
    spec = _get(results, "spectrum")
    weak, init, target = _get(results, "weak_spectrum")[0], spec[0], spec[i]
    K = len(weak)
    freqs = np.arange(1, K + 1)
    masks = {
        "weak": _get(results, "weak_key_mask")[0],
        "init": _get(results, "key_mask")[0],
        "target": _get(results, "key_mask")[i],
    }
    fig = go.Figure()
    names = {
        "weak": "E_W (weak embedding)",
        "init": "A·B at step 0",
        "target": f"target embedding, step {int(steps[i])}",
    }
    for key, s in (("weak", weak), ("init", init), ("target", target)):
        share = s**2 / max(float((s**2).sum()), 1e-300)
        fig.add_trace(
            go.Bar(
                x=freqs,
                y=share,
                name=names[key],
                marker={
                    "color": COLORS[key],
                    "line": {"color": "black", "width": 2 * masks[key]},
                },
                hovertemplate="k=%{x}<br>share %{y:.3f}<extra>" + names[key] + "</extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title=title or "Fourier spectra: weak embedding → transferred A·B → target (outlined: key)",
        xaxis_title="frequency k",
        yaxis_title="share of Fourier energy",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def transfer_spectrum_heatmap(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """The target embedding's spectrum over training (log10 norm), E_W's key frequencies marked;
    the step axis spans exactly the analysed checkpoints, first to last."""
    steps = _steps(results)
    spec = _get(results, "spectrum")
    K = spec.shape[1]
    freqs = np.arange(1, K + 1)
    fig = go.Figure(
        go.Heatmap(
            x=steps,
            y=freqs,
            z=np.log10(np.maximum(spec, 1e-12)).T,
            colorscale="Viridis",
            colorbar={"title": "log10 norm"},
            hovertemplate="step %{x}<br>k %{y}<br>%{z:.3g}<extra></extra>",
        )
    )
    wk = freqs[_get(results, "weak_key_mask")[0] > 0.5]
    fig.add_trace(
        go.Scatter(
            x=np.full(len(wk), steps[0]),
            y=wk,
            mode="markers",
            cliponaxis=False,  # drawn on the axis's left edge, the first checkpoint
            marker={"symbol": "triangle-right", "size": 10, "color": "#d62728"},
            name="E_W key frequencies",
        )
    )
    fig.update_layout(
        title=title or "Target embedding spectrum over training",
        xaxis={"title": "step", "range": [float(steps[0]), float(steps[-1])]},
        yaxis_title="frequency k",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def target_spectrum_slider(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """The target embedding's Fourier norms per frequency, one checkpoint at a time (a slider
    picks the checkpoint; the last one is shown first)."""
    return training.checkpoint_slider_figure(
        _steps(results).astype(int).tolist(),
        _get(results, "spectrum"),
        title=title or "Fourier norms of the target embedding",
        xtitle="frequency k",
        ytitle="‖projection on cos/sin k‖",
    )


def _log_x(steps: np.ndarray) -> np.ndarray:
    return np.maximum(steps, 1)  # step 0 on a log axis


def transfer_overlap_figure(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Over training: overlap ``|K_T ∩ K_W| / |K_T|`` and the share of the target's Fourier
    energy in E_W's key frequencies, each with its chance level ``|K_W| / K``."""
    steps = _log_x(_steps(results))
    chance = _get(results, "overlap_expected")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=steps, y=_get(results, "overlap"), name="key-frequency overlap", mode="lines")
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=_get(results, "energy_in_weak_keys"),
            name="target energy in E_W's key freqs",
            mode="lines",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=chance,
            name="chance (|K_W|/K)",
            mode="lines",
            line={"dash": "dot", "color": "gray"},
        )
    )
    fig.update_layout(
        title=title or "How much of the target's Fourier structure E_W already carried",
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "fraction", "range": [0, 1.05]},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def transfer_share_figure(
    series: Mapping[str, tuple[Any, Any]], fourier: bool = True, title: str | None = None
) -> go.Figure:
    """Several runs on shared axes (e.g. a transfer and its random-A ablation), ``{label: (steps,
    values)}``: with ``fourier`` the share of each target's Fourier energy in E_W's key
    frequencies (``transfer/energy_in_weak_keys``), else the share of its first layer's energy in
    span(E_W) (``transfer/subspace_energy``), over training."""
    if not series:
        raise GrokinterpError("series must name at least one run")
    what = "energy in E_W's key freqs" if fourier else "first-layer energy in span(E_W)"
    fig = go.Figure()
    for i, (label, (steps, values)) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=_log_x(_np(steps)),
                y=_np(values),
                name=f"{label} · {what}",
                line={"color": training.COLORS[i % len(training.COLORS)]},
            )
        )
    fig.update_layout(
        title=title
        or (
            "Share of the target's Fourier energy in E_W's key frequencies"
            if fourier
            else "Share of the target first layer's energy in span(E_W)"
        ),
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "fraction", "range": [0, 1.05]},
        **white_template(),
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def transfer_subspace_figure(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Over training: linear CKA(E_W, E_T), the share of E_T's energy inside span(E_W) (left)
    and the principal angles between span(E_W) and E_T's top-r subspace in degrees (right).
    For an mlp E_T is the first layer's W_in; on XOR-cluster data (``signal_energy`` present)
    the left panel adds its share of energy on the signal coordinates x₁, x₂."""
    steps = _log_x(_steps(results))
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("similarity to E_W", "principal angles to span(E_W)"),
    )
    fig.add_trace(go.Scatter(x=steps, y=_get(results, "cka"), name="linear CKA"), 1, 1)
    fig.add_trace(
        go.Scatter(x=steps, y=_get(results, "subspace_energy"), name="energy in span(E_W)"), 1, 1
    )
    if any(k.endswith("signal_energy") and "weak" not in k for k in results):  # XOR clusters
        fig.add_trace(
            go.Scatter(x=steps, y=_get(results, "signal_energy"), name="energy on x₁, x₂"), 1, 1
        )
    angles = np.degrees(_get(results, "principal_angles"))
    for j in range(angles.shape[1]):
        fig.add_trace(
            go.Scatter(x=steps, y=angles[:, j], name=f"θ{j + 1}", line={"width": 1}), 1, 2
        )
    fig.update_xaxes(type="log", title_text="step")
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, 90], title_text="degrees", row=1, col=2)
    fig.update_layout(
        title=title or "E_W vs the target embedding over training",
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def comparison_curves_figure(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    level: float = DEFAULT_THRESHOLD,
    title: str | None = None,
) -> go.Figure:
    """Train (dashed) and test (solid) accuracy of several runs: ``{kind: run.metrics}``, with
    the accuracy ``level`` (the grokking threshold) dotted."""
    if not curves:
        raise GrokinterpError("curves must name at least one run")
    fig = go.Figure()
    for kind, rows in curves.items():
        steps = _log_x(np.array([m["step"] for m in rows], dtype=float))
        color = COLORS.get(kind)
        for key, dash in (("train_acc", "dash"), ("test_acc", "solid")):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=[m[key] for m in rows],
                    name=f"{kind} {key.split('_')[0]}",
                    line={"dash": dash, "color": color},
                    legendgroup=kind,
                )
            )
    fig.add_hline(y=level, line={"dash": "dot", "color": "gray"})
    fig.update_layout(
        title=title or "Accuracy over training",
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "accuracy", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def lu_figure(
    weight_norm: Sequence[float],
    train_loss: Sequence[float],
    test_loss: Sequence[float],
    log_y: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Omnigrok's "LU" figure: final train loss (an "L") and test loss (a "U") against the weight
    norm at which training was held (one point per constrained run, e.g. from
    :func:`grokinterp.experiments.transfer.lu_sweep`)."""
    w, tr, te = _np(weight_norm), _np(train_loss), _np(test_loss)
    if not (len(w) == len(tr) == len(te)) or len(w) == 0:
        raise GrokinterpError(
            "weight_norm, train_loss and test_loss must be equal-length, non-empty"
        )
    order = np.argsort(w)
    fig = go.Figure()
    for y, name, color in ((tr, "train loss", "#1f77b4"), (te, "test loss", "#d62728")):
        fig.add_trace(
            go.Scatter(
                x=w[order],
                y=y[order],
                name=name,
                mode="lines+markers",
                line={"color": color},
                hovertemplate="‖w‖ %{x:.3g}<br>%{y:.3g}<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        title=title or "Omnigrok LU: losses against the (constrained) weight norm",
        xaxis={"title": "weight norm ‖w‖₂", "type": "log"},
        yaxis={"title": "loss", "type": "log" if log_y else "linear"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
