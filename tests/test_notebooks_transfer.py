"""Execute notebooks/04_groktransfer.ipynb end to end (reduced budget), as users would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_groktransfer.ipynb"


@pytest.mark.slow
def test_groktransfer_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("GROKINTERP_FAST", "1")
    monkeypatch.setenv("GROKINTERP_NB_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "\n".join(o.get("text", "") for o in outputs)
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert "fast mode" in text and "E_W taken at step" in text
    for kind in ("scratch", "transfer", "random_a"):
        assert (tmp_path / "runs" / kind / "run.json").is_file()
        assert kind in text
    assert "overlap" in text and "merge at step" in text
