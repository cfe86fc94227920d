"""Analyses: pure functions on tensors, plus ``over_training`` mapping them over a run (DESIGN §5).

Importing this package registers every analysis with the driver.
"""

from grokinterp.analysis import (
    dynamics,  # noqa: F401  (registers "rank", "complexity", "norms", "robustness")
    fourier_training,  # noqa: F401  (registers "fourier")
    tickets,  # noqa: F401  (registers "tickets")
    transfer,  # noqa: F401  (registers "transfer")
)
from grokinterp.analysis.registry import ANALYSES, applicable, over_training, register_analysis

__all__ = ["ANALYSES", "applicable", "over_training", "register_analysis"]
