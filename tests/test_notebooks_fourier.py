"""Execute notebooks/01_fourier.ipynb top to bottom, as users would run it (< 2 min on CPU)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_fourier.ipynb"


def _execute(monkeypatch, run_dir: Path, timeout: int = 300) -> tuple[list, float]:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("GROKINTERP_DEMO_RUN", str(run_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    return outputs, elapsed


def _text(outputs: list) -> str:
    return "\n".join(o.get("text", "") for o in outputs)


def _n_figures(outputs: list) -> int:
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_fourier_notebook_on_existing_demo_run(tmp_path, monkeypatch):
    """With a trained demo run (checkpoints/demo or demo_fourier), on a copy so that the shared
    run's analysis cache is left alone."""
    src = next(
        (
            ROOT / "checkpoints" / n
            for n in ("demo", "demo_fourier")
            if (ROOT / "checkpoints" / n / "run.json").is_file()
        ),
        None,
    )
    if src is None:
        pytest.skip("no trained demo run in checkpoints/")
    dst = tmp_path / "demo"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "state"))
    outputs, elapsed = _execute(monkeypatch, dst)
    text = _text(outputs)
    assert "key frequencies" in text and "excluded loss starts rising" in text
    assert _n_figures(outputs) == 6
    assert (dst / "analysis" / "fourier.safetensors").is_file()
    assert elapsed < 120


@pytest.mark.slow
def test_fourier_notebook_trains_demo(tmp_path, monkeypatch):
    """From scratch: the notebook trains the demo run itself."""
    # training dominates (about a minute on 2 free cores); generous per-cell limit for busy machines
    outputs, elapsed = _execute(monkeypatch, tmp_path / "demo", timeout=900)
    assert (tmp_path / "demo" / "run.json").is_file()
    assert "test accuracy >= 95 %" in _text(outputs)
    assert _n_figures(outputs) == 6
