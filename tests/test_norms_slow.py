"""Scientific check on the merrill2023-parity preset (Merrill, Tsilivis, Shukla 2023): after
grokking a handful of large-norm neurons reproduce the model, and that sparse set overtakes the
rest in norm; PGD robustness is delayed. Trains the preset (~15 s on a quiet 2-core machine)."""

from __future__ import annotations

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis.curves import grok_times
from grokinterp.config import load_preset
from grokinterp.training import train


@pytest.mark.slow
def test_parity_sparse_subnetwork_and_delayed_robustness(tmp_path):
    torch.set_num_threads(1)
    run = train(load_preset("merrill2023-parity"), tmp_path / "parity", progress=False)
    m = run.metrics
    times = grok_times(m)
    t_fit, t_gen = times.fit_step, times.generalize_step
    assert t_fit is not None and t_gen is not None and t_gen > 2 * t_fit  # grokking delay
    res = over_training(
        run, {"norms": {}, "robustness": {"eps": [0.3], "n_samples": 300}}, progress=False
    )
    steps = res["steps"].tolist()
    i_fit = max(i for i, s in enumerate(steps) if s <= t_fit)
    k_final = int(res["norms/final_k/0"][0])
    assert k_final <= 20  # out of 1000 neurons
    assert int(res["norms/k/0"][i_fit]) > 5 * k_final  # the memorizing model needs many more
    sparse, dense = res["norms/final_sparse_l2/0"], res["norms/final_dense_l2/0"]
    assert sparse[i_fit] < dense[i_fit] and sparse[-1] > dense[-1]
    assert sparse[-1] > 2 * sparse[i_fit]  # the sparse set's norm grows through the transition
    pgd = res["robustness/accuracy"][:, 0]
    assert pgd[i_fit] < 0.3 and pgd[-1] > 0.8
