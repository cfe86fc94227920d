"""Execute notebooks/03_dynamics.ipynb from a copy outside the repository (< 3 min on 2 cores)
and check that the measured quantities move as the notebook says they do.

It trains the omnigrok-digits preset and reads a private copy of the session's grokked demo run
(tests/conftest.py), so that no shared run's analysis cache is touched.
"""

import pytest

from tests.conftest import static_images_available


@pytest.mark.slow
def test_dynamics_notebook(tmp_path, run_notebook, grokked_demo):
    nb = run_notebook(
        "03_dynamics.ipynb",
        timeout=900,
        GROKINTERP_DIGITS_RUN=tmp_path / "digits",
        GROKINTERP_DEMO_RUN=grokked_demo,
    )
    for name in ("rank", "complexity", "norms", "robustness"):
        assert (tmp_path / "digits" / "analysis" / f"{name}.safetensors").is_file()
    d = nb.summary["digits"]
    # Omnigrok: memorises first, test accuracy half-way ≥ 3x later than the train set is fitted
    assert d["grokking_ratio"] >= 3.0
    # Local complexity (Humayun et al.): the first descent comes in the first ~100 steps, before
    # anything is fitted; the ascent runs through memorisation and the test-accuracy rise
    lc = d["complexity"]["train"]
    assert lc["descent"] and lc["ascent"]
    assert lc["first_min_step"] <= 150 < d["fit_step"]
    assert lc["peak_step"] >= d["test_half_step"] and lc["peak_value"] > lc["first_min_value"]
    # Sparse/dense (Merrill et al.): k is (nearly) the whole layer when the train set is fitted
    # and falls by the end; the final sparse set overtakes its complement in norm
    for layer in d["norms"].values():
        assert layer["k_at_fit"] >= 180 and layer["k_final"] <= 0.6 * 200
        assert layer["sparse_l2_start"] < layer["dense_l2_start"]
        assert layer["sparse_l2_final"] > layer["dense_l2_final"]
    # Delayed robustness: PGD accuracy rises late, after the test accuracy's own half-way point
    r = d["robustness"]["0.01"]
    assert r["final"] > r["start"] + 0.5 and r["half_step"] >= d["test_half_step"]
    # the demo transformer: PGD robustness does not apply to tokens; the others do
    demo_s = nb.summary["demo"]
    assert not demo_s["applicable"]["robustness"]
    assert all(demo_s["applicable"][k] for k in ("rank", "complexity", "norms"))
    assert 0 < demo_s["norms_k_final"] < demo_s["d_mlp"]
    assert nb.n_figures == 6
    if static_images_available():
        assert nb.n_images == nb.n_figures
    print(f"notebook executed in {nb.elapsed:.0f} s")  # ≤ 3 min on a quiet 2-core machine
