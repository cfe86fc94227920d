"""The report's sections, one module per topic, each drawing its figures with the matching
``grokinterp.report.figures.<topic>`` module:

- :mod:`.training` — accuracy, loss, weight norm (from ``metrics.jsonl``);
- :mod:`.fourier` — the Fourier circuit (Nanda et al. 2023);
- :mod:`.dynamics` — feature rank, local complexity, sparse/dense subnetworks, robustness;
- :mod:`.tickets` — grokking tickets (Minegishi et al. 2023);
- :mod:`.transfer` — GrokTransfer (Xu et al. 2025);
- :mod:`.generic` — any other cached analysis (its scalar series).

:mod:`.base` holds what they share (loaded analyses, the registry, formatting) and
:mod:`.render` renders them; importing this package registers every section.
"""

from grokinterp.report.sections import (  # noqa: F401  (each registers its sections)
    dynamics,
    fourier,
    tickets,
    training,
    transfer,
)
from grokinterp.report.sections.base import (
    SECTIONS,
    AnalysisData,
    Rendered,
    RunData,
    Section,
    SectionResult,
    analyze_command,
    fmt_num,
    fmt_pct,
    fmt_step,
    load_analysis,
    register_section,
)
from grokinterp.report.sections.render import render_section, render_sections

__all__ = [
    "SECTIONS",
    "AnalysisData",
    "Rendered",
    "RunData",
    "Section",
    "SectionResult",
    "analyze_command",
    "fmt_num",
    "fmt_pct",
    "fmt_step",
    "load_analysis",
    "register_section",
    "render_section",
    "render_sections",
]
