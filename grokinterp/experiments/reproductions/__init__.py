"""Every seed paper's headline effect, one command each, with an honest verdict (issue 17):
``grokinterp reproduce PAPER|all --size cpu|paper``.

``PAPERS`` maps a key to its :class:`~grokinterp.experiments.reproductions.base.Paper`, in the
order ``reproduce all`` runs them (and a time budget cuts them): the order of priority for a
scarce GPU. Each module's docstring gives the setting of both sizes, what differs from the
paper, and the estimated GPU minutes of its ``paper`` size (about 13.5 in all on one H200).
"""

from __future__ import annotations

from grokinterp.experiments.reproductions import (
    fan2024,
    humayun2024,
    lee2024,
    liu2022,
    merrill2023,
    minegishi2024,
    nanda2023,
    xu2024,
)
from grokinterp.experiments.reproductions.base import (
    SIZES,
    STATUSES,
    Context,
    Paper,
    Setting,
    Verdict,
)
from grokinterp.experiments.reproductions.runner import ReproduceResult, plan, reproduce
from grokinterp.experiments.reproductions.table import PaperOutcome, verdicts_markdown

PAPERS: dict[str, Paper] = {
    m.PAPER.key: m.PAPER
    for m in (
        nanda2023,
        minegishi2024,
        lee2024,
        xu2024,
        fan2024,
        humayun2024,
        liu2022,
        merrill2023,
    )
}

__all__ = [
    "PAPERS",
    "SIZES",
    "STATUSES",
    "Context",
    "Paper",
    "PaperOutcome",
    "ReproduceResult",
    "Setting",
    "Verdict",
    "plan",
    "reproduce",
    "verdicts_markdown",
]
