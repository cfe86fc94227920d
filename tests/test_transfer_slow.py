"""Scientific check at CPU size (slow): GrokTransfer removes the grokking delay on (a+b) mod 59,
a random A of the same norm does not, and the target keeps E_W's key frequencies (Xu, Ni, Wang,
Hu 2025, "Let Me Grok for You")."""

from __future__ import annotations

import pytest

from grokinterp.analysis import over_training
from grokinterp.analysis.transfer import transfer_summary
from grokinterp.experiments.transfer import (
    CPU_TARGET_OVERRIDES,
    CPU_WEAK_AT,
    CPU_WEAK_OVERRIDES,
    compare_transfer,
)


@pytest.mark.slow
def test_transfer_beats_scratch_and_random_a_at_cpu_size(tmp_path):
    res = compare_transfer(
        "groktransfer-weak-mod-add",
        "groktransfer-mod-add",
        weak_at=CPU_WEAK_AT,
        out_dir=tmp_path,
        steps=1500,
        target_overrides=CPU_TARGET_OVERRIDES,
        weak_overrides=CPU_WEAK_OVERRIDES,
    )
    transfer, scratch, random_a = (res.row(k) for k in ("transfer", "scratch", "random_a"))
    # measured: transfer 95% test at step 240; scratch groks only after ~9 000 steps
    assert transfer["generalize_step"] is not None and transfer["generalize_step"] <= 600
    assert scratch["generalize_step"] is None and scratch["final_test_acc"] < 0.2
    assert random_a["generalize_step"] is None and random_a["final_test_acc"] < 0.2
    run = res.runs["transfer"]
    s = transfer_summary(run, over_training(run, ["transfer"], progress=False), n_perm=2000)
    assert s["generalized"] and s["overlap"] >= 0.5 and s["overlap_p_exact"] < 0.05
    assert s["energy_in_weak_keys"] > 0.8  # the target's embedding stays on E_W's circles
