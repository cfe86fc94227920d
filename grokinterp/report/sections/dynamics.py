"""The training-dynamics sections: feature rank (Fan et al. 2024), local complexity and adversarial
robustness (Humayun et al. 2024), sparse and dense subnetworks (Merrill et al. 2023).

Each reading places the measure's turning point (from :mod:`grokinterp.analysis.curves`) against
the midpoint of the test-accuracy jump; layers are named by their TransformerLens hooks.
"""

from __future__ import annotations

from grokinterp.analysis.curves import complexity_phases, transition_step
from grokinterp.report.figures import dynamics as figures
from grokinterp.report.sections.base import (
    AnalysisData,
    Rendered,
    RunData,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = [
    "complexity_reading",
    "norms_reading",
    "rank_reading",
    "robustness_reading",
    "rqi_reading",
    "slingshot_reading",
]


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


def _rank_summary(data: AnalysisData, rd: RunData) -> dict:
    from grokinterp.analysis.rank import rank_summary

    assert data.results is not None
    results = {k[len("rank/") :]: v for k, v in data.results.items() if k.startswith("rank/")}
    results["steps"] = data.results["steps"]
    return rank_summary(rd.run, results, metrics=rd.metrics)


def rank_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the layer whose effective rank falls most *around generalisation* (the
    window of :func:`~grokinterp.analysis.curves.generalization_window`, so a fall during
    memorisation is not read as Fan et al.'s drop), then the layers whose rank is pinned by the
    rank of the input data (they cannot drop), or the layer's numerical rank."""
    layers = [k.split("/", 2)[2] for k in data.results or {} if k.startswith("rank/effective/")]
    if not layers:
        return "No layer's feature rank was recorded."
    s = _rank_summary(data, rd)
    order = s["layers"]
    win = s["generalization_window"]
    fracs = s["drop_fraction_near_generalization"]
    if win is None:
        j = max(
            range(len(order)),
            key=lambda i: s["effective_rank_max"][i] - s["effective_rank_final"][i],
        )
        d = s["rank_drop_step"][j]
        first = (
            f"The run does not generalise, so there is no drop with generalisation to find; the "
            f"effective rank of {figures.hook_name(order[j])} goes from "
            f"{s['effective_rank_start'][j]:.1f} to {s['effective_rank_final'][j]:.1f}"
            + (f", its largest fall half-way at step {fmt_step(d)}." if d is not None else ".")
        )
        j_main = j
    else:
        j_main = max(range(len(order)), key=lambda i: fracs[i])
        d = s["drop_step_near_generalization"][j_main]
        span = f"steps {fmt_step(win[0])}–{fmt_step(win[1])}"
        if d is not None:
            first = (
                f"Around generalisation ({span}; test accuracy reaches the threshold at step "
                f"{fmt_step(s['generalize_step'])}), the effective rank of "
                f"{figures.hook_name(order[j_main])} falls by {fmt_pct(fracs[j_main])}, half-way "
                f"at step {fmt_step(d)}{_vs_grokking(rd, d)}."
            )
        else:
            early = [x for x in s["rank_drop_step"] if x is not None and x < win[0]]
            first = f"No layer's effective rank falls around generalisation ({span})" + (
                f"; the falls of the run are during memorisation (by step {fmt_step(max(early))})."
                if early
                else "."
            )
    pinned = s["cannot_drop"]
    if pinned:
        k = order.index(pinned[0])
        second = (
            f"The rank of {', '.join(figures.hook_name(x) for x in pinned)} is pinned at "
            f"{s['rank_cap'][k]}, the rank of the input data (width {s['layer_width'][k]}): "
            "it cannot drop, so only later layers can show the drop."
        )
    elif data.has(f"numerical/{order[j_main]}"):
        n = data.get(f"numerical/{order[j_main]}")
        cap = s["rank_cap"][j_main]
        second = (
            f"Its numerical rank goes from {n[0]:.0f} to {n[-1]:.0f}"
            + (f" (at most {cap}: {s['cap_source'][j_main]})" if cap is not None else "")
            + f"; {len(order)} layers analysed at {len(data.steps)} checkpoints."
        )
    else:
        second = f"{len(order)} layers analysed at {len(data.steps)} checkpoints."
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


# ----------------------------------------------------------------------------- rqi


def rqi_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the ring RQI's rise (Liu et al. 2022) against generalisation, then the
    linear RQI and the ring plane's share of the embedding's variance."""
    from grokinterp.analysis.curves import half_rise_step
    from grokinterp.analysis.rqi import random_circular_rqi

    if not data.has("circular"):
        return "No representation quality index was recorded."
    c = data.get("circular")
    half = half_rise_step(data.steps, c) if len(c) > 1 else None
    first = (
        f"The ring RQI (parallelograms i + j ≡ m + n realised by the embedding's circle) goes "
        f"from {c[0]:.2f} to {c[-1]:.2f} (unstructured: {random_circular_rqi():.2f})"
        + (
            f", half-way up at step {fmt_step(half)}{_vs_grokking(rd, half)}."
            if half is not None
            else "."
        )
    )
    parts = []
    if data.has("linear"):
        parts.append(f"the paper's linear RQI (integer sums) ends at {data.get('linear')[-1]:.2f}")
    if data.has("plane_variance"):
        parts.append(
            f"the ring's plane holds {fmt_pct(data.get('plane_variance')[-1])} of the "
            "embedding's variance"
        )
    second = ("At the last checkpoint " + " and ".join(parts) + ".") if parts else ""
    return f"{first} {second}".strip()


@register_section(
    "rqi",
    "Representation quality",
    "rqi",
    "Liu et al. 2022 (Towards understanding grokking: an effective theory of representation "
    "learning): generalisation comes with a structured embedding, in which a + b = c + d implies "
    "E_a + E_b ≈ E_c + E_d (for modular addition: a ring on which addition is a rotation).",
    order=24,
)
def _rqi_section(rd: RunData) -> Rendered:
    from grokinterp.analysis.rqi import random_circular_rqi

    data = rd.analysis("rqi")
    fig = figures.rqi_figure(data.results, rd.metrics, baseline=random_circular_rqi())
    return [fig], rqi_reading(data, rd)


# ----------------------------------------------------------------------------- slingshot


def slingshot_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the training-loss spikes (Thilak et al. 2022) and where generalisation
    falls among them, then the last-layer norm's growth before them."""
    from grokinterp.analysis.slingshot import slingshot_summary

    assert data.results is not None
    results = {
        k[len("slingshot/") :]: v for k, v in data.results.items() if k.startswith("slingshot/")
    }
    results["steps"] = data.results["steps"]
    s = slingshot_summary(_MetricsRun(rd), results)
    n = s["n_spikes"]
    norm = f"the last-layer norm ‖W_U‖ goes from {s['last_layer_norm_start']:.3g} to {s['last_layer_norm_final']:.3g}"
    if n == 0:
        return f"The training loss has no spike (no Slingshot); {norm}."
    steps = ", ".join(fmt_step(t) for t in s["spike_steps"][:6]) + ("…" if n > 6 else "")
    gen, before = s["generalize_step"], s["spike_before_generalization"]
    first = f"The training loss spikes {n} time{'s' if n > 1 else ''} (steps {steps})" + (
        f"; test accuracy reaches the threshold at step {fmt_step(gen)}, "
        + (
            f"{fmt_step(gen - before)} steps after the spike at step {fmt_step(before)}."
            if before is not None
            else "before any spike."
        )
        if gen is not None
        else "; the run does not generalise."
    )
    growth = [g for g in s["norm_growth_before_spike"] if g is not None]
    grew = sum(g > 1 for g in growth)
    second = (
        f"Before {grew} of {len(growth)} spikes the last-layer norm had grown since the previous "
        f"one (Thilak et al.'s Slingshot cycle); {norm}."
        if growth
        else f"{norm[0].upper()}{norm[1:]}."
    )
    return f"{first} {second}"


class _MetricsRun:
    """What :func:`~grokinterp.analysis.slingshot.slingshot_summary` reads of a run: its
    metrics (the report's own copy) and its steps."""

    def __init__(self, rd: RunData):
        self.metrics = rd.metrics
        self.steps = list(rd.run.steps) if rd.run is not None else []


@register_section(
    "slingshot",
    "Loss spikes (Slingshot)",
    "slingshot",
    "Thilak et al. 2022 (The Slingshot mechanism): with adaptive optimizers, the last layer's "
    "norm grows, the training loss spikes, and grokking happens at the onset of such a cycle.",
    order=25,
)
def _slingshot_section(rd: RunData) -> Rendered:
    from grokinterp.analysis.slingshot import loss_spikes

    data = rd.analysis("slingshot")
    rows = [m for m in rd.metrics if m.get("train_loss") is not None]
    spikes = loss_spikes([m["step"] for m in rows], [m["train_loss"] for m in rows]) if rows else []
    fig = figures.slingshot_figure(data.results, rd.metrics, [sp.step for sp in spikes])
    return [fig], slingshot_reading(data, rd)
