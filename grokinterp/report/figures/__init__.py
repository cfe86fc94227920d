"""Plotly figures, one module per topic; each function takes arrays/dicts (e.g. the output of
``over_training``) and returns a ``plotly.graph_objects.Figure``."""

from grokinterp.report.figures.dynamics import (
    complexity_figure,
    dynamics_figure,
    hook_name,
    norms_figure,
    rank_figure,
    robustness_figure,
)
from grokinterp.report.figures.fourier import (
    embedding_norms_slider,
    fourier_gini_figure,
    fourier_loss_figure,
    fourier_spectrum_figure,
    gini_comparison_figure,
    neuron_fraction_heatmap,
    neuron_frequency_figure,
)
from grokinterp.report.figures.generic import series_figure
from grokinterp.report.figures.sweep import (
    delay_heatmap_figure,
    phase_diagram_figure,
    phase_table_figure,
    sweep_curves_figure,
)
from grokinterp.report.figures.tickets import (
    mask_density_figure,
    mask_similarity_figure,
    ticket_curves_figure,
    ticket_similarity_figure,
)
from grokinterp.report.figures.training import (
    accuracy_figure,
    checkpoint_slider_figure,
    loss_figure,
    norm_trajectory_figure,
    weight_norm_figure,
)
from grokinterp.report.figures.transfer import (
    comparison_curves_figure,
    lu_figure,
    target_spectrum_slider,
    transfer_overlap_figure,
    transfer_share_figure,
    transfer_spectra_figure,
    transfer_spectrum_heatmap,
    transfer_subspace_figure,
)

__all__ = [
    "accuracy_figure",
    "checkpoint_slider_figure",
    "comparison_curves_figure",
    "complexity_figure",
    "delay_heatmap_figure",
    "dynamics_figure",
    "embedding_norms_slider",
    "fourier_gini_figure",
    "fourier_loss_figure",
    "fourier_spectrum_figure",
    "gini_comparison_figure",
    "hook_name",
    "loss_figure",
    "lu_figure",
    "mask_density_figure",
    "mask_similarity_figure",
    "neuron_fraction_heatmap",
    "neuron_frequency_figure",
    "norm_trajectory_figure",
    "norms_figure",
    "phase_diagram_figure",
    "phase_table_figure",
    "rank_figure",
    "robustness_figure",
    "series_figure",
    "sweep_curves_figure",
    "target_spectrum_slider",
    "ticket_curves_figure",
    "ticket_similarity_figure",
    "transfer_overlap_figure",
    "transfer_share_figure",
    "transfer_spectra_figure",
    "transfer_spectrum_heatmap",
    "transfer_subspace_figure",
    "weight_norm_figure",
]
