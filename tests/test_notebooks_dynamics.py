"""Execute notebooks/03_dynamics.ipynb top to bottom, as users would run it (≤ 3 min on CPU).

It trains the omnigrok-digits preset and uses a copy of the demo run when one exists in
checkpoints/ (else trains the demo too), so that no shared run's analysis cache is touched.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_dynamics.ipynb"


@pytest.mark.slow
def test_dynamics_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    src = next(
        (
            ROOT / "checkpoints" / n
            for n in ("demo", "demo_fourier")
            if (ROOT / "checkpoints" / n / "run.json").is_file()
        ),
        None,
    )
    demo = tmp_path / "demo"
    if src is not None:
        shutil.copytree(src, demo, ignore=shutil.ignore_patterns("analysis", "state"))
    monkeypatch.setenv("GROKINTERP_DIGITS_RUN", str(tmp_path / "digits"))
    monkeypatch.setenv("GROKINTERP_DEMO_RUN", str(demo))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "\n".join(o.get("text", "") for o in outputs)
    n_figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    assert n_figures == 6
    assert "grokking delay" in text and "phases: descent=" in text
    assert "robustness   skipped: PGD robustness needs vector inputs" in text
    for name in ("rank", "complexity", "norms", "robustness"):
        assert (tmp_path / "digits" / "analysis" / f"{name}.safetensors").is_file()
    # A clear delay on the preset: test accuracy half-way ≥ 3x later than the train set is fitted.
    delay = float(text.split("test half-way / train fitted = ")[1].split("x")[0])
    assert delay >= 3.0
    print(f"notebook executed in {elapsed:.0f} s")
    assert elapsed < 300  # ≤ 3 min on a quiet 2-core machine; headroom for a shared one
