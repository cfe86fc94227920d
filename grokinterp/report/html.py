"""The self-contained HTML report of one run, or a comparison of several.

The page (:mod:`grokinterp.report.page`, from the template ``templates/report.html.j2``) has

1. a header: task, model, training configuration, versions, seed, wall time, hardware;
2. a summary card: when the run fit its training set and when it generalised (the first evaluated
   steps with train / test accuracy ≥ the threshold, :func:`grokinterp.analysis.curves.grok_times`,
   95 % by default), the delay between them and the final accuracies;
3. one section per analysis (:mod:`grokinterp.report.sections`), each with figures and a
   two-sentence reading computed from the data, or the command that computes it.

``summary.json`` (machine-readable headline numbers and section statuses) is written beside the
HTML file: ``summary.json`` for ``report.html``, ``<stem>.summary.json`` for any other name.
Static exports (PDF, PNG) are in :mod:`grokinterp.report.export`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokinterp.config import GrokinterpError
from grokinterp.report.export import CHROMIUM_FLAGS, export_pdf, export_pngs, find_chromium
from grokinterp.report.figures._style import report_template
from grokinterp.report.page import PLOTLY_CONFIG, plotly_cdn_url, render_page
from grokinterp.report.sections import RunData, SectionResult, render_sections
from grokinterp.report.summary import (
    DEFAULT_THRESHOLD,
    check_threshold,
    report_summary,
    run_summary,
    write_summary,
)
from grokinterp.store import Run, atomic_write_text

__all__ = [
    "CHROMIUM_FLAGS",
    "PLOTLY_CONFIG",
    "ReportResult",
    "build_report",
    "default_output",
    "export_pdf",
    "export_pngs",
    "find_chromium",
    "open_runs",
    "plotly_cdn_url",
    "summary_path_for",
]


@dataclass
class ReportResult:
    """Where the report went and what it holds."""

    html_path: Path
    summary_path: Path
    size_bytes: int
    sections: list[SectionResult]
    summary: dict[str, Any]
    n_figures: int
    light: bool

    def status_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sections:
            out[s.status] = out.get(s.status, 0) + 1
        return out


def open_runs(runs: Sequence[str | Path | Run]) -> list[Run]:
    """Open run directories (or pass Runs through); a bad path raises a GrokinterpError."""
    if isinstance(runs, str | Path | Run):
        runs = [runs]
    if not runs:
        raise GrokinterpError("runs is empty; give at least one run directory")
    return [r if isinstance(r, Run) else Run.open(r) for r in runs]


def _labels(runs: Sequence[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    # Same directory names (e.g. seeds/0/run, seeds/1/run): use the last two path parts.
    labels = [f"{r.path.parent.name}/{r.name}" for r in runs]
    return labels if len(set(labels)) == len(labels) else [str(r.path) for r in runs]


def default_output(runs: Sequence[Run]) -> Path:
    """``RUN/report.html`` for one run; ``<parent of first>/compare-<a>-<b>….html`` for several."""
    if len(runs) == 1:
        return runs[0].path / "report.html"
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", r.name) for r in runs)[:80]
    return runs[0].path.parent / f"compare-{slug}.html"


def summary_path_for(html_path: str | Path) -> Path:
    html_path = Path(html_path)
    name = "summary.json" if html_path.stem == "report" else f"{html_path.stem}.summary.json"
    return html_path.with_name(name)


def build_report(
    runs: Sequence[str | Path | Run] | str | Path | Run,
    out: str | Path | None = None,
    *,
    light: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    recompute: bool = True,
    only: Sequence[str] | None = None,
    title: str | None = None,
) -> ReportResult:
    """Write the HTML report of one run (or a comparison of several) and ``summary.json``.

    Args:
        runs: run directories (or Runs); two or more make a comparison report, overlaying the
            runs on shared axes (their step grids may differ).
        out: the HTML file (default ``RUN/report.html``; see :func:`default_output`).
        light: link plotly.js from its CDN instead of embedding it (not offline).
        threshold: accuracy defining ``fit_step`` / ``generalize_step`` everywhere in the report
            (default :data:`grokinterp.analysis.curves.DEFAULT_THRESHOLD`, 0.95).
        recompute: recompute a corrupt analysis cache (else the section reports it).
        only: restrict to these section keys (default: all).
        title: page title (default from the run names).
    """
    threshold = check_threshold(threshold)
    opened = open_runs(runs if not isinstance(runs, str | Path | Run) else [runs])
    labels = _labels(opened)
    rds = [
        RunData(r, lab, run_summary(r, threshold), recompute=recompute)
        for r, lab in zip(opened, labels, strict=True)
    ]
    out = Path(out) if out is not None else default_output(opened)
    if out.suffix.lower() not in (".html", ".htm"):
        raise GrokinterpError(f"out={str(out)!r} is not valid; allowed: a path ending in .html")
    if out.exists() and out.is_dir():
        raise GrokinterpError(f"out={str(out)!r} is a directory; give a .html file name")
    title = title or (
        f"grokinterp report — {labels[0]}"
        if len(rds) == 1
        else f"grokinterp comparison — {' vs '.join(labels)}"
    )
    with report_template():  # the report's template as plotly's default: free per figure
        sections = render_sections(rds, only=only)
        page, n_figures = render_page(rds, sections, threshold, title, light)
    atomic_write_text(out, page)
    sec_status = {
        s.key: {"title": s.title, "status": s.status, "reading": s.reading, "notes": s.notes}
        for s in sections
    }
    summary = report_summary(opened, threshold, sections=sec_status, report_path=out)
    summary["report_bytes"] = out.stat().st_size
    summary["light"] = light
    spath = write_summary(summary_path_for(out), summary)
    return ReportResult(out, spath, out.stat().st_size, sections, summary, n_figures, light)
