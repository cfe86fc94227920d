"""Execute notebooks/01_fourier.ipynb from a copy outside the repository (< 3 min on 2 cores) and
check the effects it reports (Nanda et al. 2023): a few key frequencies, the restricted loss
falling and the excluded loss rising before the test loss falls, the spectra sparsifying."""

from __future__ import annotations

import pytest

from tests.conftest import static_images_available


@pytest.mark.slow
def test_fourier_notebook_on_a_grokked_demo_run(tmp_path, run_notebook, grokked_demo):
    """Copied out of the repo with GROKINTERP_DEMO_RUN pointing at a grokked demo run (a private
    copy of the session's, as a user's `checkpoints/demo`), the notebook opens it, retrains
    nothing, analyses it and shows Nanda et al.'s progress measures. (Training the run when the
    folder is empty is the same `train` call the other slow tests make; it cost CI 2 minutes.)"""
    before = sorted(p.name for p in (grokked_demo / "steps").iterdir())
    nb = run_notebook("01_fourier.ipynb", timeout=900, GROKINTERP_DEMO_RUN=grokked_demo)
    demo = grokked_demo
    assert sorted(p.name for p in (demo / "steps").iterdir()) == before  # nothing retrained
    s = nb.summary
    assert s["run"] == str(demo) and (demo / "run.json").is_file()
    assert (demo / "analysis" / "fourier.safetensors").is_file()
    # the run grokked: memorised early, generalised much later
    assert s["final_test_acc"] >= 0.95 and s["fit_step"] * 5 < s["generalize_step"]
    # a handful of key frequencies carry the logits
    keys = s["key_frequencies"]
    assert 1 <= len(keys) <= 8 and all(1 <= k <= 29 for k in keys)
    assert s["logit_key_fraction_final"] > 0.9
    assert s["restricted_loss_final"] < 0.01 < 1.0 < s["excluded_loss_final"]
    # progress measures move before the test loss: the restricted loss is half-way down before
    # the test loss is, and the excluded loss starts rising during the plateau
    assert s["restricted_loss_fall_step"] < s["test_loss_fall_step"]
    assert s["excluded_rise_step"] < s["test_loss_fall_step"]
    # the embedding and W_L spectra sparsify (Gini rises), neurons cluster on key frequencies
    assert s["embed_gini_final"] > s["embed_gini_start"] + 0.2
    assert s["wl_gini_final"] > s["wl_gini_start"] + 0.2
    per_key = s["neurons_per_key_frequency"]
    assert all(n > 0 for n in per_key.values()) and sum(per_key.values()) >= 0.8 * s["n_neurons"]
    assert s["neurons_85_final"] > 0.5
    assert nb.n_figures == 6
    if static_images_available():
        assert nb.n_images == nb.n_figures  # every figure also renders on GitHub/nbviewer
    metrics = (demo / "metrics.jsonl").stat().st_mtime_ns
    again = run_notebook("01_fourier.ipynb", where="again", GROKINTERP_DEMO_RUN=demo)
    assert (demo / "metrics.jsonl").stat().st_mtime_ns == metrics  # opened, not retrained
    assert again.summary == s  # the same run, the same numbers
    print(f"notebook executed in {nb.elapsed:.0f} s (training), then {again.elapsed:.0f} s")
