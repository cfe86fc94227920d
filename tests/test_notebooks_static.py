"""grokinterp.report.notebook: where the notebooks' runs live, and static PNGs next to the
interactive figures (interactive only, never an error, when kaleido or a Chromium is missing)."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from grokinterp.report import notebook as nbh
from tests.conftest import static_images_available

FIG = go.Figure(go.Scatter(y=[0, 1, 3]))
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture(autouse=True)
def _restore_renderer():
    before = pio.renderers.default
    yield
    pio.renderers.default = before


def test_notebook_path_precedence(tmp_path, monkeypatch):
    """Parameter > the notebook's variable > $GROKINTERP_NB_DIR > $XDG_CACHE_HOME > ~/.cache."""
    for key in ("GROKINTERP_NB_DIR", "GROKINTERP_DEMO_RUN", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_default = tmp_path / "home" / ".cache" / "grokinterp" / "notebooks" / "demo"
    assert nbh.notebook_path(None, "GROKINTERP_DEMO_RUN", "demo") == home_default
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert nbh.notebook_path(None, "GROKINTERP_DEMO_RUN", "demo") == (
        tmp_path / "xdg" / "grokinterp" / "notebooks" / "demo"
    )
    monkeypatch.setenv("GROKINTERP_NB_DIR", str(tmp_path / "nbdir"))
    assert nbh.notebook_path(None, "GROKINTERP_DEMO_RUN", "demo") == tmp_path / "nbdir" / "demo"
    monkeypatch.setenv("GROKINTERP_DEMO_RUN", str(tmp_path / "env-run"))
    assert nbh.notebook_path(None, "GROKINTERP_DEMO_RUN", "demo") == tmp_path / "env-run"
    assert nbh.notebook_path(tmp_path / "p", "GROKINTERP_DEMO_RUN", "demo") == tmp_path / "p"
    assert nbh.notebook_path("~/r", "GROKINTERP_DEMO_RUN", "demo") == tmp_path / "home" / "r"


def test_no_browser_means_interactive_only(monkeypatch, capsys):
    monkeypatch.setenv("GROKINTERP_CHROMIUM", "/nonexistent/chrome")
    assert nbh.static_images() is False
    assert "interactive only" in capsys.readouterr().out
    bundle = FIG._repr_mimebundle_()
    assert PLOTLY in bundle and "image/png" not in bundle
    assert nbh.static_images(on=False) is False and pio.renderers.default == nbh.INTERACTIVE


def test_png_failure_keeps_the_interactive_figure(monkeypatch, capsys):
    """A renderer failure (browser crash) must not fail the cell: no PNG, one message."""

    def boom(self, fig_dict):
        raise RuntimeError("browser went away")

    monkeypatch.setattr(nbh.PngRenderer, "to_mimebundle", boom)
    monkeypatch.setattr(nbh._SafePng, "failed", False)
    pio.renderers[nbh.RENDERER] = nbh._SafePng()
    pio.renderers.default = f"{nbh.INTERACTIVE}+{nbh.RENDERER}"
    for _ in range(2):
        bundle = FIG._repr_mimebundle_()
        assert PLOTLY in bundle and "image/png" not in bundle
    assert capsys.readouterr().out.count("browser went away") == 1


@pytest.mark.slow
@pytest.mark.browser
def test_static_images_add_a_png(monkeypatch):
    if not static_images_available():
        pytest.skip("needs kaleido and a system Chromium")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    assert nbh.static_images() is True
    bundle = FIG._repr_mimebundle_()
    assert PLOTLY in bundle
    import base64

    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
