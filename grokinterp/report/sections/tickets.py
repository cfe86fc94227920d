"""The grokking-tickets section (Minegishi et al. 2023): how the magnitude mask settles on the
final ticket over training, and the mask similarity between checkpoints."""

from __future__ import annotations

import numpy as np

from grokinterp.analysis.curves import first_crossing
from grokinterp.analysis.tickets import jaccard_matrix
from grokinterp.report.figures import tickets as figures
from grokinterp.report.sections.base import (
    AnalysisData,
    Rendered,
    RunData,
    fmt_pct,
    fmt_step,
    register_section,
)

__all__ = ["tickets_reading"]

MAX_MATRIX_STEPS = 40  # checkpoints in the all-pairs similarity heatmap


def tickets_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: when the magnitude mask settles on the final ticket, and how far it moves
    from the initial mask (Minegishi et al. 2023)."""
    j = data.get("jaccard_ref")
    steps = data.steps
    sparsity = data.params.get("sparsity", 0.6)
    at90 = first_crossing(steps, j, 0.9)
    t_gen = rd.generalize_step
    first = (
        f"The magnitude mask keeping {fmt_pct(1 - float(sparsity))} of the weights overlaps the "
        f"final ticket with Jaccard {j[0]:.2f} at initialisation"
        + (
            f" and reaches 0.9 at step {fmt_step(at90)}"
            + (
                f" (test accuracy reaches {fmt_pct(rd.threshold)} at step {fmt_step(t_gen)})"
                if t_gen
                else ""
            )
            + "."
            if at90 is not None
            else f" and {j[-1]:.2f} at the end."
        )
    )
    if data.has("jaccard_init"):
        ji = data.get("jaccard_init")
        chance = data.get("jaccard_random")[-1] if data.has("jaccard_random") else None
        second = f"Its overlap with the initial mask falls to {ji[-1]:.2f}" + (
            f" (chance level {chance:.2f})." if chance is not None else "."
        )
    else:
        second = f"Masks were compared at {len(steps)} checkpoints."
    return f"{first} {second}"


@register_section(
    "tickets",
    "Grokking tickets",
    "tickets",
    "Minegishi et al. 2023 (Bridging lottery ticket and grokking): the magnitude mask of the "
    "generalising network (the 'grokking ticket') forms during the grokking window.",
    order=30,
)
def _tickets_section(rd: RunData) -> Rendered:
    data = rd.analysis("tickets")
    steps = data.steps
    figs = [
        figures.ticket_similarity_figure(
            steps,
            data.get("jaccard_ref"),
            data.get("jaccard_init") if data.has("jaccard_init") else None,
            data.get("jaccard_random") if data.has("jaccard_random") else None,
        )
    ]
    if data.has("bits") and data.has("n_entries"):
        n = min(len(steps), MAX_MATRIX_STEPS)
        idx = np.unique(np.linspace(0, len(steps) - 1, n).round().astype(int))
        mat = jaccard_matrix(data.results["tickets/bits"][idx], int(data.get("n_entries")[0]))
        figs.append(
            figures.mask_similarity_figure(
                steps[idx], mat, title="Mask similarity between checkpoints (Jaccard)"
            )
        )
    return figs, tickets_reading(data, rd)
