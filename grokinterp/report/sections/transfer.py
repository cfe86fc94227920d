"""The GrokTransfer section (Xu, Ni, Wang, Hu 2025): what a target inherits from the weak model's
embedding E_W; in a comparison (e.g. transfer vs random-A) both runs on shared axes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grokinterp.analysis.transfer import transfer_summary
from grokinterp.report.figures import transfer as figures
from grokinterp.report.sections.base import (
    Rendered,
    RunData,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = ["transfer_reading"]

N_PERM = 2000  # permutations of the key-frequency overlap test (enough for a report's p-value)


def _summary(rd: RunData) -> dict[str, Any]:
    results = dict(rd.analysis("transfer").results or {})
    return transfer_summary(rd.run, results, level=rd.threshold, n_perm=N_PERM)


def transfer_reading(summary: Mapping[str, Any], threshold: float) -> str:
    """Two sentences on what a GrokTransfer target inherits from the weak embedding E_W
    (key-frequency overlap against its permutation baseline, then energy in K_W and CKA), from
    :func:`grokinterp.analysis.transfer.transfer_summary` at accuracy ``threshold``; for a
    vector-input mlp (no Fourier structure) the subspace measures between E_W and the target's
    first layer instead."""
    s = summary
    at = f"step {fmt_step(s['analysis_step'])}" + (
        ""
        if s["generalized"]
        else f" (the last checkpoint; it never reaches {fmt_pct(threshold)} test accuracy)"
    )
    if not s.get("fourier", True):
        signal = (
            f" Its energy on the signal coordinates x₁, x₂ goes from {s['signal_energy_init']:.2f}"
            f" to {s['signal_energy']:.2f} (E_W: {s['weak_signal_energy']:.2f})."
            if "signal_energy" in s
            else ""
        )
        return (
            f"At {at}, {s['subspace_energy']:.2f} of the target first layer's energy lies in "
            f"span(E_W) ({s['subspace_energy_init']:.2f} at initialisation) and linear CKA with "
            f"E_W is {s['cka']:.2f} ({s['cka_init']:.2f}); vector inputs have no Fourier "
            f"spectra.{signal}"
        )
    first = (
        f"At {at} the target's key frequencies are {', '.join(map(str, s['target_keys'])) or 'none'}"
        f" and the weak embedding's {', '.join(map(str, s['weak_keys'])) or 'none'}: an overlap of "
        f"{s['overlap']:.2f} against {s['overlap_baseline']:.2f} by chance (p = {s['overlap_p_value']:.2g})."
    )
    second = (
        f"The share of the target's Fourier energy in E_W's key frequencies goes from "
        f"{s['energy_in_weak_keys_init']:.2f} at initialisation to {s['energy_in_weak_keys']:.2f} "
        f"(chance {s['energy_chance']:.2f}), and linear CKA with E_W from {s['cka_init']:.2f} to {s['cka']:.2f}."
    )
    return f"{first} {second}"


def _overlay(rds: Sequence[RunData]) -> Rendered:
    """Comparison (e.g. transfer vs random-A): accuracy curves and the share of energy E_W
    explains, over training."""
    thr = rds[0].threshold
    curves = figures.comparison_curves_figure({rd.label: rd.metrics for rd in rds}, level=thr)
    datas = [rd.analysis("transfer") for rd in rds]
    fourier = all(d.has("energy_in_weak_keys") for d in datas)
    key = "energy_in_weak_keys" if fourier else "subspace_energy"
    share = figures.transfer_share_figure(
        {rd.label: (d.steps, d.get(key)) for rd, d in zip(rds, datas, strict=True)}, fourier
    )
    parts = []
    for rd in rds:
        s = _summary(rd)
        if fourier:
            parts.append(f"{rd.label} {s['overlap']:.2f} (chance {s['overlap_baseline']:.2f})")
        else:
            parts.append(f"{rd.label} {s['subspace_energy']:.2f}")
    gen = "; ".join(f"{rd.label} {fmt_step(rd.generalize_step)}" for rd in rds)
    lead = (
        "Overlap of the target's key frequencies with E_W's"
        if fourier
        else f"Share of the target first layer's energy in span(E_W) at {fmt_pct(thr)} test "
        "accuracy (or last)"
    )
    reading = f"{lead}: {'; '.join(parts)}. Test accuracy reaches {fmt_pct(thr)} at steps: {gen}."
    return [curves, share], reading


@register_section(
    "transfer",
    "GrokTransfer",
    "transfer",
    "Xu, Ni, Wang, Hu 2025 (Let me grok for you: accelerating grokking via embedding transfer "
    "from a weaker model): the target inherits the weak model's key frequencies.",
    order=40,
    overlay=_overlay,
)
def _transfer_section(rd: RunData) -> Rendered:
    r = rd.analysis("transfer").results
    summary = _summary(rd)
    reading = transfer_reading(summary, rd.threshold)
    if not summary["fourier"]:  # vector inputs (mlp on XOR-cluster data): subspaces only
        return [figures.transfer_subspace_figure(r)], reading
    figs = [
        figures.transfer_spectra_figure(r, at=summary["analysis_step"]),
        figures.transfer_spectrum_heatmap(r),
        figures.target_spectrum_slider(r),
        figures.transfer_overlap_figure(r),
        figures.transfer_subspace_figure(r),
    ]
    return figs, reading
