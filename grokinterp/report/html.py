"""The self-contained HTML report of one run, or a comparison of several.

One HTML file opens from disk with no network: plotly.js is embedded once (``light=True`` links
it from the plotly CDN instead, for a ~5 MB smaller file), every figure is a ``<div>`` drawn by
that one copy. The page has

1. a header: task, model, training configuration, versions, seed, wall time, hardware;
2. a summary card: step of memorisation (first evaluated step with train accuracy ≥ the
   threshold, 99 % by default), step of generalisation (same for test accuracy), their ratio
   (the grokking delay of Power et al. 2022) and the final accuracies;
3. one section per analysis (:mod:`grokinterp.report.sections`), each with figures and a
   two-sentence reading computed from the data, or the command that computes it.

``summary.json`` (machine-readable headline numbers and section statuses) is written beside the
HTML file: ``summary.json`` for ``report.html``, ``<stem>.summary.json`` for any other name.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly
import plotly.io as pio

from grokinterp.config import GrokinterpError
from grokinterp.report.sections import (
    RunData,
    SectionResult,
    fmt_pct,
    fmt_step,
    render_sections,
)
from grokinterp.report.summary import (
    DEFAULT_THRESHOLD,
    check_threshold,
    report_summary,
    write_summary,
)
from grokinterp.store import Run, atomic_write_text

__all__ = [
    "PLOTLY_CONFIG",
    "ReportResult",
    "build_report",
    "export_pdf",
    "export_pngs",
    "find_chromium",
    "default_output",
    "open_runs",
    "plotly_cdn_url",
    "summary_path_for",
]

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}


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


def plotly_cdn_url() -> str:
    """The CDN address of the plotly.js version bundled with the installed plotly.py."""
    from plotly.offline import get_plotlyjs_version

    return f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"


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


# ----------------------------------------------------------------------------- header pieces

_MODEL_FIELDS = {
    "transformer": ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "normalization"),
    "embed_mlp": ("n_layers", "d_embed", "combine", "d_mlp", "mlp_out", "act_fn", "bias"),
    "mlp": ("n_layers", "d_mlp", "act_fn", "bias"),
}


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
    from grokinterp._version import __version__

    return f"trained with {trained or 'unknown versions'}; report by grokinterp {__version__}, plotly {plotly.__version__}"


def _wall_text(run: Run) -> str:
    w = run.info.get("wall_time_s")
    if w is None:
        return "—"
    return f"{w:.1f} s" if w < 120 else f"{w / 60:.1f} min ({w:.0f} s)"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _code_spans(text: str) -> str:
    """Escape ``text`` and turn `backticked` spans into <code>."""
    parts = _esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _header(rds: Sequence[RunData], title: str) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"<header><h1>{_esc(title)}</h1>"]
    if len(rds) == 1:
        run = rds[0].run
        cfg = run.config
        if cfg.notes:
            out.append(f'<p class="notes">{_esc(cfg.notes)}</p>')
        rows = [
            ("run", f"{run.path}"),
            ("task", f"{cfg.task.name} ({_kv(cfg.task.params)})"),
            ("model", _model_text(run)),
            ("training", _train_text(run)),
            ("seed", cfg.train.seed),
            (
                "status",
                f"{run.info.get('status', '?')}"
                + (
                    f", stopped early at step {run.info.get('final_step')}"
                    if run.info.get("stopped_early")
                    else ""
                )
                + f"; {len(run.steps)} checkpoints",
            ),
            ("wall time", _wall_text(run)),
            ("hardware", _hardware_text(run)),
            ("versions", _versions_text(run)),
        ]
        if cfg.parent:
            rows.insert(1, ("parent run", cfg.parent))
        out.append('<div class="meta-grid">')
        out += [f'<div class="k">{_esc(k)}</div><div class="v">{_esc(v)}</div>' for k, v in rows]
        out.append("</div>")
        out.append(
            "<details><summary>full configuration (run.json)</summary><pre>"
            + _esc(json.dumps(cfg.to_dict(), indent=2))
            + "</pre></details>"
        )
    else:
        out.append(f'<p class="notes">Comparison of {len(rds)} runs on shared axes.</p>')
        out.append(
            '<table class="meta"><tr><th>run</th><th>task</th><th>model</th>'
            "<th>training</th><th>seed</th><th>wall time</th><th>hardware</th></tr>"
        )
        for rd in rds:
            cfg = rd.run.config
            out.append(
                "<tr>"
                + "".join(
                    f"<td>{_esc(v)}</td>"
                    for v in (
                        f"{rd.label} ({rd.run.path})",
                        f"{cfg.task.name} ({_kv(cfg.task.params)})",
                        _model_text(rd.run),
                        _train_text(rd.run),
                        cfg.train.seed,
                        _wall_text(rd.run),
                        _hardware_text(rd.run),
                    )
                )
                + "</tr>"
            )
        out.append("</table>")
        out.append(f'<p class="small">{_esc(_versions_text(rds[0].run))}</p>')
    out.append(f'<p class="small">generated {now}</p></header>')
    return "\n".join(out)


def _tile(label: str, value: str, hint: str = "") -> str:
    return (
        f'<div class="tile"><div class="value">{_esc(value)}</div>'
        f'<div class="label">{_esc(label)}</div>'
        + (f'<div class="hint">{_esc(hint)}</div>' if hint else "")
        + "</div>"
    )


def _summary_card(rds: Sequence[RunData], threshold: float) -> str:
    thr = fmt_pct(threshold)
    note = (
        f"Memorisation = first evaluated step with train accuracy ≥ {thr}; generalisation = first "
        f"with test accuracy ≥ {thr} (threshold set by --threshold); delay = their ratio."
    )
    out = ['<section id="summary" class="card"><h2>Summary</h2>']
    if len(rds) == 1:
        s = rds[0].summary
        ratio = s.get("delay_ratio")
        out.append('<div class="tiles">')
        out.append(
            _tile("step of memorisation", fmt_step(s["step_memorization"]), f"train ≥ {thr}")
        )
        out.append(
            _tile("step of generalisation", fmt_step(s["step_generalization"]), f"test ≥ {thr}")
        )
        out.append(
            _tile("delay ratio", f"{ratio:.1f}×" if ratio else "—", "generalisation / memorisation")
        )
        out.append(
            _tile(
                "final train accuracy",
                fmt_pct(s["final_train_acc"], 1),
                f"step {fmt_step(s['last_step'])}",
            )
        )
        out.append(
            _tile(
                "final test accuracy",
                fmt_pct(s["final_test_acc"], 1),
                f"step {fmt_step(s['last_step'])}",
            )
        )
        out.append("</div>")
    else:
        out.append(
            '<table class="summary"><tr><th>run</th><th>memorisation</th>'
            "<th>generalisation</th><th>delay ratio</th><th>final train acc</th>"
            "<th>final test acc</th><th>last step</th></tr>"
        )
        for rd in rds:
            s = rd.summary
            ratio = s.get("delay_ratio")
            cells = (
                rd.label,
                fmt_step(s["step_memorization"]),
                fmt_step(s["step_generalization"]),
                f"{ratio:.1f}×" if ratio else "—",
                fmt_pct(s["final_train_acc"], 1),
                fmt_pct(s["final_test_acc"], 1),
                fmt_step(s["last_step"]),
            )
            out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
        out.append("</table>")
    out.append(f'<p class="small">{_esc(note)}</p></section>')
    return "\n".join(out)


_BADGE = {
    "ok": "computed",
    "partial": "partly computed",
    "not computed": "not computed",
    "not applicable": "not applicable",
    "unavailable": "not available in this version",
    "error": "error",
}


def _badge(status: str) -> str:
    cls = status.replace(" ", "-")
    return f'<span class="badge {cls}">{_esc(_BADGE.get(status, status))}</span>'


def _contents(sections: Sequence[SectionResult], rds: Sequence[RunData]) -> str:
    items = [
        f'<li><a href="#sec-{_esc(s.key)}">{_esc(s.title)}</a> {_badge(s.status)}</li>'
        for s in sections
    ]
    out = ['<nav class="card"><h2>Contents</h2><ul>', *items, "</ul>"]
    if any(s.status in ("not computed", "partial") for s in sections):
        cmds = " &amp;&amp; ".join(f"grokinterp analyze {_esc(rd.run.path)}" for rd in rds)
        out.append(f'<p class="small">Compute every analysis that applies: <code>{cmds}</code></p>')
    out.append("</nav>")
    return "\n".join(out)


def _figure_div(fig, div_id: str) -> str:
    height = fig.layout.height or 450
    if fig.layout.template.layout.plot_bgcolor in (None, "#E5ECF6"):
        # Figures left on plotly's default (grey) template get the report's white one.
        fig.update_layout(template="plotly_white")
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config=PLOTLY_CONFIG,
        default_height=f"{height}px",
        validate=False,
    )


def _section_html(sec: SectionResult, counter: list[int]) -> str:
    out = [
        f'<section id="sec-{_esc(sec.key)}" class="card section" data-status="{_esc(sec.status)}">'
    ]
    out.append(f"<h2>{_esc(sec.title)} {_badge(sec.status)}</h2>")
    if sec.description:
        out.append(f'<p class="desc">{_esc(sec.description)}</p>')
    if sec.reading:
        out.append(f'<p class="reading"><strong>Reading.</strong> {_esc(sec.reading)}</p>')
    if sec.notes:
        out.append(
            '<ul class="notes">'
            + "".join(f"<li>{_code_spans(n)}</li>" for n in sec.notes)
            + "</ul>"
        )
    if sec.commands and sec.status in ("not computed", "error", "partial"):
        out.append(
            '<p class="small">Compute it with: '
            + " ; ".join(f"<code>{_esc(c)}</code>" for c in sec.commands)
            + "</p>"
        )
    for fig in sec.figures:
        counter[0] += 1
        try:
            out.append(f'<div class="figure">{_figure_div(fig, f"plot-{counter[0]}")}</div>')
        except Exception as e:  # a figure that cannot be serialised is reported, not fatal
            out.append(f'<p class="error">figure could not be drawn: {_esc(e)}</p>')
    out.append("</section>")
    return "\n".join(out)


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --bg:#f5f6f8; --card:#fff; --accent:#2a5bd7; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header .notes { color: var(--muted); margin: 0 0 12px; }
table.meta, table.summary { border-collapse: collapse; width: 100%; background: var(--card);
  border-radius: 8px; overflow: hidden; font-size: 13.5px; }
table.meta th, table.meta td, table.summary th, table.summary td { text-align: left;
  padding: 5px 10px; border-bottom: 1px solid #e6e8ee; vertical-align: top; }
table.meta th { width: 120px; color: var(--muted); font-weight: 600; }
.meta-grid { display: grid; grid-template-columns: 90px minmax(0, 1fr) 90px minmax(0, 1fr);
  background: var(--card); border-radius: 8px; padding: 6px 10px; font-size: 13.5px;
  column-gap: 10px; row-gap: 3px; }
.meta-grid .k { color: var(--muted); font-weight: 600; }
.meta-grid .v { overflow-wrap: anywhere; }
details { margin: 8px 0; } pre { background:#f0f2f6; padding:10px; overflow:auto; font-size:12px; }
.card { background: var(--card); border-radius: 10px; padding: 16px 20px; margin: 18px 0;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card h2 { margin: 0 0 10px; font-size: 20px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { flex: 1 1 170px; background: #f3f6fd; border-radius: 8px; padding: 12px 14px; }
.tile .value { font-size: 28px; font-weight: 700; color: var(--accent); }
.tile .label { font-weight: 600; } .tile .hint { color: var(--muted); font-size: 12.5px; }
.small { color: var(--muted); font-size: 12.5px; }
.desc { color: var(--muted); margin-top: 0; }
.reading { background: #fff8e6; border-left: 4px solid #f0b400; padding: 8px 12px; border-radius: 4px; }
ul.notes { color: #6a4b00; }
.badge { font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px;
  vertical-align: middle; background: #e3e6ec; color: #3d4454; }
.badge.ok { background: #dff3e4; color: #1b6b32; } .badge.partial { background:#fff1cc; color:#7a5a00; }
.badge.error { background: #fde2e1; color: #a1241c; }
.badge.not-applicable, .badge.unavailable { background: #eceef2; color: #6b7280; }
nav ul { columns: 2; margin: 0; } code { background: #eef1f6; padding: 1px 5px; border-radius: 4px;
  font-size: 12.5px; }
.figure { margin: 10px 0 18px; }
.error { color: #a1241c; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 20px; }
"""


def _page(title: str, body: str, light: bool) -> str:
    if light:
        plotly_tag = f'<script src="{plotly_cdn_url()}" charset="utf-8"></script>'
    else:
        from plotly.offline import get_plotlyjs

        # MathJaxConfig 'local' keeps plotly.js from ever fetching MathJax from a CDN.
        plotly_tag = (
            "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
            f'<script id="plotlyjs" type="text/javascript">{get_plotlyjs()}</script>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="grokinterp">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n{plotly_tag}\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


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
        threshold: accuracy defining memorisation / generalisation (default 0.99).
        recompute: recompute a corrupt analysis cache (else the section reports it).
        only: restrict to these section keys (default: all).
        title: page title (default from the run names).
    """
    threshold = check_threshold(threshold)
    opened = open_runs(runs if not isinstance(runs, str | Path | Run) else [runs])
    labels = _labels(opened)
    from grokinterp.report.summary import run_summary

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
    sections = render_sections(rds, only=only)
    counter = [0]
    body = "\n".join(
        [
            _header(rds, title),
            _summary_card(rds, threshold),
            _contents(sections, rds),
            *[_section_html(s, counter) for s in sections],
            "<footer>grokinterp · plotly.js "
            + ("linked from its CDN (needs network)" if light else "embedded (works offline)")
            + "</footer>",
        ]
    )
    page = _page(title, body, light)
    atomic_write_text(out, page)
    sec_status = {
        s.key: {"title": s.title, "status": s.status, "reading": s.reading, "notes": s.notes}
        for s in sections
    }
    summary = report_summary(opened, threshold, sections=sec_status, report_path=out)
    summary["report_bytes"] = out.stat().st_size
    summary["light"] = light
    spath = write_summary(summary_path_for(out), summary)
    return ReportResult(out, spath, out.stat().st_size, sections, summary, counter[0], light)


# ----------------------------------------------------------------------------- static export

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Headless, offline, no first-run or background traffic (this machine's network is closed).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
NO_BROWSER = (
    "needs a system Chromium or Chrome (Debian/Ubuntu: apt-get install chromium), or set "
    "GROKINTERP_CHROMIUM=/path/to/chrome; grokinterp never downloads a browser"
)


def find_chromium() -> str | None:
    """Path of a system Chromium/Chrome: ``$GROKINTERP_CHROMIUM``, else the first of
    :data:`CHROMIUM_NAMES` on ``PATH`` (None if there is none)."""
    import os
    import shutil

    env = os.environ.get("GROKINTERP_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def export_pdf(html_path: str | Path, pdf_path: str | Path, timeout: float = 240) -> Path:
    """Print the report (figures included) to one PDF with the system Chromium in headless mode.

    The whole page is printed, so the PDF holds the header, summary, readings and figures; no
    browser is ever downloaded (a clear error says what to install).
    """
    import subprocess
    import tempfile

    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path)
    if not html_path.is_file():
        raise GrokinterpError(f"html_path={str(html_path)!r} does not exist")
    chromium = find_chromium()
    if chromium is None:
        raise GrokinterpError(f"PDF export {NO_BROWSER}")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_pdf = pdf_path.with_name(f".{pdf_path.name}.tmp")
    with tempfile.TemporaryDirectory(prefix="grokinterp-chromium-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            "--virtual-time-budget=5000",  # let plotly finish drawing before printing
            f"--print-to-pdf={tmp_pdf}",
            html_path.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GrokinterpError(
                f"Chromium did not print {html_path} within {timeout:.0f} s"
            ) from None
    if proc.returncode != 0 or not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise GrokinterpError(f"Chromium could not print the report to PDF: {' | '.join(tail)}")
    tmp_pdf.replace(pdf_path)
    return pdf_path


def export_pngs(
    sections: Sequence[SectionResult], out_dir: str | Path, scale: float = 2.0
) -> list[Path]:
    """Write every figure of ``sections`` as ``<section>-<n>.png`` with kaleido, driving the
    system Chromium (``BROWSER_PATH``); kaleido is the optional ``export`` extra. Never downloads
    a browser: without kaleido or Chromium a GrokinterpError says what to install."""
    import importlib.util
    import os

    if importlib.util.find_spec("kaleido") is None:
        raise GrokinterpError(
            "PNG export needs kaleido, which is not installed: pip install kaleido (grokinterp's "
            "optional 'export' extra); kaleido then drives the system Chromium (apt-get install "
            "chromium)"
        )
    chromium = find_chromium()
    if chromium is None:
        raise GrokinterpError(f"PNG export {NO_BROWSER}")
    # choreographer (kaleido's browser driver) takes the browser from BROWSER_PATH.
    os.environ["BROWSER_PATH"] = chromium
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs, paths = [], []
    for sec in sections:
        for i, fig in enumerate(sec.figures, 1):
            figs.append(fig)
            paths.append(out_dir / f"{sec.key}-{i}.png")
    if not figs:
        return []
    try:
        pio.write_images(figs, paths, format="png", scale=scale)
    except Exception as e:  # kaleido/choreographer failures (no browser, crash): say so plainly
        raise GrokinterpError(
            f"kaleido could not export PNGs with {chromium}: {type(e).__name__}: {e}"
        ) from None
    return paths
