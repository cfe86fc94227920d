"""Execute notebooks/04_groktransfer.ipynb (full budget, < 3 min on 2 cores) from a copy outside
the repository and check the effects it reports (Xu et al., GrokTransfer): with the weak model's
embedding the target generalises far sooner than from scratch, a random A does not help, and the
target's key frequencies are E_W's."""

import pytest

from tests.conftest import static_images_available


@pytest.mark.slow
def test_groktransfer_notebook_transfer_generalizes_sooner(tmp_path, run_notebook):
    nb = run_notebook("04_groktransfer.ipynb", timeout=900)  # nothing set: the default folder
    runs = tmp_path / "cache" / "grokinterp" / "notebooks" / "04_groktransfer"
    s = nb.summary
    assert s["out"] == str(runs) and not s["fast"]
    for kind in ("weak", "scratch", "transfer", "random_a", "merge/transfer"):
        assert (runs / kind / "run.json").is_file()
    # the weak model never solves the task, yet its embedding has a few clean circles
    assert s["weak"]["best_test_acc"] < 0.6 and 1 <= len(s["weak"]["key_frequencies"]) <= 3
    t = s["targets"]
    never = float("inf")
    gen = t["transfer"]["generalize_step"]
    assert gen is not None and t["transfer"]["final_test_acc"] >= 0.95
    assert 3 * gen <= (t["scratch"]["generalize_step"] or never)  # scratch: no grokking in budget
    assert 3 * gen <= (t["random_a"]["generalize_step"] or never)  # the structure, not the norm
    assert t["scratch"]["fit_step"] is not None  # scratch memorises: the delay is real
    # the transfer target's key frequencies are E_W's, far above the permutation baseline
    inh = s["inherited"]["transfer"]
    assert inh["generalized"] and sorted(inh["target_keys"]) == sorted(inh["weak_keys"])
    assert inh["overlap"] == 1.0 > 3 * inh["overlap_baseline"] and inh["overlap_p_value"] < 0.05
    assert inh["energy_in_weak_keys"] > 0.9 > inh["energy_chance"]
    # merging A·B early keeps the speed-up
    assert s["merged_generalize_step"] is not None
    assert s["merged_generalize_step"] < (t["scratch"]["generalize_step"] or never)
    assert nb.n_figures >= 6  # weak curve, comparison, spectra, heatmap, overlap x2, subspaces
    if static_images_available():
        assert nb.n_images == nb.n_figures
    print(f"notebook executed in {nb.elapsed:.0f} s")
