"""Helpers for the notebooks in ``notebooks/``: where their runs live, and figures that also
render statically.

* :func:`notebook_path` resolves a run folder from a notebook parameter, an environment variable
  or a per-user default (``$GROKINTERP_NB_DIR``, else ``$XDG_CACHE_HOME/grokinterp/notebooks``,
  else ``~/.cache/grokinterp/notebooks``), so a notebook runs the same from the repository, from
  a copy anywhere, or after ``pip install grokinterp[notebooks]``.
* :func:`static_images` makes every plotly figure carry a PNG next to its interactive JSON, so
  GitHub and nbviewer (which do not run plotly.js) show it. The PNG comes from kaleido driving the
  system Chromium (never a downloaded browser, as in :mod:`grokinterp.report.export`); without
  either, figures stay interactive only and the notebook says why once.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import plotly.io as pio
from plotly.io._base_renderers import PngRenderer

from grokinterp.report.export import find_chromium

__all__ = ["notebook_dir", "notebook_path", "static_images"]

RENDERER = "grokinterp_png"
# The interactive part: the plotly JSON mimetype (JupyterLab, Notebook 7, VS Code render it).
# Not "notebook", which would embed the 4 MB plotly.js bundle in the saved file.
INTERACTIVE = "plotly_mimetype"


def notebook_dir() -> Path:
    """Folder where the notebooks keep the runs they train: ``$GROKINTERP_NB_DIR``, else
    ``$XDG_CACHE_HOME/grokinterp/notebooks``, else ``~/.cache/grokinterp/notebooks``."""
    env = os.environ.get("GROKINTERP_NB_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "grokinterp" / "notebooks"


def notebook_path(value: str | Path | None, env: str, default: str) -> Path:
    """A notebook's run folder: ``value`` (its parameter cell) if set, else ``$<env>`` if set,
    else ``notebook_dir() / default``. Never the repository layout: a copied notebook resolves the
    same folder."""
    chosen = value or os.environ.get(env) or notebook_dir() / default
    return Path(chosen).expanduser()


class _SafePng(PngRenderer):
    """kaleido's PNG renderer that never breaks a cell: on a failure (browser gone, crash) the
    figure keeps its interactive output, and the first failure is reported."""

    failed = False
    server_stop_registered = False

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, str]:
        try:
            with warnings.catch_warnings():  # kaleido's server ignores per-call browser options
                warnings.simplefilter("ignore", UserWarning)
                return super().to_mimebundle(fig_dict)
        except Exception as e:  # any kaleido/choreographer failure: degrade, do not fail the cell
            if not _SafePng.failed:
                _SafePng.failed = True
                print(f"static image skipped ({type(e).__name__}: {e}); figure is interactive only")
            return {}


def _unavailable() -> str | None:
    """Why static images cannot be made here (None when kaleido and a Chromium are present)."""
    if importlib.util.find_spec("kaleido") is None:
        return "kaleido is not installed: pip install 'grokinterp[notebooks]'"
    chromium = find_chromium()
    if chromium is None:
        return "no system Chromium/Chrome (apt-get install chromium, or set GROKINTERP_CHROMIUM)"
    # choreographer (kaleido's browser driver) takes the browser from BROWSER_PATH.
    os.environ.setdefault("BROWSER_PATH", chromium)
    return None


def static_images(on: bool = True, scale: float = 1.0) -> bool:
    """Display every plotly figure with a static PNG next to its interactive JSON (True), or
    interactive only (False: ``on=False``, or kaleido / a Chromium is missing or fails to draw a
    test figure; the reason is printed). ``scale`` multiplies the figure's pixel size.

    One Chromium is kept running for the kernel's lifetime (kaleido's sync server), so a figure
    costs ~0.3 s after the first."""
    pio.renderers[RENDERER] = _SafePng(scale=scale)
    pio.renderers.default = INTERACTIVE
    if not on:
        return False
    reason = _unavailable()
    if reason is None:
        try:
            import kaleido

            kaleido.start_sync_server(silence_warnings=True)
            if not _SafePng.server_stop_registered:
                atexit.register(kaleido.stop_sync_server, silence_warnings=True)
                _SafePng.server_stop_registered = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                pio.to_image({"data": [{"y": [0, 1]}]}, format="png", width=40, height=30)
        except Exception as e:  # no working browser after all: say so, stay interactive
            reason = f"kaleido could not draw a test figure: {type(e).__name__}: {e}"
    if reason is not None:
        print(f"static images off ({reason}); figures are interactive only")
        return False
    _SafePng.failed = False
    pio.renderers.default = f"{INTERACTIVE}+{RENDERER}"
    return True
