"""Execute notebooks/04_groktransfer.ipynb end to end (reduced budget), as users would run it."""

import pytest


@pytest.mark.slow
def test_groktransfer_notebook_executes(tmp_path, run_notebook):
    runs = tmp_path / "runs"
    nb = run_notebook("04_groktransfer.ipynb", GROKINTERP_FAST="1", GROKINTERP_NB_OUT=runs)
    assert "fast mode" in nb.text and "E_W taken at step" in nb.text
    for kind in ("scratch", "transfer", "random_a"):
        assert (runs / kind / "run.json").is_file() and kind in nb.text
    assert "overlap" in nb.text and "merge at step" in nb.text
    assert nb.n_figures >= 6  # weak curve, comparison, spectra, heatmap, overlap x2, subspaces
