"""The report page: the data shown in the header, the summary card and the sections, rendered by
the Jinja2 template ``templates/report.html.j2`` (autoescaped: only the CSS, plotly.js and the
figure divs go in unescaped).

One HTML file opens from disk with no network: plotly.js is embedded once (``light=True`` links it
from the plotly CDN instead, for a ~5 MB smaller file) and every figure is a ``<div>`` drawn by
that one copy.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import plotly
import plotly.io as pio
from markupsafe import Markup, escape

from grokinterp._version import __version__
from grokinterp.report.sections import RunData, SectionResult, fmt_pct, fmt_step
from grokinterp.store import Run

__all__ = ["PLOTLY_CONFIG", "plotly_cdn_url", "render_page"]

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}

BADGES = {
    "ok": "computed",
    "partial": "partly computed",
    "not computed": "not computed",
    "not applicable": "not applicable",
    "unavailable": "not available in this version",
    "error": "error",
}

_MODEL_FIELDS = {
    "transformer": ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "normalization"),
    "embed_mlp": ("n_layers", "d_embed", "combine", "d_mlp", "mlp_out", "act_fn", "bias"),
    "mlp": ("n_layers", "d_mlp", "act_fn", "bias"),
}


def plotly_cdn_url() -> str:
    """The CDN address of the plotly.js version bundled with the installed plotly.py."""
    from plotly.offline import get_plotlyjs_version

    return f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"


def _code_spans(text: str) -> Markup:
    """Escape ``text`` and turn `backticked` spans into <code>."""
    parts = str(escape(text)).split("`")
    return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("grokinterp.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["code_spans"] = _code_spans
    return env


# ----------------------------------------------------------------------------- header


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _model_text(run: Run) -> str:
    m = run.config.model
    fields = {k: getattr(m, k) for k in _MODEL_FIELDS.get(m.name, ()) if hasattr(m, k)}
    if m.embedding != "full":
        fields.update(embedding=m.embedding, embed_rank=m.embed_rank)
    for k in ("init_scale", "output_scale"):
        if getattr(m, k) != 1.0:
            fields[k] = getattr(m, k)
    n = run.info.get("n_params")
    return f"{m.name} ({_kv(fields)})" + (f", {n:,} parameters" if n else "")


def _train_text(run: Run) -> str:
    t = run.config.train
    parts = {
        "optimizer": t.optimizer,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "batch": "full" if t.batch_size is None else t.batch_size,
        "loss": t.loss,
        "steps": t.steps,
    }
    if t.grokfast:
        parts["grokfast"] = json.dumps(t.grokfast)
    if t.norm_constraint:
        parts["norm_constraint"] = True
    if t.mask:
        parts["mask"] = Path(t.mask).name
    return _kv(parts)


def _hardware_text(run: Run) -> str:
    v = run.info.get("versions", {})
    bits = [v.get("platform", "?"), f"{v.get('cpu_count', '?')} CPU cores"]
    if v.get("gpu"):
        bits.append(v["gpu"])
    bits.append(f"device {run.config.train.device}")
    return ", ".join(bits)


def _versions_text(run: Run) -> str:
    v = run.info.get("versions", {})
    trained = ", ".join(f"{k} {v[k]}" for k in ("grokinterp", "torch", "python") if k in v)
    return (
        f"trained with {trained or 'unknown versions'}; report by grokinterp {__version__}, "
        f"plotly {plotly.__version__}"
    )


def _wall_text(run: Run) -> str:
    w = run.info.get("wall_time_s")
    if w is None:
        return "—"
    return f"{w:.1f} s" if w < 120 else f"{w / 60:.1f} min ({w:.0f} s)"


def _status_text(run: Run) -> str:
    stopped = run.info.get("stopped_early")
    return (
        f"{run.info.get('status', '?')}"
        + (f", stopped early at step {run.info.get('final_step')}" if stopped else "")
        + f"; {len(run.steps)} checkpoints"
    )


def _task_text(run: Run) -> str:
    return f"{run.config.task.name} ({_kv(run.config.task.params)})"


# ----------------------------------------------------------------------------- summary


def _ratio(s: dict[str, Any]) -> str:
    return f"{s['ratio']:.1f}×" if s.get("ratio") else "—"


def _run_context(rd: RunData, threshold: float) -> dict[str, Any]:
    run, cfg, s = rd.run, rd.run.config, rd.summary
    thr = fmt_pct(threshold)
    last = f"step {fmt_step(s['last_step'])}"
    delay = f"{fmt_step(s['delay'])} steps" if s.get("delay") is not None else "—"
    rows = [
        ("run", run.path),
        ("task", _task_text(run)),
        ("model", _model_text(run)),
        ("training", _train_text(run)),
        ("seed", cfg.train.seed),
        ("status", _status_text(run)),
        ("wall time", _wall_text(run)),
        ("hardware", _hardware_text(run)),
        ("versions", _versions_text(run)),
    ]
    if cfg.parent:
        rows.insert(1, ("parent run", cfg.parent))
    return {
        "notes": cfg.notes,
        "rows": rows,
        "config_json": json.dumps(cfg.to_dict(), indent=2),
        "table_row": (
            f"{rd.label} ({run.path})",
            _task_text(run),
            _model_text(run),
            _train_text(run),
            cfg.train.seed,
            _wall_text(run),
            _hardware_text(run),
        ),
        "tiles": [
            ("train set fit at step", fmt_step(s["fit_step"]), f"train ≥ {thr}"),
            ("generalised at step", fmt_step(s["generalize_step"]), f"test ≥ {thr}"),
            (
                "delay",
                delay,
                "generalised − fit" + (f", {_ratio(s)} later" if s.get("ratio") else ""),
            ),
            ("final train accuracy", fmt_pct(s["final_train_acc"], 1), last),
            ("final test accuracy", fmt_pct(s["final_test_acc"], 1), last),
        ],
        "summary_row": (
            rd.label,
            fmt_step(s["fit_step"]),
            fmt_step(s["generalize_step"]),
            delay,
            _ratio(s),
            fmt_pct(s["final_train_acc"], 1),
            fmt_pct(s["final_test_acc"], 1),
            fmt_step(s["last_step"]),
        ),
    }


# ----------------------------------------------------------------------------- sections


def _figure_div(fig, div_id: str) -> Markup:
    height = fig.layout.height or 450
    if fig.layout.template.layout.plot_bgcolor in (None, "#E5ECF6"):
        # Figures left on plotly's default (grey) template get the report's white one.
        fig.update_layout(template="plotly_white")
    return Markup(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config=PLOTLY_CONFIG,
            default_height=f"{height}px",
            validate=False,
        )
    )


def _section_context(sec: SectionResult, counter: list[int]) -> dict[str, Any]:
    figures = []
    for fig in sec.figures:
        counter[0] += 1
        try:
            figures.append({"html": _figure_div(fig, f"plot-{counter[0]}"), "error": None})
        except Exception as e:  # a figure that cannot be serialised is reported, not fatal
            figures.append({"html": None, "error": str(e)})
    return {**vars(sec), "figures": figures}


def render_page(
    rds: Sequence[RunData],
    sections: Sequence[SectionResult],
    threshold: float,
    title: str,
    light: bool,
) -> tuple[str, int]:
    """The report's HTML and its number of figure divs."""
    from plotly.offline import get_plotlyjs

    counter = [0]
    secs = [_section_context(s, counter) for s in sections]
    thr = fmt_pct(threshold)
    incomplete = any(s.status in ("not computed", "partial") for s in sections)
    css = resources.files("grokinterp.report").joinpath("templates/report.css").read_text()
    page = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            css=Markup(css),
            light=light,
            plotly_cdn=plotly_cdn_url() if light else "",
            plotly_js="" if light else Markup(get_plotlyjs()),
            runs=[_run_context(rd, threshold) for rd in rds],
            versions=_versions_text(rds[0].run),
            now=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            summary_header=(
                "run",
                "fit at step",
                "generalised at step",
                "delay",
                "ratio",
                "final train acc",
                "final test acc",
                "last step",
            ),
            summary_note=(
                f"Fit = first evaluated step with train accuracy ≥ {thr}; generalised = first "
                f"with test accuracy ≥ {thr} (grokinterp.analysis.curves.grok_times; --threshold "
                "sets the level); delay = the steps between them, ratio = generalised / fit."
            ),
            badges=BADGES,
            sections=secs,
            analyze_all=[f"grokinterp analyze {rd.run.path}" for rd in rds] if incomplete else [],
        )
    )
    return page, counter[0]
