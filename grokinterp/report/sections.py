"""The report's sections: a registry mapping each section to the analysis it needs.

Each :class:`Section` names the analysis whose cached results it reads (``None`` for the
training curves, which come from ``metrics.jsonl``) and renders plotly figures plus a short
plain-language *reading* computed from the data (two sentences, e.g. "Test accuracy climbs
from 10% to 90% between steps 1 400 and 2 100 ...").

Rules that keep a report from ever crashing:

- an analysis that was never computed is listed as *not computed* together with the command
  that computes it (``grokinterp analyze RUN --only NAME``);
- an analysis that does not apply to the run (e.g. Fourier on parity) says why;
- a corrupt or unreadable cache is recomputed (``recompute=True``) or reported;
- a figure module (``grokinterp.report.figures.<topic>``) is imported lazily; if it or one of
  its functions is missing the section says "not available in this version";
- any other exception while rendering becomes an *error* entry in that section only.

Analyses without a dedicated section but with a cache get a generic section (scalar curves).
"""

from __future__ import annotations

import importlib
import json
import math
import shlex
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from grokinterp.config import GrokinterpError
from grokinterp.store import Run

__all__ = [
    "SECTIONS",
    "AnalysisData",
    "FigureUnavailable",
    "RunData",
    "Section",
    "SectionResult",
    "analyze_command",
    "fmt_step",
    "load_analysis",
    "register_section",
    "render_sections",
]


# ----------------------------------------------------------------------------- formatting


def fmt_step(step: float | int | None) -> str:
    """A step number with thin-space thousands separators ("1 400"); "—" for None."""
    if step is None or (isinstance(step, float) and not math.isfinite(step)):
        return "—"
    return f"{int(round(step)):,}".replace(",", "\u2009")


def fmt_pct(x: float | None, digits: int = 0) -> str:
    if x is None or not math.isfinite(float(x)):
        return "—"
    return f"{100 * float(x):.{digits}f}%"


def fmt_num(x: float | None) -> str:
    if x is None or not math.isfinite(float(x)):
        return "—"
    return f"{float(x):.3g}"


def analyze_command(run: Run, name: str) -> str:
    """The shell command that computes analysis ``name`` for ``run``."""
    return f"grokinterp analyze {shlex.quote(str(run.path))} --only {name}"


# ----------------------------------------------------------------------------- series helpers


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


def first_crossing(steps: Sequence[float], values: Sequence[float], level: float) -> int | None:
    """Index of the first value ≥ ``level`` (None if never)."""
    v = _np(values)
    hit = np.nonzero(v >= level)[0]
    return int(hit[0]) if len(hit) else None


def climb_window(
    steps: Sequence[float], values: Sequence[float], lo: float, hi: float
) -> tuple[float, float] | None:
    """(last step ≤ ``lo`` before the first step ≥ ``hi``, that first step ≥ ``hi``): where a
    curve climbs from ``lo`` to ``hi`` (None if it never reaches ``hi`` or starts above ``lo``)."""
    s, v = _np(steps), _np(values)
    j = first_crossing(s, v, hi)
    if j is None:
        return None
    below = np.nonzero(v[: j + 1] <= lo)[0]
    if not len(below):
        return None
    return float(s[below[-1]]), float(s[j])


def rise_start(steps: Sequence[float], values: Sequence[float], frac: float = 0.1) -> float | None:
    """First step after the curve's minimum where it has risen by ``frac`` of its later range
    (how 'excluded loss rises from step 600' is read)."""
    s, v = _np(steps), _np(values)
    if len(v) < 3 or not np.isfinite(v).all():
        return None
    i0 = int(np.argmin(v[: int(np.argmax(v)) + 1])) if np.argmax(v) > 0 else 0
    peak = float(v[i0:].max())
    if peak - v[i0] <= 1e-12:
        return None
    hit = np.nonzero(v[i0:] >= v[i0] + frac * (peak - v[i0]))[0]
    return float(s[i0 + hit[0]]) if len(hit) else None


def half_change_step(steps: Sequence[float], values: Sequence[float]) -> float | None:
    """First step at which the curve has covered half of its start→end change."""
    s, v = _np(steps), _np(values)
    if len(v) < 2 or abs(v[-1] - v[0]) < 1e-12:
        return None
    mid = (v[0] + v[-1]) / 2
    hit = np.nonzero(v >= mid)[0] if v[-1] > v[0] else np.nonzero(v <= mid)[0]
    return float(s[hit[0]]) if len(hit) else None


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
        return _np(self.results[f"{self.name}/{key}"])

    def has(self, key: str) -> bool:
        return self.results is not None and f"{self.name}/{key}" in self.results

    @property
    def steps(self) -> np.ndarray:
        assert self.results is not None
        return _np(self.results["steps"])


def _cache_metadata(path) -> dict[str, str] | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable header: the caller treats the cache as corrupt
        return None


def load_analysis(run: Run, name: str, recompute: bool = True) -> AnalysisData:
    """Load the cached analysis ``name`` of ``run`` without ever raising.

    A corrupt cache is recomputed with the parameters recorded in its metadata (or the
    defaults) when ``recompute``; otherwise, or if that fails, it is reported.
    """
    try:
        from grokinterp.analysis import registry
    except Exception as e:  # pragma: no cover - a broken analysis package must not kill reports
        return AnalysisData(name, "unavailable", message=f"analyses cannot be imported: {e}")
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
    meta = _cache_metadata(path)
    tensors = registry.load_cached(run, name) if meta is not None else None
    steps = None
    if tensors is not None and meta is not None:
        try:
            steps = json.loads(meta["steps"])
            n = len(steps)
            if not all(t.ndim >= 1 and t.shape[0] == n for t in tensors.values()):
                tensors = None
        except (KeyError, TypeError, ValueError):
            tensors = None
    params: dict[str, Any] = {}
    try:
        params = json.loads((meta or {}).get("params", "{}"))
        if not isinstance(params, dict):
            params = {}
    except ValueError:
        params = {}
    if tensors is not None:
        results = {"steps": torch.tensor(steps)}
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
    """A run in a report, with its headline numbers and its analyses loaded on demand."""

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

    def analysis(self, name: str) -> AnalysisData:
        if name not in self._analyses:
            self._analyses[name] = load_analysis(self.run, name, self.recompute)
        return self._analyses[name]


# ----------------------------------------------------------------------------- sections


class FigureUnavailable(Exception):
    """A figure module or function is missing from this version of grokinterp."""


def figures_module(topic: str):
    """Import ``grokinterp.report.figures.<topic>`` lazily (FigureUnavailable if absent)."""
    modname = f"grokinterp.report.figures.{topic}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and modname.startswith(e.name):
            raise FigureUnavailable(f"{modname} is not available in this version") from None
        raise


def figure_fn(topic: str, name: str) -> Callable[..., go.Figure]:
    """A figure function of a topic module (FigureUnavailable if it or the module is absent)."""
    fn = getattr(figures_module(topic), name, None)
    if fn is None:
        raise FigureUnavailable(
            f"grokinterp.report.figures.{topic}.{name} is not available in this version"
        )
    return fn


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
    if data.status == "regenerated":
        return f"{who}{data.message}"
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
            figs, reading = [], []
            for rd in ready:
                f, r = section.render(rd)
                figs.extend(_titled(x, rd.label) for x in f) if multi else figs.extend(f)
                if r:
                    reading.append(f"{rd.label}: {r}" if multi else r)
            reading = " ".join(reading)
        res.figures, res.reading = list(figs), reading
    except FigureUnavailable as e:
        res.status = "unavailable"
        res.notes.append(f"not available in this version ({e})")
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
        try:  # every registered analysis is listed, computed or not
            from grokinterp.analysis.registry import ANALYSES

            extra = set(ANALYSES) - covered
        except Exception:  # pragma: no cover - a broken analysis package must not kill reports
            extra = set()
        for rd in runs:
            adir = rd.run.analysis_dir
            if adir.is_dir():
                extra |= {p.stem for p in adir.glob("*.safetensors")} - covered
        for name in sorted(extra):
            out.append(render_section(_generic_section(name), runs))
    return out


# ----------------------------------------------------------------------------- generic section


def _scalar_keys(data: AnalysisData, limit: int = 8) -> list[str]:
    assert data.results is not None
    keys = []
    for k, v in data.results.items():
        if k.startswith(data.name + "/") and v.ndim == 1 and v.dtype != torch.bool:
            keys.append(k.split("/", 1)[1])
    return keys[:limit]


def _generic_section(name: str) -> Section:
    def render(rd: RunData) -> Rendered:
        data = rd.analysis(name)
        keys = [k for k in _scalar_keys(data) if k != "step"]
        if not keys:
            return [], f"The {name} analysis has no scalar series to plot."
        fig = go.Figure()
        for k in keys:
            fig.add_trace(go.Scatter(x=data.steps, y=data.get(k), mode="lines", name=k))
        fig.update_layout(
            title=f"{name} over training",
            xaxis={"title": "step"},
            template="plotly_white",
            height=360,
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


# ============================================================================= the sections
# Readings are computed from the data; each is at most two sentences.


def _threshold(rd: RunData) -> float:
    return float(rd.summary.get("threshold", 0.99))


def _weight_norm_phrase(metrics: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (m["step"], m["weight_norm_l2"]) for m in metrics if m.get("weight_norm_l2") is not None
    ]
    if len(rows) < 2:
        return ""
    steps, vals = zip(*rows, strict=True)
    i = int(np.argmax(vals))
    peak, final = vals[i], vals[-1]
    if final < 0.97 * peak:
        return (
            f"the weight norm falls by {fmt_pct(1 - final / peak)} from its peak "
            f"{peak:.3g} at step {fmt_step(steps[i])} to {final:.3g}"
        )
    if final > 1.03 * vals[0]:
        return f"the weight norm grows from {vals[0]:.3g} to {final:.3g}"
    return f"the weight norm stays near {final:.3g}"


def training_reading(metrics: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """Two sentences on when the run memorised and generalised, read off ``metrics``."""
    if not metrics:
        return "No evaluations were recorded for this run."
    thr = fmt_pct(summary.get("threshold", 0.99))
    t_mem, t_gen = summary.get("step_memorization"), summary.get("step_generalization")
    last = metrics[-1]
    n = fmt_step(last.get("step"))
    if t_mem is None:
        first = f"Train accuracy never reaches {thr} within {n} steps (final {fmt_pct(last.get('train_acc'))})."
    elif t_gen is None:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_mem)}, but test accuracy stays below "
            f"{thr} through step {n} (final {fmt_pct(last.get('test_acc'))}): memorised, not (yet) generalised."
        )
    elif t_mem > 0 and t_gen >= 2 * t_mem:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_mem)} and test accuracy at step "
            f"{fmt_step(t_gen)}, {t_gen / t_mem:.1f}× later: the run groks."
        )
    else:
        first = (
            f"Train accuracy reaches {thr} at step {fmt_step(t_mem)} and test accuracy at step "
            f"{fmt_step(t_gen)}, with no long delay between memorisation and generalisation."
        )
    s, acc = metric_columns(metrics, "test_acc")
    window = None
    if len(s):
        # The jump: from 20% to 90% of the way between the test accuracy at memorisation (the
        # post-memorisation plateau) and its best value.
        base = acc[s.index(t_mem)] if t_mem in s else acc[0]
        top = max(acc)
        if top - base > 0.2:
            window = climb_window(s, acc, base + 0.2 * (top - base), base + 0.9 * (top - base))
    wn = _weight_norm_phrase(metrics)
    if window is not None:
        a, b = acc[s.index(int(window[0]))], acc[s.index(int(window[1]))]
        second = (
            f"Test accuracy jumps from {fmt_pct(a)} to {fmt_pct(b)} between steps "
            f"{fmt_step(window[0])} and {fmt_step(window[1])}"
        )
    elif len(acc):
        second = f"Test accuracy ends at {fmt_pct(acc[-1])} (best {fmt_pct(max(acc))})"
    else:
        second = "No test accuracy was recorded"
    second += f", while {wn}." if wn else "."
    return f"{first} {second}"


def metric_columns(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [(m["step"], float(m[key])) for m in metrics if m.get(key) is not None]
    return ([r[0] for r in rows], [r[1] for r in rows]) if rows else ([], [])


def _training_figures(rds: Sequence[RunData]) -> list[go.Figure]:
    from grokinterp.report.figures import training as tf

    metrics = {rd.label: rd.metrics for rd in rds}
    marks = {
        rd.label: (rd.summary.get("step_memorization"), rd.summary.get("step_generalization"))
        for rd in rds
    }
    return [
        tf.accuracy_figure(metrics, threshold=_threshold(rds[0]), marks=marks),
        tf.loss_figure(metrics),
        tf.weight_norm_figure(metrics),
    ]


def _training_overlay(rds: Sequence[RunData]) -> Rendered:
    thr = fmt_pct(_threshold(rds[0]))
    gen = [(rd.summary.get("step_generalization"), rd.label) for rd in rds]
    done = sorted((t, lab) for t, lab in gen if t is not None)
    never = [lab for t, lab in gen if t is None]
    if done:
        first = f"Test accuracy reaches {thr} first in {done[0][1]} (step {fmt_step(done[0][0])})"
        if len(done) > 1:
            first += f" and last in {done[-1][1]} (step {fmt_step(done[-1][0])})"
        first += (
            f"; {', '.join(never)} never {'does' if len(never) == 1 else 'do'}." if never else "."
        )
    else:
        first = f"No run reaches {thr} test accuracy."
    mem = ", ".join(f"{rd.label} {fmt_step(rd.summary.get('step_memorization'))}" for rd in rds)
    second = f"Train accuracy reaches {thr} at steps: {mem}."
    return _training_figures(rds), f"{first} {second}"


@register_section(
    "training",
    "Training curves",
    None,
    "Accuracy, loss and total weight norm over training (log step axis). Grokking: test accuracy "
    "rises long after train accuracy (Power et al. 2022).",
    order=0,
    overlay=_training_overlay,
)
def _training_section(rd: RunData) -> Rendered:
    figs = _training_figures([rd])
    try:  # Omnigrok's view: loss against weight norm (from the transfer figures, if present)
        if any("weight_norm_l2" in m for m in rd.metrics):
            figs.append(figure_fn("transfer", "norm_trajectory_figure")(rd.metrics))
    except FigureUnavailable:
        pass
    return figs, training_reading(rd.metrics, rd.summary)


# ----------------------------------------------------------------------------- fourier


def fourier_reading(results: Mapping[str, torch.Tensor]) -> str:
    """Two sentences on the Fourier progress measures (Nanda et al. 2023)."""
    from grokinterp.analysis.fourier_training import fourier_summary

    s = fourier_summary(dict(results))
    key = s["key_frequencies"]
    keys = ", ".join(map(str, key)) if key else "no single frequency"
    rise = s.get("embed_gini_rise_step")
    first = (
        f"The embedding concentrates on key frequencies {keys}: the Gini coefficient of its "
        f"Fourier spectrum goes from {s['embed_gini_start']:.2f} to {s['embed_gini_final']:.2f}"
        + (f", half-way up at step {fmt_step(rise)}." if rise is not None else ".")
    )
    if "excluded_rise_step" in s and s["excluded_peak_step"] <= s["excluded_rise_step"]:
        second = (
            f"Excluded loss does not rise over these checkpoints (final "
            f"{fmt_num(s['excluded_loss_final'])}), and test loss is half-way down at step "
            f"{fmt_step(s.get('test_loss_fall_step'))}."
        )
    elif "excluded_rise_step" in s:
        second = (
            f"Excluded loss rises from step {fmt_step(s['excluded_rise_step'])} (peak at step "
            f"{fmt_step(s['excluded_peak_step'])}), and restricted loss is half-way down at step "
            f"{fmt_step(s.get('restricted_loss_fall_step'))}, test loss at step "
            f"{fmt_step(s.get('test_loss_fall_step'))}."
        )
    else:
        second = (
            f"{fmt_pct(s['neurons_85_final'])} of MLP neurons end with over 85% of their variance "
            f"in one frequency, and test loss is half-way down at step {fmt_step(s.get('test_loss_fall_step'))}."
        )
    return f"{first} {second}"


def _fourier_overlay(rds: Sequence[RunData]) -> Rendered:
    from grokinterp.report.figures.training import COLORS

    fig = go.Figure()
    parts = []
    for i, rd in enumerate(rds):
        d = rd.analysis("fourier")
        for key, dash in (("embed_gini", "solid"), ("wl_gini", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=d.steps,
                    y=d.get(key),
                    name=f"{rd.label} · {'W_E' if key == 'embed_gini' else 'W_L'}",
                    line={"color": COLORS[i % len(COLORS)], "dash": dash},
                )
            )
        key = (np.nonzero(d.get("key_mask")[-1])[0] + 1).tolist() if d.has("key_mask") else []
        rise = half_change_step(d.steps, d.get("embed_gini"))
        parts.append((rd.label, key, rise))
    fig.update_layout(
        title="Gini coefficient of the Fourier spectra (W_E solid, W_L dotted)",
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "Gini", "range": [0, 1]},
        template="plotly_white",
        height=400,
        legend={"orientation": "h", "y": -0.2},
    )
    first = (
        "Key frequencies: "
        + "; ".join(f"{lab} {', '.join(map(str, k)) or 'none'}" for lab, k, _ in parts)
        + "."
    )
    second = (
        "The embedding's Gini coefficient is half-way to its final value at step "
        + "; ".join(f"{fmt_step(r)} in {lab}" for lab, _, r in parts)
        + "."
    )
    return [fig], f"{first} {second}"


@register_section(
    "fourier",
    "Fourier circuit",
    "fourier",
    "Nanda et al. 2023 (Progress measures for grokking via mechanistic interpretability): the "
    "network learns a few key frequencies; restricted loss (key frequencies only) falls before "
    "test loss, excluded loss (key frequencies removed) rises as the circuit forms.",
    order=10,
    overlay=_fourier_overlay,
)
def _fourier_section(rd: RunData) -> Rendered:
    from grokinterp.report.figures.training import checkpoint_slider_figure

    data = rd.analysis("fourier")
    r = data.results
    assert r is not None
    figs = []
    if data.has("restricted_loss"):
        figs.append(figure_fn("fourier", "fourier_loss_figure")(r, metrics=rd.metrics))
    figs.append(figure_fn("fourier", "fourier_spectrum_figure")(r, which="embed"))
    figs.append(
        checkpoint_slider_figure(
            data.steps.astype(int).tolist(),
            data.get("embed_norms"),
            title="Fourier norms of the embedding W_E",
            xtitle="frequency k",
            ytitle="‖projection of W_E on cos/sin k‖",
        )
    )
    figs.append(figure_fn("fourier", "fourier_gini_figure")(r))
    if data.has("neuron_freq"):
        figs.append(figure_fn("fourier", "neuron_frequency_figure")(r))
    return figs, fourier_reading(r)


# ----------------------------------------------------------------------------- dynamics
# Figures from grokinterp.report.figures.dynamics; readings from the curves themselves.


def _test_half_step(rd: RunData) -> int | None:
    try:
        from grokinterp.analysis.dynamics import transition_step
    except ImportError:  # pragma: no cover
        return None
    return transition_step(rd.metrics, "test_acc", 0.5)


def _vs_grokking(rd: RunData, step: float | None) -> str:
    t = _test_half_step(rd)
    if step is None or t is None:
        return ""
    rel = "before" if step < t else ("after" if step > t else "at")
    return f" ({rel} the test-accuracy midpoint, step {fmt_step(t)})"


def rank_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the layer whose effective rank drops most, and its numerical rank."""
    from grokinterp.analysis.dynamics import drop_step

    layers = [k.split("/", 2)[2] for k in data.results or {} if k.startswith("rank/effective/")]
    if not layers:
        return "No layer's feature rank was recorded."

    def rel_drop(layer: str) -> float:
        v = data.get(f"effective/{layer}")
        return (v.max() - v[-1]) / max(v.max(), 1e-12)

    layer = max(layers, key=rel_drop)
    v = data.get(f"effective/{layer}")
    d = drop_step(data.steps, v)
    first = (
        f"The effective rank of {layer} goes from {v[0]:.1f} to {v[-1]:.1f} (peak {v.max():.1f})"
        + (
            f", half-way down at step {fmt_step(d)}{_vs_grokking(rd, d)}."
            if d is not None
            else ", with no marked drop."
        )
    )
    if data.has(f"numerical/{layer}"):
        n = data.get(f"numerical/{layer}")
        second = (
            f"Its numerical rank goes from {n[0]:.0f} to {n[-1]:.0f}; "
            f"{len(layers)} layer{'s' if len(layers) > 1 else ''} analysed at {len(data.steps)} checkpoints."
        )
    else:
        second = f"{len(layers)} layer(s) were analysed at {len(data.steps)} checkpoints."
    return f"{first} {second}"


@register_section(
    "rank",
    "Feature rank",
    "rank",
    "Fan et al. 2024 (Deep grokking: would deep neural networks generalize better?): the rank of "
    "each layer's features drops as the network generalises.",
    order=20,
)
def _rank_section(rd: RunData) -> Rendered:
    data = rd.analysis("rank")
    fig = figure_fn("dynamics", "rank_figure")(data.results, rd.metrics, kind="both")
    return [fig], rank_reading(data, rd)


def complexity_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: descent → ascent → second descent of LC around training points
    (Humayun et al. 2024), then the final LC of test vs random points."""
    from grokinterp.analysis.dynamics import complexity_phases

    sets = [x for x in ("train", "test", "random") if data.has(f"{x}/mean")]
    if not sets:
        return "No local-complexity series was recorded."
    main = sets[0]
    ph = complexity_phases(data.steps, data.get(f"{main}/mean"))
    parts = []
    if ph["descent"]:
        parts.append(
            f"falls to {ph['first_min_value']:.2f} by step {fmt_step(ph['first_min_step'])}"
        )
    if ph["ascent"]:
        parts.append(f"rises to {ph['peak_value']:.2f} at step {fmt_step(ph['peak_step'])}")
    if ph["second_descent"]:
        parts.append(
            f"falls again to {ph['second_min_value']:.2f} by step {fmt_step(ph['second_min_step'])}"
            + _vs_grokking(rd, ph["second_min_step"])
        )
    lead = f"Local complexity around {main} points (neurons whose sign changes in a small neighbourhood)"
    if parts:
        first = f"{lead} starts at {ph['start_value']:.2f}, " + ", then ".join(parts) + "."
    else:
        first = f"{lead} stays near {ph['start_value']:.2f} over the run."
    finals = ", ".join(f"{x} {data.get(f'{x}/mean')[-1]:.2f}" for x in sets)
    second = f"At the last checkpoint the mean local complexity is {finals}."
    return f"{first} {second}"


@register_section(
    "complexity",
    "Local complexity",
    "complexity",
    "Humayun et al. 2024 (Deep networks always grok and here is why): the density of linear-region "
    "boundaries around data points descends, ascends, then descends again as the network groks.",
    order=21,
)
def _complexity_section(rd: RunData) -> Rendered:
    data = rd.analysis("complexity")
    fig = figure_fn("dynamics", "complexity_figure")(data.results, rd.metrics)
    return [fig], complexity_reading(data, rd)


def _norm_layers(data: AnalysisData) -> list[int]:
    out = []
    for k in data.results or {}:
        if k.startswith("norms/final_sparse_l2/"):
            tail = k.rsplit("/", 1)[1]
            if tail.isdigit():
                out.append(int(tail))
    return sorted(out)


def norms_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: the norms of the final sparse subnetwork and of the rest over training,
    then how k evolves (Merrill et al. 2023)."""
    layers = _norm_layers(data)
    if not layers:
        return "No MLP layer's subnetwork norms were recorded."
    i = layers[0]
    sp, de = data.get(f"final_sparse_l2/{i}"), data.get(f"final_dense_l2/{i}")
    kf = int(data.get(f"final_k/{i}")[-1]) if data.has(f"final_k/{i}") else None
    first = (
        f"In MLP layer {i}, the final sparse subnetwork"
        + (f" (the top {kf} neurons that reproduce the train accuracy)" if kf is not None else "")
        + f" changes its L2 norm from {sp[0]:.3g} to {sp[-1]:.3g}, while the rest goes from "
        f"{de[0]:.3g} to {de[-1]:.3g}."
    )
    if data.has(f"k/{i}"):
        k = data.get(f"k/{i}")
        j = int(np.argmax(k))
        second = (
            f"The smallest reproducing top-k goes from {k[0]:.0f} to {k[-1]:.0f} neurons "
            f"(largest {k[j]:.0f} at step {fmt_step(data.steps[j])})."
        )
    else:
        second = f"Norms were measured at {len(data.steps)} checkpoints."
    return f"{first} {second}"


@register_section(
    "norms",
    "Sparse and dense subnetworks",
    "norms",
    "Merrill et al. 2023 (A tale of two circuits: grokking as competition of sparse and dense "
    "subnetworks): the sparse subnetwork that generalises grows in norm while the dense one decays.",
    order=22,
)
def _norms_section(rd: RunData) -> Rendered:
    data = rd.analysis("norms")
    layers = _norm_layers(data)
    fn = figure_fn("dynamics", "norms_figure")
    figs = [fn(data.results, rd.metrics, layer=i) for i in layers[:3]]
    return figs, norms_reading(data, rd)


def robustness_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences on adversarial (PGD) accuracy over training (Humayun et al. 2024)."""
    acc = data.get("accuracy")
    eps = data.get("eps")[0] if data.has("eps") else np.arange(acc.shape[1])
    j = int(np.argmax(eps))
    a = acc[:, j]
    half = half_change_step(data.steps, a)
    first = (
        f"Accuracy under L∞ PGD with ε = {eps[j]:g} goes from {fmt_pct(a[0])} to {fmt_pct(a[-1])}"
        + (
            f", half-way at step {fmt_step(half)}{_vs_grokking(rd, half)}."
            if half is not None
            else "."
        )
    )
    clean = data.get("clean_accuracy")[-1] if data.has("clean_accuracy") else None
    finals = ", ".join(f"ε={e:g}: {fmt_pct(acc[-1, i])}" for i, e in enumerate(eps))
    second = f"At the last checkpoint: {finals}" + (
        f" (clean {fmt_pct(clean)})." if clean is not None else "."
    )
    return f"{first} {second}"


@register_section(
    "robustness",
    "Adversarial robustness",
    "robustness",
    "Humayun et al. 2024 (Deep networks always grok and here is why): robustness to adversarial "
    "perturbations emerges late in training, after generalisation ('delayed robustness').",
    order=23,
)
def _robustness_section(rd: RunData) -> Rendered:
    data = rd.analysis("robustness")
    fig = figure_fn("dynamics", "robustness_figure")(data.results, rd.metrics)
    return [fig], robustness_reading(data, rd)


# ----------------------------------------------------------------------------- tickets


def tickets_reading(data: AnalysisData, rd: RunData) -> str:
    """Two sentences: when the magnitude mask settles on the final ticket, and how far it moves
    from the initial mask (Minegishi et al. 2023)."""
    j = data.get("jaccard_ref")
    steps = data.steps
    sparsity = data.params.get("sparsity", 0.6)
    i90 = first_crossing(steps, j, 0.9)
    t_gen = rd.summary.get("step_generalization")
    first = (
        f"The magnitude mask keeping {fmt_pct(1 - float(sparsity))} of the weights overlaps the "
        f"final ticket with Jaccard {j[0]:.2f} at initialisation"
        + (
            f" and reaches 0.9 at step {fmt_step(steps[i90])}"
            + (f" (test accuracy reaches the threshold at step {fmt_step(t_gen)})" if t_gen else "")
            + "."
            if i90 is not None
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
    fig = figure_fn("tickets", "mask_similarity_figure")(steps, data.get("jaccard_ref"))
    fig.data[0].name = "vs final ticket"
    fig.data[0].showlegend = True
    for key, name, dash in (
        ("jaccard_init", "vs initial mask", "dash"),
        ("jaccard_random", "chance level", "dot"),
    ):
        if data.has(key):
            fig.add_trace(go.Scatter(x=steps, y=data.get(key), name=name, line={"dash": dash}))
    fig.update_layout(yaxis_title="Jaccard similarity", legend={"orientation": "h", "y": -0.2})
    figs = [fig]
    if data.has("bits") and data.has("n_entries"):
        from grokinterp.analysis.tickets import jaccard_matrix

        bits = data.results["tickets/bits"]
        idx = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 40)).round().astype(int))
        mat = jaccard_matrix(bits[idx], int(data.get("n_entries")[0]))
        figs.append(
            figure_fn("tickets", "mask_similarity_figure")(
                steps[idx], mat, title="Mask similarity between checkpoints (Jaccard)"
            )
        )
    return figs, tickets_reading(data, rd)


# ----------------------------------------------------------------------------- transfer


def _transfer_summary(data: AnalysisData, rd: RunData) -> dict[str, Any]:
    from grokinterp.analysis.transfer import transfer_summary

    return transfer_summary(rd.run, dict(data.results or {}), n_perm=2000)


def transfer_reading(summary: Mapping[str, Any]) -> str:
    """Two sentences on what a GrokTransfer target inherits from the weak embedding E_W
    (key-frequency overlap against its permutation baseline, then energy in K_W and CKA), from
    :func:`grokinterp.analysis.transfer.transfer_summary`; for a vector-input mlp (no Fourier
    structure) the subspace measures between E_W and the target's first layer instead."""
    s = summary
    at = f"step {fmt_step(s['analysis_step'])}" + (
        "" if s["generalized"] else " (the last checkpoint; it never reaches 95% test accuracy)"
    )
    if not s.get("fourier", True):
        signal = (
            f" Its energy on the signal coordinates x₁, x₂ goes from {s['signal_energy_init']:.2f}"
            f" to {s['signal_energy']:.2f} (E_W: {s['weak_signal_energy']:.2f})."
            if "signal_energy" in s
            else ""
        )
        return (
            f"At {at}, {s['subspace_energy']:.2f} of the target first layer's energy lies in "
            f"span(E_W) ({s['subspace_energy_init']:.2f} at initialisation) and linear CKA with "
            f"E_W is {s['cka']:.2f} ({s['cka_init']:.2f}); vector inputs have no Fourier "
            f"spectra.{signal}"
        )
    first = (
        f"At {at} the target's key frequencies are {', '.join(map(str, s['target_keys'])) or 'none'}"
        f" and the weak embedding's {', '.join(map(str, s['weak_keys'])) or 'none'}: an overlap of "
        f"{s['overlap']:.2f} against {s['overlap_baseline']:.2f} by chance (p = {s['overlap_p_value']:.2g})."
    )
    second = (
        f"The share of the target's Fourier energy in E_W's key frequencies goes from "
        f"{s['energy_in_weak_keys_init']:.2f} at initialisation to {s['energy_in_weak_keys']:.2f} "
        f"(chance {s['energy_chance']:.2f}), and linear CKA with E_W from {s['cka_init']:.2f} to {s['cka']:.2f}."
    )
    return f"{first} {second}"


def _transfer_overlay(rds: Sequence[RunData]) -> Rendered:
    """Comparison (e.g. transfer vs random-A): accuracy curves and key-frequency overlap."""
    from grokinterp.report.figures.training import COLORS

    curves = figure_fn("transfer", "comparison_curves_figure")({rd.label: rd.metrics for rd in rds})
    fig = go.Figure()
    parts = []
    datas = [rd.analysis("transfer") for rd in rds]
    fourier = all(d.has("energy_in_weak_keys") for d in datas)
    key, what = (
        ("energy_in_weak_keys", "energy in E_W's key freqs")
        if fourier
        else ("subspace_energy", "first-layer energy in span(E_W)")
    )
    for i, (rd, d) in enumerate(zip(rds, datas, strict=True)):
        fig.add_trace(
            go.Scatter(
                x=np.maximum(d.steps, 1),
                y=d.get(key),
                name=f"{rd.label} · {what}",
                line={"color": COLORS[i % len(COLORS)]},
            )
        )
        s = _transfer_summary(d, rd)
        if fourier:
            parts.append(f"{rd.label} {s['overlap']:.2f} (chance {s['overlap_baseline']:.2f})")
        else:
            parts.append(f"{rd.label} {s['subspace_energy']:.2f}")
    fig.update_layout(
        title="Share of the target's Fourier energy in E_W's key frequencies"
        if fourier
        else "Share of the target first layer's energy in span(E_W)",
        xaxis={"title": "step", "type": "log"},
        yaxis={"title": "fraction", "range": [0, 1.05]},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    gen = "; ".join(f"{rd.label} {fmt_step(rd.summary.get('step_generalization'))}" for rd in rds)
    lead = (
        "Overlap of the target's key frequencies with E_W's"
        if fourier
        else "Share of the target first layer's energy in span(E_W) at 95% test accuracy (or last)"
    )
    reading = f"{lead}: {'; '.join(parts)}. Test accuracy reaches the threshold at steps: {gen}."
    return [curves, fig], reading


@register_section(
    "transfer",
    "GrokTransfer",
    "transfer",
    "Xu, Ni, Wang, Hu 2025 (Let me grok for you: accelerating grokking via embedding transfer "
    "from a weaker model): the target inherits the weak model's key frequencies.",
    order=40,
    overlay=_transfer_overlay,
)
def _transfer_section(rd: RunData) -> Rendered:
    from grokinterp.report.figures.training import checkpoint_slider_figure

    data = rd.analysis("transfer")
    r = data.results
    summary = _transfer_summary(data, rd)
    if not summary["fourier"]:  # vector inputs (mlp on XOR-cluster data): subspaces only
        return [figure_fn("transfer", "transfer_subspace_figure")(r)], transfer_reading(summary)
    figs = [
        figure_fn("transfer", "transfer_spectra_figure")(r, at=summary["analysis_step"]),
        figure_fn("transfer", "transfer_spectrum_heatmap")(r),
        checkpoint_slider_figure(
            data.steps.astype(int).tolist(),
            data.get("spectrum"),
            title="Fourier norms of the target embedding",
            xtitle="frequency k",
            ytitle="‖projection on cos/sin k‖",
        ),
        figure_fn("transfer", "transfer_overlap_figure")(r),
        figure_fn("transfer", "transfer_subspace_figure")(r),
    ]
    return figs, transfer_reading(summary)
