"""The sweep manifest (``sweep.json``) and the one-page HTML report of a sweep.

``render_sweep_report(sweep_dir, out_html)`` writes a self-contained page (plotly.js embedded,
no network needed): the phase diagram over the first two grid axes (one panel per value of
any further axis), the heatmap of the ratio generalize_step / fit_step, the accuracy curves of
every cell and the table.
``grokinterp report SWEEP_DIR`` calls it when the folder holds ``sweep.json``.

The manifest is written by :mod:`grokinterp.experiments.sweep`; its layout::

    {"format": "grokinterp-sweep", "version": 1,
     "spec": {"preset", "config", "grid": [{"key", "values", "labels"}], "seeds",
              "threshold", "ratio", "sustain"},
     "counts": {"pending", "running", "done", "failed"},
     "cells": [{"index", "name", "values", "labels", "overrides", "status", "phase",
                "fractions", "median_ratio", "median_delay", "median_fit_step",
                "median_generalize_step", "error",
                "runs": [{"name", "seed", "overrides", "status", "error", "phase", "fit_step",
                          "generalize_step", "delay", "ratio", "final_test_acc", ...}]}]}

Version 1 manifests named the run times ``t_train`` / ``t_test`` and their ratio ``delay``; they
are still read (:meth:`grokinterp.analysis.phases.RunPhase.from_dict`).
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from grokinterp.config import GrokinterpError
from grokinterp.report.figures.sweep import (
    delay_heatmap_figure,
    phase_diagram_figure,
    sweep_curves_figure,
    sweep_table_rows,
)
from grokinterp.store import atomic_write_text, read_metrics

__all__ = ["MANIFEST_NAME", "is_sweep_dir", "read_manifest", "render_sweep_report"]

MANIFEST_NAME = "sweep.json"
MANIFEST_FORMAT = "grokinterp-sweep"
MANIFEST_VERSION = 2  # 2: fit_step / generalize_step / delay (steps) / ratio per run
MAX_FACETS = 12  # diagrams for the values of the axes beyond the first two
MAX_CURVE_PANELS = 48


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """The parsed ``sweep.json`` of a sweep folder; a GrokinterpError if missing or corrupt."""
    path = Path(sweep_dir) / MANIFEST_NAME
    if not path.is_file():
        raise GrokinterpError(f"{sweep_dir} is not a sweep folder (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GrokinterpError(f"{path} is corrupt: {e}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise GrokinterpError(f"{path} is not a grokinterp sweep manifest")
    if int(data.get("version", 0)) > MANIFEST_VERSION:
        raise GrokinterpError(
            f"{path} was written by a newer grokinterp (sweep format {data.get('version')}); upgrade"
        )
    return data


def _fig_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})


def _facets(cells: list[dict], axes: list[str], n_plotted: int) -> list[dict[str, Any]]:
    """One ``where`` per combination of the values of the axes that are not plotted."""
    rest = axes[n_plotted:]
    if not rest:
        return [{}]
    values = [
        list(dict.fromkeys(str(c["labels"].get(a, c["values"][a])) for c in cells)) for a in rest
    ]
    return [dict(zip(rest, combo, strict=True)) for combo in itertools.product(*values)][
        :MAX_FACETS
    ]


def _curves(sweep_dir: Path, cells: list[dict]) -> tuple[dict, dict]:
    """Accuracy curves of every finished run, read from the run folders (those that exist)."""
    curves: dict[str, list] = {}
    phases: dict[str, str] = {}
    for c in cells[:MAX_CURVE_PANELS]:
        seeds = []
        for r in c.get("runs", []):
            rows = read_metrics(sweep_dir / r["name"] / "metrics.jsonl")
            rows = [m for m in rows if "train_acc" in m and "test_acc" in m]
            if rows:
                seeds.append(
                    {
                        "step": [m["step"] for m in rows],
                        "train_acc": [m["train_acc"] for m in rows],
                        "test_acc": [m["test_acc"] for m in rows],
                    }
                )
        if seeds:
            label = (
                ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c["labels"].items()) or c["name"]
            )
            curves[label] = seeds
            if c.get("phase"):
                phases[label] = c["phase"]
    return curves, phases


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return (
        f"<div style='overflow-x:auto'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:right}th{background:#f3f3f3}td:last-child{text-align:left;max-width:30em}
code{background:#f3f3f3;padding:0 3px}.note{color:#555;font-size:.9em}
"""


def render_sweep_report(
    sweep_dir: str | Path,
    out_html: str | Path | None = None,
    axes: Sequence[str] | None = None,
) -> Path:
    """Write the HTML report of a sweep folder and return its path.

    Args:
        sweep_dir: a folder holding ``sweep.json``.
        out_html: where to write (default ``SWEEP_DIR/report.html``).
        axes: the grid keys of the diagrams' x and y axes (default: the first two of the grid);
            one diagram is drawn per combination of values of the other axes (up to 12).
    """
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    spec = manifest.get("spec", {})
    cells: list[dict] = manifest.get("cells", [])
    grid_keys = [a["key"] for a in spec.get("grid", [])]
    if axes is not None:
        bad = [a for a in axes if a not in grid_keys]
        if bad or not 1 <= len(axes) <= 2:
            raise GrokinterpError(
                f"axes={list(axes)!r} must be one or two grid keys of {', '.join(grid_keys)}"
            )
    plot_axes = list(axes) if axes is not None else grid_keys[:2]
    axes = plot_axes + [k for k in grid_keys if k not in plot_axes]
    out = Path(out_html) if out_html is not None else sweep_dir / "report.html"
    for c in cells:
        c.setdefault("labels", {k: str(v) for k, v in c.get("values", {}).items()})

    parts: list[str] = []
    counts = manifest.get("counts", {})
    thr, ratio = spec.get("threshold"), spec.get("ratio")
    grid_txt = "; ".join(
        f"<code>{html.escape(a['key'])}</code> ∈ {{{html.escape(', '.join(map(str, a['labels'])))}}}"
        for a in spec.get("grid", [])
    )
    seeds = spec.get("seeds")
    parts.append(
        f"<p>{len(cells)} cells"
        + (f" × {len(seeds)} seeds (<code>train.seed</code> ∈ {seeds})" if seeds else "")
        + f" of preset <code>{html.escape(str(spec.get('preset') or spec.get('config', {}).get('name', '')))}</code>"
        + (f" over {grid_txt}" if grid_txt else "")
        + ". Runs: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ".</p>"
    )
    parts.append(
        '<p class="note">Phases (Liu et al. 2022, "Towards Understanding Grokking"): with '
        "fit step, generalize step the first steps at which train / test accuracy reach "
        f"{thr}, <b>comprehension</b> if generalize step &lt; {ratio}·fit step, <b>grokking</b> "
        f"if generalize step ≥ {ratio}·fit step, <b>memorization</b> if only train accuracy "
        "reaches it within the budget, <b>confusion</b> if neither does. Multi-seed squares show the majority phase; "
        "hover for the fraction of seeds in each phase.</p>"
    )
    if cells and axes:
        x, y = axes[0], (axes[1] if len(plot_axes) > 1 else None)
        parts.append("<h2>Phase diagram</h2>")
        for where in _facets(cells, axes, len(plot_axes)):
            suffix = ", ".join(f"{k}={v}" for k, v in where.items())
            parts.append(
                _fig_html(
                    phase_diagram_figure(
                        cells,
                        x,
                        y,
                        where or None,
                        title="phase diagram" + (f" ({suffix})" if suffix else ""),
                    )
                )
            )
        parts.append("<h2>Delay: generalize step / fit step</h2>")
        for where in _facets(cells, axes, len(plot_axes)):
            suffix = ", ".join(f"{k}={v}" for k, v in where.items())
            parts.append(
                _fig_html(
                    delay_heatmap_figure(
                        cells,
                        x,
                        y,
                        where or None,
                        title="median generalize step / fit step"
                        + (f" ({suffix})" if suffix else ""),
                    )
                )
            )
    curves, phases = _curves(sweep_dir, cells)
    if curves:
        parts.append("<h2>Accuracy curves</h2>")
        parts.append(_fig_html(sweep_curves_figure(curves, threshold=thr, phases=phases)))
    if cells:
        parts.append("<h2>Cells</h2>")
        parts.append(_table_html(*sweep_table_rows(cells, grid_keys)))
    title = f"grokinterp sweep — {html.escape(sweep_dir.name)}"
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script>"
        f"</head><body><h1>{title}</h1>{''.join(parts)}</body></html>"
    )
    atomic_write_text(out, page)
    return out


def manifest_counts(cells: list[Mapping[str, Any]]) -> dict[str, int]:
    """Number of runs per status over all cells."""
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for c in cells:
        for r in c.get("runs", []):
            counts[r.get("status", "pending")] = counts.get(r.get("status", "pending"), 0) + 1
    return counts
