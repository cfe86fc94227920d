"""Static exports of a report, with the system Chromium (never a downloaded browser): the whole
page printed to one PDF, and every figure as a PNG through kaleido (the optional ``export``
extra)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import plotly.io as pio

from grokinterp.config import GrokinterpError
from grokinterp.report.sections import SectionResult

__all__ = ["CHROMIUM_FLAGS", "export_pdf", "export_pngs", "find_chromium"]

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
