"""End-to-end: the report renders in headless Chromium, offline, with no console errors.

Drives the system Chromium (Debian ``chromium``; ``$GROKINTERP_CHROMIUM`` overrides) through
Playwright's Python package with ``executable_path`` (Playwright never downloads a browser
here). Every plotly div must hold an SVG with data drawn (line paths, bars/markers or heatmap
images); any request to a non-file URL is blocked and fails the test (the report must work
offline). Screenshots go to ``artifacts/`` (git-ignored): the first screen and one analysis
section, for a tiny run and, when ``checkpoints/demo`` holds a run (``make run``), for the demo.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from grokinterp.report.html import CHROMIUM_FLAGS, build_report, find_chromium

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
FLAGS = list(CHROMIUM_FLAGS)

# Per plot: does it have an SVG, and how many drawn data elements.
PLOT_STATE_JS = """
() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
  const lines = Array.from(d.querySelectorAll('.scatterlayer path.js-line'))
      .filter(p => (p.getAttribute('d') || '').length > 8).length;
  const marks = d.querySelectorAll('.scatterlayer path.point, .barlayer .point path').length;
  const images = d.querySelectorAll('.heatmaplayer image').length;
  return {id: d.id, svg: d.querySelectorAll('svg.main-svg').length,
          traces: (d._fullData || []).length, data: lines + marks + images,
          title: ((d._fullLayout || {}).title || {}).text || ''};
})
"""


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no system Chromium found (apt-get install chromium, or set GROKINTERP_CHROMIUM); "
            "the browser test needs one and never downloads a browser"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install playwright)")
    return path


def render_in_chromium(html: Path, shots: str, section: str | None = None) -> dict:
    """Open ``html`` in headless Chromium; return plot states, console errors, blocked
    requests; save ``artifacts/<shots>_first_screen.png`` and ``<shots>_section.png``."""
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    errors: list[str] = []
    external: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            external.append(url)
            r.abort()

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="gi-chromium-") as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            ctx.route("**/*", route)
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.as_uri(), wait_until="load", timeout=120_000)
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".every(d => d._fullLayout && d.querySelector('svg.main-svg'))",
                timeout=120_000,
            )
            page.wait_for_timeout(300)  # let transitions settle before the screenshot
            plots = page.evaluate(PLOT_STATE_JS)
            page.screenshot(path=str(ARTIFACTS / f"{shots}_first_screen.png"))
            target = page.locator(f"#sec-{section}") if section else None
            if target is not None and target.count():
                target.scroll_into_view_if_needed()
                target.screenshot(path=str(ARTIFACTS / f"{shots}_section.png"))
            statuses = page.evaluate(
                "Object.fromEntries(Array.from(document.querySelectorAll('section.section'))"
                ".map(s => [s.id, s.dataset.status]))"
            )
        finally:
            ctx.close()
    return {"plots": plots, "errors": errors, "external": external, "statuses": statuses}


def _assert_rendered(state: dict, n_figures: int) -> None:
    plots = state["plots"]
    assert len(plots) == n_figures > 0
    for p in plots:
        assert p["svg"] >= 1, p
        assert p["traces"] >= 1 and p["data"] >= 1, f"plot without drawn data: {p}"
    assert not state["errors"], state["errors"]
    assert not state["external"], f"the offline report requested {state['external']}"


def test_tiny_report_renders_every_plot_offline(tmp_path, tiny_config):
    _chromium()
    import grokinterp.analysis as analysis
    from grokinterp.training import train

    run = train(tiny_config, tmp_path / "tiny", progress=False)
    light = {"complexity": {"n_samples": 16, "n_directions": 4}, "rank": {"n_samples": 64}}
    names = [n for n, why in analysis.applicable(run).items() if why is None]
    analysis.over_training(run, {n: light.get(n, {}) for n in names}, progress=False)
    result = build_report(run)
    state = render_in_chromium(result.html_path, "tiny_report", "fourier")
    _assert_rendered(state, result.n_figures)
    assert state["statuses"]["sec-fourier"] == "ok"
    assert (ARTIFACTS / "tiny_report_first_screen.png").stat().st_size > 10_000
    assert (ARTIFACTS / "tiny_report_section.png").stat().st_size > 10_000


def _screenshot_demo(demo: Path, tmp_path: Path) -> None:
    result = build_report(demo, tmp_path / "demo.html", recompute=False)
    section = next(
        (s.key for s in result.sections if s.key != "training" and s.status == "ok"), "training"
    )
    state = render_in_chromium(result.html_path, "demo_report", section)
    _assert_rendered(state, result.n_figures)
    shutil.copy(result.html_path, ARTIFACTS / "demo_report.html")


def test_demo_report_screenshots(tmp_path):
    """The `make run` demo report (``checkpoints/demo``, or ``$GROKINTERP_DEMO_RUN``) if that run
    exists: rendered from its cached analyses into a temporary file (nothing is written into the
    run), screenshots in artifacts/demo_report_*."""
    _chromium()
    demo = Path(os.environ.get("GROKINTERP_DEMO_RUN", ROOT / "checkpoints" / "demo"))
    if not (demo / "run.json").is_file():
        pytest.skip(f"{demo} holds no run; `make run` creates it (test-slow trains one itself)")
    _screenshot_demo(demo, tmp_path)


@pytest.mark.slow  # analyses a grokked demo run (trained once per session): `make test-slow`
def test_demo_report_screenshots_from_the_main_job(tmp_path, grokked_demo):
    """`grokinterp run` (train → analyze → report) on a copy of a finished demo run — it trains
    nothing more, analyses every checkpoint and writes the report — then the same rendering
    checks and screenshots as above."""
    _chromium()
    from typer.testing import CliRunner

    from grokinterp.cli import app

    result = CliRunner().invoke(app, ["run", "--out", str(grokked_demo), "--quiet"])
    assert result.exit_code == 0, result.output
    _screenshot_demo(grokked_demo, tmp_path)


@pytest.mark.slow  # printing and kaleido start extra browsers: run by `make test-slow`
def test_static_export_uses_the_system_chromium(tmp_path, tiny_config):
    """--pdf prints the whole report with the system Chromium; --png-dir writes every figure
    with kaleido driving that same Chromium (checked only where kaleido is installed)."""
    _chromium()
    from grokinterp.report.html import export_pdf, export_pngs
    from grokinterp.training import train

    run = train(tiny_config, tmp_path / "tiny", progress=False)
    result = build_report(run)
    pdf = export_pdf(result.html_path, tmp_path / "report.pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return  # the optional `export` extra is absent: test_report checks its message
    pngs = export_pngs(result.sections, tmp_path / "png")
    assert len(pngs) == result.n_figures
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
