"""Figures for the training-dynamics measures (``rank``, ``complexity``, ``norms``,
``robustness``): each measure is drawn under the train/test accuracy curves on a shared step axis,
with a dashed line at the midpoint of the test-accuracy jump, so a reader sees where each measure
turns relative to grokking.

Inputs are the flat dict returned by ``over_training`` (keys ``"steps"`` and ``"<analysis>/<key>"``)
and the run's metrics (``run.metrics``: a list of dicts with ``step``, ``train_acc``, ``test_acc``;
or a mapping of equal-length lists). Plotly only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokinterp.analysis.curves import transition_step
from grokinterp.config import GrokinterpError
from grokinterp.report.figures._style import white_template

__all__ = [
    "complexity_figure",
    "dynamics_figure",
    "hook_name",
    "norms_figure",
    "rank_figure",
    "robustness_figure",
    "rqi_figure",
    "slingshot_figure",
]

SET_COLORS = {"train": "#1f77b4", "test": "#d62728", "random": "#7f7f7f"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def hook_name(layer: str) -> str:
    """The TransformerLens hook name of a layer key of the ``rank`` analysis, for display.

    ``pre:<module>`` is the input of an activation module: for ``blocks.{i}.mlp.act`` that is
    ``blocks.{i}.mlp.hook_pre`` (a second call of a shared module keeps its ``#k`` suffix);
    ``resid:blocks.{i}`` is ``blocks.{i}.hook_resid_post``. Other keys are returned unchanged.
    """
    kind, sep, path = layer.partition(":")
    if not sep:
        return layer
    path, hash_, call = path.partition("#")
    suffix = hash_ + call
    if kind == "pre":
        parent, _, last = path.rpartition(".")
        return (f"{parent}.hook_pre" if parent and last == "act" else f"{path} (input)") + suffix
    if kind == "resid":
        return f"{path}.hook_resid_post{suffix}"
    return layer


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)


def _rows(metrics: Any) -> list[dict[str, Any]]:
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        n = len(metrics["step"])
        return [{k: metrics[k][i] for k in metrics} for i in range(n)]
    return list(metrics)


def _steps(results: Mapping[str, Any]) -> np.ndarray:
    if "steps" not in results:
        raise GrokinterpError("results must be the output of over_training (with a 'steps' key)")
    return _arr(results["steps"])


def _need(results: Mapping[str, Any], prefix: str) -> list[str]:
    keys = [k for k in results if k.startswith(prefix)]
    if not keys:
        raise GrokinterpError(
            f"results has no '{prefix}*' keys; run over_training(run, ['{prefix.split('/')[0]}']) first"
        )
    return keys


def _x(steps: np.ndarray, log_x: bool) -> np.ndarray:
    # A log axis cannot show step 0 (the initialisation): plotly drops it.
    return np.where(steps > 0, steps, np.nan) if log_x else steps


def _base(
    metrics: Any, n_measure_rows: int, titles: Sequence[str], log_x: bool, title: str | None
) -> go.Figure:
    rows = 1 + n_measure_rows
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=["accuracy", *titles],
        row_heights=[0.7] + [1.0] * n_measure_rows,
    )
    data = _rows(metrics)
    if data:
        s = _x(np.array([m["step"] for m in data], dtype=float), log_x)
        for key, color, dash in (("train_acc", "#1f77b4", "dot"), ("test_acc", "#d62728", None)):
            if all(key in m for m in data):
                fig.add_trace(
                    go.Scatter(
                        x=s,
                        y=[m[key] for m in data],
                        name=key,
                        mode="lines",
                        line={"color": color, "dash": dash},
                        legendgroup="acc",
                    ),
                    row=1,
                    col=1,
                )
        t = transition_step(data, "test_acc", 0.5)
        if t is not None and t > 0:
            for r in range(1, rows + 1):
                fig.add_vline(x=t, line={"dash": "dash", "color": "#444", "width": 1}, row=r, col=1)
            fig.add_annotation(
                x=np.log10(t) if log_x else t,
                y=1.0,
                yref="y domain",
                text=f"test acc ½-way: {t}",
                showarrow=False,
                yanchor="bottom",
                font={"size": 10},
                row=1,
                col=1,
            )
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
    fig.update_xaxes(type="log" if log_x else "linear")
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_layout(
        title=title, height=260 + 240 * n_measure_rows, **white_template(), hovermode="x"
    )
    return fig


def rank_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    kind: str = "effective",
    layers: Sequence[str] | None = None,
    log_x: bool = True,
    title: str | None = "Feature rank per layer (Fan et al. 2024)",
) -> go.Figure:
    """Per-layer feature rank over training: ``kind`` = ``"effective"``, ``"numerical"`` or
    ``"both"`` (two panels), below the accuracy curves. Layers are named by their
    TransformerLens hook (:func:`hook_name`); ``layers`` selects some, by either name."""
    if kind not in ("effective", "numerical", "both"):
        raise GrokinterpError(f"kind must be 'effective', 'numerical' or 'both', got {kind!r}")
    kinds = ["numerical", "effective"] if kind == "both" else [kind]
    steps = _x(_steps(results), log_x)
    fig = _base(metrics, len(kinds), [f"{k} rank" for k in kinds], log_x, title)
    for row, k in enumerate(kinds, start=2):
        keys = _need(results, f"rank/{k}/")
        for j, key in enumerate(keys):
            layer = key.split("/", 2)[2]
            name = hook_name(layer)
            if layers is not None and layer not in layers and name not in layers:
                continue
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_arr(results[key]),
                    name=name,
                    mode="lines+markers",
                    marker={"size": 4},
                    line={"color": PALETTE[j % len(PALETTE)]},
                    legendgroup=name,
                    showlegend=row == 2,
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=f"{k} rank", row=row, col=1)
    return fig


def complexity_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    sets: Sequence[str] = ("train", "test", "random"),
    per_layer: bool = False,
    log_x: bool = True,
    title: str | None = "Local complexity (Humayun et al. 2024)",
) -> go.Figure:
    """Mean local complexity of train, test and random points over training (one panel), plus
    one panel of per-layer means for the training points with ``per_layer``."""
    steps = _x(_steps(results), log_x)
    present = [s for s in sets if f"complexity/{s}/mean" in results]
    if not present:
        _need(results, "complexity/")
        raise GrokinterpError(f"results has none of the sets {list(sets)}")
    n_rows = 2 if per_layer else 1
    titles = ["local complexity (sum over layers)"] + (
        ["per layer (train points)"] if per_layer else []
    )
    fig = _base(metrics, n_rows, titles, log_x, title)
    for s in present:
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=_arr(results[f"complexity/{s}/mean"]),
                name=f"LC {s}",
                mode="lines+markers",
                marker={"size": 4},
                line={"color": SET_COLORS.get(s)},
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text="neurons crossing", row=2, col=1)
    if per_layer:
        pl = _arr(results[f"complexity/{present[0]}/per_layer"])
        for j in range(pl.shape[1]):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=pl[:, j],
                    name=f"layer {j}",
                    mode="lines",
                    line={"color": PALETTE[j % len(PALETTE)]},
                ),
                row=3,
                col=1,
            )
        fig.update_yaxes(title_text="per layer", row=3, col=1)
    return fig


def norms_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    layer: int = 0,
    fixed_set: bool = True,
    log_x: bool = True,
    title: str | None = "Sparse vs dense subnetwork (Merrill et al. 2023)",
) -> go.Figure:
    """L2 norm of the sparse subnetwork (top-k neurons by norm reproducing the train accuracy) and
    of its complement in MLP ``layer``, and k over training. ``fixed_set``: the sparse set of the
    final checkpoint (``final_*`` keys), else the set found at each step."""
    steps = _x(_steps(results), log_x)
    prefix = "final_" if fixed_set else ""
    sk, dk = f"norms/{prefix}sparse_l2/{layer}", f"norms/{prefix}dense_l2/{layer}"
    if sk not in results:
        _need(results, "norms/")
        raise GrokinterpError(f"results has no key {sk!r}: is {layer} an analysed MLP layer?")
    fig = _base(
        metrics, 2, [f"L2 norm, layer {layer}", "k (smallest reproducing top-k)"], log_x, title
    )
    for key, name, color in ((sk, "sparse (top-k)", "#d62728"), (dk, "dense (rest)", "#1f77b4")):
        fig.add_trace(
            go.Scatter(
                x=steps, y=_arr(results[key]), name=name, mode="lines", line={"color": color}
            ),
            row=2,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=steps,
            # k = -1 means "at chance, undefined": a gap, not a point at -1
            y=[None if v < 0 else v for v in _arr(results[f"norms/k/{layer}"])],
            name="k at each step",
            mode="lines+markers",
            marker={"size": 4},
            line={"color": "#2ca02c"},
        ),
        row=3,
        col=1,
    )
    fig.update_yaxes(title_text="L2 norm", row=2, col=1)
    fig.update_yaxes(title_text="k", row=3, col=1)
    return fig


def robustness_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    log_x: bool = True,
    title: str | None = "Accuracy under L∞ PGD (Humayun et al. 2024)",
) -> go.Figure:
    """Adversarial (PGD) accuracy for each ε, with the clean accuracy of the same points."""
    steps = _x(_steps(results), log_x)
    if "robustness/accuracy" not in results:
        _need(results, "robustness/")
    acc = _arr(results["robustness/accuracy"])
    eps = _arr(results["robustness/eps"])[0]
    fig = _base(metrics, 1, ["PGD accuracy"], log_x, title)
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=_arr(results["robustness/clean_accuracy"]),
            name="clean (sample)",
            mode="lines",
            line={"color": "#222", "dash": "dot"},
        ),
        row=2,
        col=1,
    )
    for j, e in enumerate(eps):
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=acc[:, j],
                name=f"ε = {e:g}",
                mode="lines+markers",
                marker={"size": 4},
                line={"color": PALETTE[j % len(PALETTE)]},
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=2, col=1)
    return fig


def dynamics_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    log_x: bool = True,
    norms_layer: int = 0,
    title: str | None = "Training dynamics",
) -> go.Figure:
    """One overview: accuracy, then one panel per measure present in ``results`` (effective rank
    per layer, local complexity per set, sparse/dense norms of ``norms_layer``, PGD accuracy)."""
    steps = _x(_steps(results), log_x)
    panels = []
    if any(k.startswith("rank/effective/") for k in results):
        panels.append("rank")
    if any(k.startswith("complexity/") and k.endswith("/mean") for k in results):
        panels.append("complexity")
    if f"norms/final_sparse_l2/{norms_layer}" in results:
        panels.append("norms")
    if "robustness/accuracy" in results:
        panels.append("robustness")
    if not panels:
        raise GrokinterpError("results holds none of rank, complexity, norms, robustness")
    titles = {
        "rank": "effective rank per layer",
        "complexity": "local complexity",
        "norms": f"sparse vs dense L2 norm (layer {norms_layer})",
        "robustness": "PGD accuracy",
    }
    fig = _base(metrics, len(panels), [titles[p] for p in panels], log_x, title)
    for row, p in enumerate(panels, start=2):
        traces = []
        if p == "rank":
            keys = [k for k in results if k.startswith("rank/effective/")]
            for j, k in enumerate(keys):
                name = hook_name(k.split("/", 2)[2])
                traces.append((name, _arr(results[k]), PALETTE[j % len(PALETTE)]))
        elif p == "complexity":
            for s, c in SET_COLORS.items():
                if f"complexity/{s}/mean" in results:
                    traces.append((f"LC {s}", _arr(results[f"complexity/{s}/mean"]), c))
        elif p == "norms":
            for part, c in (("sparse", "#d62728"), ("dense", "#1f77b4")):
                key = f"norms/final_{part}_l2/{norms_layer}"
                traces.append((f"{part} subnetwork", _arr(results[key]), c))
        else:
            acc, eps = _arr(results["robustness/accuracy"]), _arr(results["robustness/eps"])[0]
            for j, e in enumerate(eps):
                traces.append((f"PGD ε={e:g}", acc[:, j], PALETTE[j % len(PALETTE)]))
        for name, y, color in traces:
            fig.add_trace(
                go.Scatter(x=steps, y=y, name=name, mode="lines", line={"color": color}),
                row=row,
                col=1,
            )
    return fig


def rqi_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    baseline: float | None = None,
    log_x: bool = True,
    title: str | None = "Representation quality index (Liu et al. 2022)",
) -> go.Figure:
    """Circular (ring) and linear RQI of the embedding over training, with the ring plane's share
    of the embedding's variance and, dotted, the RQI of unstructured angles (``baseline``)."""
    steps = _x(_steps(results), log_x)
    if "rqi/circular" not in results:
        _need(results, "rqi/")
    fig = _base(metrics, 1, ["RQI (fraction of parallelograms realised)"], log_x, title)
    for key, name, color, dash in (
        ("rqi/circular", "RQI, ring (mod p)", "#9467bd", None),
        ("rqi/linear", "RQI, linear (paper)", "#8c564b", "dot"),
        ("rqi/plane_variance", "variance in the ring's plane", "#7f7f7f", "dash"),
    ):
        if key in results:
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=_arr(results[key]),
                    name=name,
                    mode="lines+markers" if dash is None else "lines",
                    marker={"size": 4},
                    line={"color": color, "dash": dash},
                ),
                row=2,
                col=1,
            )
    if baseline is not None:
        fig.add_hline(y=baseline, line={"dash": "dot", "color": "#aaa", "width": 1}, row=2, col=1)
    fig.update_yaxes(title_text="RQI", range=[0, 1.05], row=2, col=1)
    return fig


def slingshot_figure(
    results: Mapping[str, Any],
    metrics: Any = None,
    spike_steps: Sequence[int] = (),
    log_x: bool = False,
    title: str | None = "Loss spikes and last-layer norm (Thilak et al. 2022)",
) -> go.Figure:
    """Training loss (log scale) with the detected spikes marked, and the last layer's weight
    norm, under the accuracy curves; a linear step axis by default (Slingshots come late)."""
    steps = _x(_steps(results), log_x)
    if "slingshot/last_layer_norm" not in results:
        _need(results, "slingshot/")
    fig = _base(metrics, 2, ["train loss", "last-layer weight norm ‖W_U‖"], log_x, title)
    rows = [m for m in _rows(metrics) if m.get("train_loss") is not None]
    if rows:
        s = _x(np.array([m["step"] for m in rows], dtype=float), log_x)
        loss = np.array([m["train_loss"] for m in rows], dtype=float)
        fig.add_trace(
            go.Scatter(x=s, y=loss, name="train loss", mode="lines", line={"color": "#1f77b4"}),
            row=2,
            col=1,
        )
        at = {int(m["step"]): float(m["train_loss"]) for m in rows}
        marks = [t for t in spike_steps if t in at]
        if marks:
            fig.add_trace(
                go.Scatter(
                    x=marks,
                    y=[at[t] for t in marks],
                    name="spike",
                    mode="markers",
                    marker={"color": "#d62728", "size": 9, "symbol": "x"},
                ),
                row=2,
                col=1,
            )
    fig.update_yaxes(title_text="loss", type="log", row=2, col=1)
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=_arr(results["slingshot/last_layer_norm"]),
            name="‖W_U‖",
            mode="lines+markers",
            marker={"size": 4},
            line={"color": "#ff7f0e"},
        ),
        row=3,
        col=1,
    )
    for t in spike_steps:
        fig.add_vline(x=t, line={"dash": "dot", "color": "#d62728", "width": 1}, row=3, col=1)
    fig.update_yaxes(title_text="norm", row=3, col=1)
    return fig
