"""Execute notebooks/01_fourier.ipynb top to bottom, as users would run it (< 2 min on CPU)."""

from __future__ import annotations

import pytest

from tests.conftest import copy_of_demo_run


@pytest.mark.slow
def test_fourier_notebook_on_existing_demo_run(tmp_path, run_notebook):
    """With a trained demo run (checkpoints/demo or demo_fourier), on a copy so that the shared
    run's analysis cache is left alone."""
    demo = copy_of_demo_run(tmp_path)
    if demo is None:
        pytest.skip("no trained demo run in checkpoints/")
    nb = run_notebook("01_fourier.ipynb", GROKINTERP_DEMO_RUN=demo)
    assert "key frequencies" in nb.text and "excluded loss starts rising" in nb.text
    assert nb.n_figures == 6
    assert (demo / "analysis" / "fourier.safetensors").is_file()
    assert nb.elapsed < 120


@pytest.mark.slow
def test_fourier_notebook_trains_demo(tmp_path, run_notebook):
    """From scratch: the notebook trains the demo run itself."""
    # training dominates (about a minute on 2 free cores); generous per-cell limit for busy machines
    nb = run_notebook("01_fourier.ipynb", timeout=900, GROKINTERP_DEMO_RUN=tmp_path / "demo")
    assert (tmp_path / "demo" / "run.json").is_file()
    assert "test accuracy >= 95 %" in nb.text
    assert nb.n_figures == 6
