"""The Fourier-circuit section (Nanda et al. 2023): key frequencies, restricted / excluded loss,
the spectra of W_E and W_L over training and the per-neuron frequency map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from grokinterp.analysis.curves import half_rise_step
from grokinterp.analysis.fourier_progress import fourier_summary
from grokinterp.report.figures import fourier as figures
from grokinterp.report.sections.base import (
    Rendered,
    RunData,
    fmt_num,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = ["fourier_reading"]


def fourier_reading(results: Mapping[str, torch.Tensor]) -> str:
    """Two sentences on the Fourier progress measures (Nanda et al. 2023), from
    :func:`grokinterp.analysis.fourier_progress.fourier_summary`."""
    s = fourier_summary(dict(results))
    key = s["key_frequencies"]
    keys = ", ".join(map(str, key)) if key else "no single frequency"
    rise = s.get("embed_gini_rise_step")
    first = (
        f"The embedding concentrates on key frequencies {keys}: the Gini coefficient of its "
        f"Fourier spectrum goes from {s['embed_gini_start']:.2f} to {s['embed_gini_final']:.2f}"
        + (f", half-way up at step {fmt_step(rise)}." if rise is not None else ".")
    )
    if "excluded_rise_step" in s and s["excluded_peak_step"] <= s["excluded_rise_step"]:
        second = (
            f"Excluded loss does not rise over these checkpoints (final "
            f"{fmt_num(s['excluded_loss_final'])}), and test loss falls below half the chance "
            f"loss at step {fmt_step(s.get('test_loss_fall_step'))}."
        )
    elif "excluded_rise_step" in s:
        second = (
            f"Excluded loss rises from step {fmt_step(s['excluded_rise_step'])} (peak at step "
            f"{fmt_step(s['excluded_peak_step'])}), and restricted loss falls below half the "
            f"chance loss at step {fmt_step(s.get('restricted_loss_fall_step'))}, test loss at step "
            f"{fmt_step(s.get('test_loss_fall_step'))}."
        )
    else:
        second = (
            f"{fmt_pct(s['neurons_85_final'])} of MLP neurons end with over 85% of their variance "
            f"in one frequency, and test loss falls below half the chance loss at step {fmt_step(s.get('test_loss_fall_step'))}."
        )
    return f"{first} {second}"


def _overlay(rds: Sequence[RunData]) -> Rendered:
    datas = {rd.label: rd.analysis("fourier") for rd in rds}
    fig = figures.gini_comparison_figure({label: d.results for label, d in datas.items()})
    parts = []
    for label, d in datas.items():
        key = (d.get("key_mask")[-1].nonzero()[0] + 1).tolist() if d.has("key_mask") else []
        parts.append((label, key, half_rise_step(d.steps, d.get("embed_gini"))))
    first = (
        "Key frequencies: "
        + "; ".join(f"{lab} {', '.join(map(str, k)) or 'none'}" for lab, k, _ in parts)
        + "."
    )
    second = (
        "The embedding's Gini coefficient is half-way up at step "
        + "; ".join(f"{fmt_step(r)} in {lab}" for lab, _, r in parts)
        + "."
    )
    return [fig], f"{first} {second}"


@register_section(
    "fourier",
    "Fourier circuit",
    "fourier",
    "Nanda et al. 2023 (Progress measures for grokking via mechanistic interpretability): the "
    "network learns a few key frequencies; restricted loss (key frequencies only) falls before "
    "test loss, excluded loss (key frequencies removed) rises as the circuit forms.",
    order=10,
    overlay=_overlay,
)
def _fourier_section(rd: RunData) -> Rendered:
    data = rd.analysis("fourier")
    r = data.results
    assert r is not None
    figs = []
    if data.has("restricted_loss"):
        figs.append(figures.fourier_loss_figure(r, metrics=rd.metrics, threshold=rd.threshold))
    figs.append(figures.fourier_spectrum_figure(r, which="embed"))
    figs.append(figures.embedding_norms_slider(r))
    figs.append(figures.fourier_gini_figure(r))
    if data.has("neuron_freq"):
        figs.append(figures.neuron_frequency_figure(r))
    return figs, fourier_reading(r)
