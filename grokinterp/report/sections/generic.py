"""The section of a cached analysis without a dedicated one: its scalar series over training."""

from __future__ import annotations

import torch

from grokinterp.report.figures.generic import series_figure
from grokinterp.report.sections.base import AnalysisData, Rendered, RunData, Section, fmt_num

__all__ = ["generic_section"]


def _scalar_keys(data: AnalysisData, limit: int = 8) -> list[str]:
    assert data.results is not None
    keys = []
    for k, v in data.results.items():
        if k.startswith(data.name + "/") and v.ndim == 1 and v.dtype != torch.bool:
            keys.append(k.split("/", 1)[1])
    return keys[:limit]


def generic_section(name: str) -> Section:
    """A section for analysis ``name``: up to eight of its scalar series, and a reading of the
    first one."""

    def render(rd: RunData) -> Rendered:
        data = rd.analysis(name)
        keys = [k for k in _scalar_keys(data) if k != "step"]
        if not keys:
            return [], f"The {name} analysis has no scalar series to plot."
        fig = series_figure(
            data.steps, {k: data.get(k) for k in keys}, title=f"{name} over training"
        )
        first = data.get(keys[0])
        return [fig], (
            f"The {name} analysis was computed at {len(data.steps)} checkpoints; this version has "
            f"no dedicated reading for it. Its first series, {keys[0]}, goes from "
            f"{fmt_num(first[0])} to {fmt_num(first[-1])}."
        )

    return Section(
        name, name, name, render, None, "A cached analysis without a dedicated section.", 99
    )
