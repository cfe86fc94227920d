"""What every section shares: formatting, a run's loaded analyses, and the section registry.

A section names the analysis whose cached results it reads (``None`` for the training curves,
which come from ``metrics.jsonl``) and renders plotly figures — drawn only by
``grokinterp.report.figures.<topic>`` — plus a short plain-language *reading* computed from the
data (at most two sentences).

Loading never raises: an analysis that was never computed is *not computed* (with the command
that computes it), one that does not apply says why, a corrupt cache is recomputed
(``recompute=True``) or reported, and an analysis this version does not know is *unavailable*.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from grokinterp.analysis import registry
from grokinterp.analysis.curves import DEFAULT_THRESHOLD
from grokinterp.store import Run

__all__ = [
    "SECTIONS",
    "AnalysisData",
    "Rendered",
    "RunData",
    "Section",
    "SectionResult",
    "analyze_command",
    "as_array",
    "fmt_num",
    "fmt_pct",
    "fmt_step",
    "load_analysis",
    "register_section",
]


# ----------------------------------------------------------------------------- formatting


def fmt_step(step: float | int | None) -> str:
    """A step number with thin-space thousands separators ("1 400"); "—" for None."""
    if step is None or (isinstance(step, float) and not math.isfinite(step)):
        return "—"
    return f"{int(round(step)):,}".replace(",", "\u2009")


def fmt_pct(x: float | None, digits: int = 0) -> str:
    """A fraction as a percentage ("95%"); "—" for None or NaN."""
    if x is None or not math.isfinite(float(x)):
        return "—"
    return f"{100 * float(x):.{digits}f}%"


def fmt_num(x: float | None) -> str:
    """Three significant digits; "—" for None or NaN."""
    if x is None or not math.isfinite(float(x)):
        return "—"
    return f"{float(x):.3g}"


def analyze_command(run: Run, name: str) -> str:
    """The shell command that computes analysis ``name`` for ``run``."""
    return f"grokinterp analyze {shlex.quote(str(run.path))} --only {name}"


def as_array(x: Any) -> np.ndarray:
    """A float numpy array from a tensor, array or list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


# ----------------------------------------------------------------------------- loaded data


@dataclass
class AnalysisData:
    """One run's cached analysis: ``status`` is "ok", "regenerated", "not computed",
    "not applicable", "corrupt" or "unavailable"; ``results`` is the flat ``over_training``
    dict ("steps" and "<name>/<key>") when usable."""

    name: str
    status: str
    results: dict[str, torch.Tensor] | None = None
    message: str = ""
    command: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.results is not None

    def get(self, key: str) -> np.ndarray:
        assert self.results is not None
        return as_array(self.results[f"{self.name}/{key}"])

    def has(self, key: str) -> bool:
        return self.results is not None and f"{self.name}/{key}" in self.results

    @property
    def steps(self) -> np.ndarray:
        assert self.results is not None
        return as_array(self.results["steps"])


def load_analysis(run: Run, name: str, recompute: bool = True) -> AnalysisData:
    """Load the cached analysis ``name`` of ``run`` without ever raising.

    A corrupt cache is recomputed with the parameters recorded in its metadata (or the
    defaults) when ``recompute``; otherwise, or if that fails, it is reported.
    """
    command = analyze_command(run, name)
    if name not in registry.ANALYSES:
        return AnalysisData(
            name, "unavailable", message=f"this version of grokinterp has no {name!r} analysis"
        )
    try:
        reason = registry.ANALYSES[name].applies(run)
    except Exception as e:
        reason = f"could not decide whether it applies ({type(e).__name__}: {e})"
    if reason:
        return AnalysisData(name, "not applicable", message=reason)
    path = registry.cache_path(run, name)
    if not path.is_file():
        return AnalysisData(name, "not computed", message="not computed", command=command)
    info = registry.cache_info(run, name)
    tensors = registry.load_cached(run, name) if info is not None else None
    params: dict[str, Any] = dict(info["params"]) if info is not None else {}
    if tensors is not None:
        results = {"steps": torch.tensor(info["steps"])}
        results.update({f"{name}/{k}": v for k, v in tensors.items()})
        return AnalysisData(name, "ok", results, command=command, params=params)
    problem = f"the cache {path} is corrupt, truncated or from another version"
    if not recompute:
        return AnalysisData(name, "corrupt", message=problem, command=command + " --force")
    try:
        results = registry.over_training(run, {name: params}, progress=False, force=True)
    except Exception as e:
        return AnalysisData(
            name,
            "corrupt",
            message=f"{problem}; recomputing failed ({type(e).__name__}: {e})",
            command=command + " --force",
        )
    keep = {k: v for k, v in results.items() if k == "steps" or k.startswith(name + "/")}
    return AnalysisData(
        name,
        "regenerated",
        keep,
        message=f"{problem}; it was recomputed",
        command=command,
        params=params,
    )


@dataclass
class RunData:
    """A run in a report, with its headline numbers (``summary``: see
    :func:`grokinterp.report.summary.run_summary`) and its analyses loaded on demand."""

    run: Run
    label: str
    summary: dict[str, Any]
    recompute: bool = True
    _analyses: dict[str, AnalysisData] = field(default_factory=dict, repr=False)
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        if self._metrics is None:
            self._metrics = self.run.metrics
        return self._metrics

    @property
    def threshold(self) -> float:
        """The accuracy that defines ``fit_step`` and ``generalize_step`` in this report."""
        return float(self.summary.get("threshold", DEFAULT_THRESHOLD))

    @property
    def fit_step(self) -> int | None:
        return self.summary.get("fit_step")

    @property
    def generalize_step(self) -> int | None:
        return self.summary.get("generalize_step")

    def analysis(self, name: str) -> AnalysisData:
        if name not in self._analyses:
            self._analyses[name] = load_analysis(self.run, name, self.recompute)
        return self._analyses[name]


# ----------------------------------------------------------------------------- sections


@dataclass
class SectionResult:
    """What a section shows: status ("ok", "partial", "not computed", "not applicable",
    "unavailable", "error"), its figures, the plain-language reading and notes."""

    key: str
    title: str
    status: str
    figures: list[go.Figure] = field(default_factory=list)
    reading: str = ""
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    description: str = ""


Rendered = tuple[list[go.Figure], str]


@dataclass(frozen=True)
class Section:
    """A report section.

    ``render(rd)`` draws one run (returns figures and the reading); ``overlay(rds)``, if given,
    draws several runs on shared axes for comparison reports (otherwise each run is drawn in
    turn). ``analysis`` is the analysis name whose cache must exist (None: metrics only).
    """

    key: str
    title: str
    analysis: str | None
    render: Callable[[RunData], Rendered]
    overlay: Callable[[Sequence[RunData]], Rendered] | None = None
    description: str = ""
    order: int = 50


SECTIONS: dict[str, Section] = {}


def register_section(
    key: str,
    title: str,
    analysis: str | None,
    description: str = "",
    order: int = 50,
    overlay: Callable[[Sequence[RunData]], Rendered] | None = None,
) -> Callable[[Callable[[RunData], Rendered]], Callable[[RunData], Rendered]]:
    """Decorator registering ``render(rd) -> (figures, reading)`` as a report section."""

    def deco(fn: Callable[[RunData], Rendered]) -> Callable[[RunData], Rendered]:
        SECTIONS[key] = Section(key, title, analysis, fn, overlay, description, order)
        return fn

    return deco
