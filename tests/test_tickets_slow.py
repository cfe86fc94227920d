"""Scientific check (slow): Minegishi et al.'s grokking-ticket result on the CPU-sized preset.

Parent: minegishi2024-mlp with CPU_OVERRIDES, 2 000 steps (generalized: test acc > 0.95).
Children from θ₀ with a 600-step budget: the post-generalization ticket at sparsity 0.6 must
reach 95 % test accuracy within the budget and earlier than the dense run (the dense retraining
from θ₀ is bit-identical to the parent on CPU, so the parent's own curve is the dense baseline),
and both norm-matched dense controls must be slower than the ticket (or not get there at all).
"""

from __future__ import annotations

import pytest
import torch

from grokinterp.analysis.curves import grok_times
from grokinterp.config import apply_overrides, load_preset
from grokinterp.experiments.tickets import CPU_OVERRIDES, retrain_ticket, summarize_run
from grokinterp.training import train


@pytest.mark.slow
def test_post_generalization_ticket_beats_dense_and_norm_controls(tmp_path):
    torch.set_num_threads(1)
    cfg = apply_overrides(load_preset("minegishi2024-mlp"), [*CPU_OVERRIDES, "train.steps=2000"])
    parent = train(cfg, tmp_path / "parent", progress=False)
    assert parent.metrics[-1]["test_acc"] > 0.95  # the ticket is taken after generalization
    budget = 600
    dense_gen = grok_times(parent.metrics).generalize_step
    rows = {
        kind: summarize_run(
            retrain_ticket(
                parent,
                "final",
                sparsity=0.6,
                out_dir=tmp_path / kind,
                kind=kind,
                steps=budget,
                progress=False,
            ),
            kind,
        )
        for kind in ("ticket", "dense_l2", "dense_l1")
    }
    t_ticket = rows["ticket"]["generalize_step"]
    assert t_ticket is not None and t_ticket < dense_gen, (t_ticket, dense_gen)
    for kind in ("dense_l2", "dense_l1"):
        t = rows[kind]["generalize_step"]
        assert t is None or t > t_ticket, (kind, t, t_ticket)
