"""Execute notebooks/03_dynamics.ipynb top to bottom, as users would run it (≤ 3 min on CPU).

It trains the omnigrok-digits preset and uses a copy of the demo run when one exists in
checkpoints/ (else trains the demo too), so that no shared run's analysis cache is touched.
"""

import pytest

from tests.conftest import copy_of_demo_run


@pytest.mark.slow
def test_dynamics_notebook(tmp_path, run_notebook):
    demo = copy_of_demo_run(tmp_path) or tmp_path / "demo"
    nb = run_notebook(
        "03_dynamics.ipynb",
        timeout=600,
        GROKINTERP_DIGITS_RUN=tmp_path / "digits",
        GROKINTERP_DEMO_RUN=demo,
    )
    text = nb.text
    assert nb.n_figures == 6
    assert "grokking ratio" in text and "phases: descent=" in text
    assert "fit_step" in text and "generalize_step" in text
    assert "robustness   skipped: PGD robustness needs vector inputs" in text
    for name in ("rank", "complexity", "norms", "robustness"):
        assert (tmp_path / "digits" / "analysis" / f"{name}.safetensors").is_file()
    # A clear delay on the preset: test accuracy half-way ≥ 3x later than the train set is fitted.
    ratio = float(text.split("test half-way / train fitted = ")[1].split("x")[0])
    assert ratio >= 3.0
    print(f"notebook executed in {nb.elapsed:.0f} s")  # ≤ 3 min on a quiet 2-core machine
