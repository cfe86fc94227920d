"""Analyses: pure functions on tensors, plus ``over_training`` mapping them over a run (DESIGN §5).

One analysis = one module that registers ``Analysis(name, factory, applies, summarize)``
(:mod:`grokinterp.analysis.registry`); importing this package registers every analysis.
"""

from grokinterp.analysis import (  # noqa: F401  (each module registers its analysis)
    complexity,
    fourier_progress,
    norms,
    rank,
    robustness,
    tickets,
    transfer,
)
from grokinterp.analysis.registry import (
    ANALYSES,
    Measure,
    Results,
    applicable,
    over_training,
    register_analysis,
)

__all__ = ["ANALYSES", "Measure", "Results", "applicable", "over_training", "register_analysis"]
