"""Execute notebooks/02_tickets.ipynb end to end (reduced budget), as users would run it."""

import pytest


@pytest.mark.slow
def test_tickets_notebook_executes(tmp_path, run_notebook):
    nb = run_notebook("02_tickets.ipynb", GROKINTERP_FAST="1", GROKINTERP_NB_OUT=tmp_path / "runs")
    assert "fast mode" in nb.text and "ticket post-generalization" in nb.text
