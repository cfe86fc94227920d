"""Rendering the sections for one run or a comparison, never raising.

Every registered section is rendered in order, then a generic section for each registered or
cached analysis without a dedicated one. A section whose analysis is missing for every run takes
that status (a corrupt cache: "error"); missing for some runs: "partial"; any exception while
rendering becomes an *error* entry in that section only.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import plotly.graph_objects as go

from grokinterp.analysis.registry import ANALYSES
from grokinterp.config import GrokinterpError
from grokinterp.report.sections.base import (
    SECTIONS,
    AnalysisData,
    RunData,
    Section,
    SectionResult,
)
from grokinterp.report.sections.generic import generic_section

__all__ = ["render_section", "render_sections"]


def _titled(fig: go.Figure, label: str) -> go.Figure:
    title = fig.layout.title.text or ""
    fig.update_layout(title=f"{label}: {title}" if title else label)
    return fig


def _status_note(rd: RunData, data: AnalysisData, multi: bool) -> str:
    who = f"{rd.label}: " if multi else ""
    if data.status == "not computed":
        return f"{who}not computed; compute it with `{data.command}`"
    if data.status == "not applicable":
        return f"{who}does not apply to this run: {data.message}"
    if data.status == "corrupt":
        return f"{who}{data.message}; recompute it with `{data.command}`"
    return f"{who}{data.message}"


def render_section(section: Section, runs: Sequence[RunData]) -> SectionResult:
    """Render one section for one or several runs, never raising."""
    res = SectionResult(section.key, section.title, "ok", description=section.description)
    multi = len(runs) > 1
    ready = list(runs)
    if section.analysis is not None:
        ready = []
        statuses = []
        for rd in runs:
            data = rd.analysis(section.analysis)
            statuses.append(data.status)
            if data.usable:
                ready.append(rd)
            if data.status != "ok":
                res.notes.append(_status_note(rd, data, multi))
                if data.status in ("not computed", "corrupt") and data.command:
                    res.commands.append(data.command)
        if not ready:
            for s in ("corrupt", "not computed", "not applicable", "unavailable"):
                if s in statuses:
                    res.status = "error" if s == "corrupt" else s
                    break
            return res
        if len(ready) < len(runs):
            res.status = "partial"
    try:
        if multi and section.overlay is not None:
            figs, reading = section.overlay(ready)
        else:
            figs, readings = [], []
            for rd in ready:
                f, r = section.render(rd)
                figs.extend(_titled(x, rd.label) for x in f) if multi else figs.extend(f)
                if r:
                    readings.append(f"{rd.label}: {r}" if multi else r)
            reading = " ".join(readings)
        res.figures, res.reading = list(figs), reading
    except Exception as e:  # one broken section must not take the report down
        res.status = "error"
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        res.notes.append(f"rendering failed: {tb}")
    return res


def render_sections(
    runs: Sequence[RunData], only: Sequence[str] | None = None
) -> list[SectionResult]:
    """Every registered section (in order), then a generic section for each registered or cached
    analysis without a dedicated section. ``only`` restricts to those section keys."""
    if not runs:
        raise GrokinterpError("runs is empty; give at least one run")
    chosen = sorted(SECTIONS.values(), key=lambda s: (s.order, s.key))
    if only is not None:
        unknown = set(only) - set(SECTIONS)
        if unknown:
            raise GrokinterpError(
                f"unknown section(s) {', '.join(sorted(unknown))}; available: {', '.join(SECTIONS)}"
            )
        chosen = [s for s in chosen if s.key in only]
    out = [render_section(s, runs) for s in chosen]
    if only is None:
        covered = {s.analysis for s in SECTIONS.values()}
        extra = set(ANALYSES) - covered  # every registered analysis is listed, computed or not
        for rd in runs:
            adir = rd.run.analysis_dir
            if adir.is_dir():
                extra |= {p.stem for p in adir.glob("*.safetensors")} - covered
        for name in sorted(extra):
            out.append(render_section(generic_section(name), runs))
    return out
