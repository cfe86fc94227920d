"""The training-dynamics sections: feature rank (Fan et al. 2024), local complexity and adversarial
robustness (Humayun et al. 2024), sparse and dense subnetworks (Merrill et al. 2023).

Each reading places the measure's turning point (from :mod:`grokinterp.analysis.curves`) against
the midpoint of the test-accuracy jump; layers are named by their TransformerLens hooks.
"""

from __future__ import annotations

from grokinterp.analysis.curves import complexity_phases, drop_step, transition_step
from grokinterp.report.figures import dynamics as figures
from grokinterp.report.sections.base import (
    AnalysisData,
    Rendered,
    RunData,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = ["complexity_reading", "norms_reading", "rank_reading", "robustness_reading"]


def _vs_grokking(rd: RunData, step: float | None) -> str:
    t = transition_step(rd.metrics, "test_acc", 0.5)
    if step is None or t is None:
        return ""
    rel = "before" if step < t else ("after" if step > t else "at")
    return f" ({rel} the test-accuracy midpoint, step {fmt_step(t)})"


def _half_way(steps, values) -> int | None:
    """First step at which ``values`` has covered half of its change from first to last."""
    if len(values) < 2 or abs(values[-1] - values[0]) < 1e-12:
        return None
    rows = [{"step": int(s), "v": float(v)} for s, v in zip(steps, values, strict=True)]
    return transition_step(rows, "v", 0.5)


# ----------------------------------------------------------------------------- rank


def rank_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the layer whose effective rank drops most, and its numerical rank."""
    layers = [k.split("/", 2)[2] for k in data.results or {} if k.startswith("rank/effective/")]
    if not layers:
        return "No layer's feature rank was recorded."

    def rel_drop(layer: str) -> float:
        v = data.get(f"effective/{layer}")
        return (v.max() - v[-1]) / max(v.max(), 1e-12)

    layer = max(layers, key=rel_drop)
    v = data.get(f"effective/{layer}")
    d = drop_step(data.steps, v)
    first = (
        f"The effective rank of {figures.hook_name(layer)} goes from {v[0]:.1f} to {v[-1]:.1f} "
        f"(peak {v.max():.1f})"
        + (
            f", half-way down at step {fmt_step(d)}{_vs_grokking(rd, d)}."
            if d is not None
            else ", with no marked drop."
        )
    )
    n_layers = f"{len(layers)} layer{'s' if len(layers) > 1 else ''}"
    if data.has(f"numerical/{layer}"):
        n = data.get(f"numerical/{layer}")
        second = (
            f"Its numerical rank goes from {n[0]:.0f} to {n[-1]:.0f}; "
            f"{n_layers} analysed at {len(data.steps)} checkpoints."
        )
    else:
        second = f"{n_layers} analysed at {len(data.steps)} checkpoints."
    return f"{first} {second}"


@register_section(
    "rank",
    "Feature rank",
    "rank",
    "Fan et al. 2024 (Deep grokking: would deep neural networks generalize better?): the rank of "
    "each layer's features drops as the network generalises.",
    order=20,
)
def _rank_section(rd: RunData) -> Rendered:
    data = rd.analysis("rank")
    fig = figures.rank_figure(data.results, rd.metrics, kind="both")
    return [fig], rank_reading(data, rd)


# ----------------------------------------------------------------------------- complexity


def complexity_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: descent → ascent → second descent of LC around training points
    (Humayun et al. 2024), then the final LC of test vs random points."""
    sets = [x for x in ("train", "test", "random") if data.has(f"{x}/mean")]
    if not sets:
        return "No local-complexity series was recorded."
    main = sets[0]
    ph = complexity_phases(data.steps, data.get(f"{main}/mean"))
    parts = []
    if ph["descent"]:
        parts.append(
            f"falls to {ph['first_min_value']:.2f} by step {fmt_step(ph['first_min_step'])}"
        )
    if ph["ascent"]:
        parts.append(f"rises to {ph['peak_value']:.2f} at step {fmt_step(ph['peak_step'])}")
    if ph["second_descent"]:
        parts.append(
            f"falls again to {ph['second_min_value']:.2f} by step {fmt_step(ph['second_min_step'])}"
            + _vs_grokking(rd, ph["second_min_step"])
        )
    lead = f"Local complexity around {main} points (neurons whose sign changes in a small neighbourhood)"
    if parts:
        first = f"{lead} starts at {ph['start_value']:.2f}, " + ", then ".join(parts) + "."
    else:
        first = f"{lead} stays near {ph['start_value']:.2f} over the run."
    finals = ", ".join(f"{x} {data.get(f'{x}/mean')[-1]:.2f}" for x in sets)
    second = f"At the last checkpoint the mean local complexity is {finals}."
    return f"{first} {second}"


@register_section(
    "complexity",
    "Local complexity",
    "complexity",
    "Humayun et al. 2024 (Deep networks always grok and here is why): the density of linear-region "
    "boundaries around data points descends, ascends, then descends again as the network groks.",
    order=21,
)
def _complexity_section(rd: RunData) -> Rendered:
    data = rd.analysis("complexity")
    fig = figures.complexity_figure(data.results, rd.metrics)
    return [fig], complexity_reading(data, rd)


# ----------------------------------------------------------------------------- norms


def _norm_layers(data: AnalysisData) -> list[int]:
    out = []
    for k in data.results or {}:
        if k.startswith("norms/final_sparse_l2/"):
            tail = k.rsplit("/", 1)[1]
            if tail.isdigit():
                out.append(int(tail))
    return sorted(out)


def norms_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the norms of the final sparse subnetwork and of the rest over training,
    then how k evolves (Merrill et al. 2023)."""
    layers = _norm_layers(data)
    if not layers:
        return "No MLP layer's subnetwork norms were recorded."
    i = layers[0]
    sp, de = data.get(f"final_sparse_l2/{i}"), data.get(f"final_dense_l2/{i}")
    kf = int(data.get(f"final_k/{i}")[-1]) if data.has(f"final_k/{i}") else None
    if kf is not None and kf < 0:  # the final model is at chance: no subnetwork reproduces it
        kf = None
    first = (
        f"In MLP layer {i}, the final sparse subnetwork"
        + (f" (the top {kf} neurons that reproduce the train accuracy)" if kf is not None else "")
        + f" changes its L2 norm from {sp[0]:.3g} to {sp[-1]:.3g}, while the rest goes from "
        f"{de[0]:.3g} to {de[-1]:.3g}."
    )
    defined = data.get(f"k/{i}") >= 0 if data.has(f"k/{i}") else None
    if defined is not None and defined.any():  # k = -1: the model is at chance there
        k, steps = data.get(f"k/{i}")[defined], data.steps[defined]
        j = int(k.argmax())
        second = (
            f"The smallest reproducing top-k goes from {k[0]:.0f} (step {fmt_step(steps[0])}) to "
            f"{k[-1]:.0f} neurons (largest {k[j]:.0f} at step {fmt_step(steps[j])}; undefined "
            f"at {int((~defined).sum())} checkpoints where the model is at chance)."
        )
    else:
        second = f"Norms were measured at {len(data.steps)} checkpoints."
    return f"{first} {second}"


@register_section(
    "norms",
    "Sparse and dense subnetworks",
    "norms",
    "Merrill et al. 2023 (A tale of two circuits: grokking as competition of sparse and dense "
    "subnetworks): the sparse subnetwork that generalises grows in norm while the dense one decays.",
    order=22,
)
def _norms_section(rd: RunData) -> Rendered:
    data = rd.analysis("norms")
    figs = [figures.norms_figure(data.results, rd.metrics, layer=i) for i in _norm_layers(data)[:3]]
    return figs, norms_reading(data, rd)


# ----------------------------------------------------------------------------- robustness


def robustness_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences on adversarial (PGD) accuracy over training (Humayun et al. 2024)."""
    acc = data.get("accuracy")
    eps = data.get("eps")[0] if data.has("eps") else list(range(acc.shape[1]))
    j = max(range(len(eps)), key=lambda i: eps[i])
    a = acc[:, j]
    half = _half_way(data.steps, a)
    first = (
        f"Accuracy under L∞ PGD with ε = {eps[j]:g} goes from {fmt_pct(a[0])} to {fmt_pct(a[-1])}"
        + (
            f", half-way at step {fmt_step(half)}{_vs_grokking(rd, half)}."
            if half is not None
            else "."
        )
    )
    clean = data.get("clean_accuracy")[-1] if data.has("clean_accuracy") else None
    finals = ", ".join(f"ε={e:g}: {fmt_pct(acc[-1, i])}" for i, e in enumerate(eps))
    second = f"At the last checkpoint: {finals}" + (
        f" (clean {fmt_pct(clean)})." if clean is not None else "."
    )
    return f"{first} {second}"


@register_section(
    "robustness",
    "Adversarial robustness",
    "robustness",
    "Humayun et al. 2024 (Deep networks always grok and here is why): robustness to adversarial "
    "perturbations emerges late in training, after generalisation ('delayed robustness').",
    order=23,
)
def _robustness_section(rd: RunData) -> Rendered:
    data = rd.analysis("robustness")
    fig = figures.robustness_figure(data.results, rd.metrics)
    return [fig], robustness_reading(data, rd)
