"""Execute notebooks/01_fourier.ipynb top to bottom, as users would run it (< 2 min on CPU)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_fourier_notebook_trains_the_demo_then_reuses_it(tmp_path, run_notebook):
    """On a clean clone: the first execution trains the demo run itself (about a minute on 2
    free cores); the second opens that run, as it opens a user's `checkpoints/demo`, and
    retrains nothing."""
    demo = tmp_path / "demo"
    # training dominates; a generous per-cell limit for busy machines
    nb = run_notebook("01_fourier.ipynb", timeout=900, GROKINTERP_DEMO_RUN=demo)
    assert (demo / "run.json").is_file()
    assert "test accuracy >= 95%" in nb.text and "generalize_step" in nb.text
    assert "key frequencies" in nb.text and "excluded loss starts rising" in nb.text
    assert nb.n_figures == 6
    assert (demo / "analysis" / "fourier.safetensors").is_file()
    metrics = (demo / "metrics.jsonl").stat().st_mtime_ns
    again = run_notebook("01_fourier.ipynb", GROKINTERP_DEMO_RUN=demo)
    assert (demo / "metrics.jsonl").stat().st_mtime_ns == metrics  # opened, not retrained
    assert again.text == nb.text and again.n_figures == 6  # the same run, the same numbers
    print(f"notebook executed in {nb.elapsed:.0f} s (training), then {again.elapsed:.0f} s")
