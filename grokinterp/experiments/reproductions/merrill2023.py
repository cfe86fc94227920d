"""Merrill, Tsilivis, Shukla 2023, "A Tale of Two Circuits: Grokking as Competition of Sparse and
Dense Subnetworks".

Claim: on (40, 3) sparse parity, a 1-hidden-layer ReLU MLP of width 1 000 (hinge loss, SGD lr 0.1,
wd 0.01, batch 32, 1 000 training points) first fits with a dense subnetwork; at the transition
a *sparse* subnetwork — a handful of neurons — takes over: its norm grows while the norm of the
dense complement decays.

Measures: the ``norms`` analysis (:mod:`grokinterp.analysis.norms`): per neuron, the L2 norm of
its incoming weights (with the hidden bias); the sparse subnetwork = the smallest top-k neurons
by norm of the **last** checkpoint that reproduce the full model's training accuracy, followed
through training (``final_sparse_l2``) against all other neurons (``final_dense_l2``).

Sizes:

* ``cpu``: the ``merrill2023-parity`` preset (9 400 steps = 300 epochs), 1 seed: ~1.5 min on
  2 cores.
* ``paper``: the same, 3 seeds (batch 32: minibatches cannot be packed, so one seed after
  another; a minibatch step is not graph-captured and syncs the host for its batch indices,
  ~2–4 ms). **Estimated H200 time ~1.5 min** (3 × 9 400 steps ≈ 60–110 s).

Results: ``{"width", "seeds": [{"seed", "fit_step", "generalize_step", "final_test_acc", "k",
"sparse_start", "sparse_end", "dense_start", "dense_end"}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grokinterp.config import RunConfig
from grokinterp.experiments.reproductions.base import (
    Context,
    Paper,
    Setting,
    Verdict,
    failed_checks,
    fmt_step,
    grok,
    most,
    status_of,
)

KEY = "merrill2023"
PAPER_FIGURE = (
    "(40, 3) parity, width 1 000: a few-neuron sparse subnetwork's norm grows at the "
    "transition while the dense complement's decays"
)
GROWTH = 2.0  # the sparse subnetwork's norm at least doubles ...
DECAY = 0.7  # ... while the complement's falls to at most 70 % of its start
SPARSE_SHARE = 0.05  # "sparse": at most 5 % of the neurons

SIZES = {
    "cpu": Setting(
        "merrill2023-parity preset: (40, 3) parity, 1 000 train points, MLP width 1 000 with hidden "
        "bias, hinge loss, SGD lr 0.1 wd 0.01, batch 32, float32, 9 400 steps (300 epochs)",
        seeds=1,
        minutes=1.5,
    ),
    "paper": Setting(
        "merrill2023-parity preset: (40, 3) parity, 1 000 train points, MLP width 1 000 with hidden "
        "bias, hinge loss, SGD lr 0.1 wd 0.01, batch 32, float32, 9 400 steps (300 epochs)",
        seeds=3,
        minutes=1.5,
        needs_gpu=True,
    ),
}


def configs(ctx: Context) -> dict[str, RunConfig]:
    return {f"seed{s}": ctx.config("merrill2023-parity", [f"train.seed={s}"]) for s in ctx.seeds}


def run(ctx: Context) -> dict[str, Any]:
    seeds = []
    planned = configs(ctx)
    for seed in ctx.seeds:
        cfg = planned[f"seed{seed}"]
        r = ctx.train(cfg, f"seed{seed}")
        if seed == ctx.seeds[0]:
            ctx.report_runs.append(r)
        res = ctx.analyse(r, ["norms"])
        sp, de = res["norms/final_sparse_l2/0"], res["norms/final_dense_l2/0"]
        seeds.append(
            {
                "seed": seed,
                **grok(r.metrics),
                "k": int(res["norms/final_k/0"][-1]),
                "sparse_start": float(sp[0]),
                "sparse_end": float(sp[-1]),
                "dense_start": float(de[0]),
                "dense_end": float(de[-1]),
            }
        )
    return {"width": cfg.model.d_mlp, "seeds": seeds}


def _holds(s: Mapping[str, Any], width: int) -> dict[str, bool]:
    k = s.get("k") or -1
    return {
        "generalises": s.get("generalize_step") is not None,
        "sparse": 0 < k <= SPARSE_SHARE * width,
        "grows": (s.get("sparse_end") or 0) >= GROWTH * (s.get("sparse_start") or float("inf")),
        "decays": (s.get("dense_end") or float("inf")) <= DECAY * (s.get("dense_start") or 0),
    }


def verdict(results: Mapping[str, Any]) -> Verdict:
    """Reproduced when on ≥ 2/3 of the seeds the model generalises, the reproducing subnetwork
    has ≤ 5 % of the neurons, its norm at least doubles and the complement's falls to ≤ 70 %;
    partly when the norms move that way on some seed; not otherwise."""
    width = int(results.get("width") or 1000)
    seeds = results.get("seeds") or []
    if not seeds:
        return Verdict("not", "no seed trained", PAPER_FIGURE, "no results")
    checks = [_holds(s, width) for s in seeds]
    full = [all(c.values()) for c in checks]
    norms_move = [c["grows"] and c["decays"] for c in checks]
    s0 = seeds[0]
    k = s0.get("k") or -1
    ours = f"seed {s0.get('seed')}: 95% test at {fmt_step(s0.get('generalize_step'))}; " + (
        f"{k} neurons: L2 {s0.get('sparse_start', 0):.2f} → {s0.get('sparse_end', 0):.2f}; "
        f"the other {width - k}: {s0.get('dense_start', 0):.2f} → {s0.get('dense_end', 0):.2f}"
        if k > 0
        else "the final model is at chance: no reproducing subnetwork"
    )
    if len(seeds) > 1:
        ours += f" ({sum(full)}/{len(seeds)} seeds)"
    status = status_of([most(full)], [any(norms_move)])
    why = (
        "a few-neuron subnetwork's norm grows while the dense complement decays"
        if status == "reproduced"
        else failed_checks(checks) + f" (all hold on {sum(full)}/{len(seeds)} seeds)"
    )
    return Verdict(status, ours, PAPER_FIGURE, why)


PAPER = Paper(
    key=KEY,
    title="Merrill et al. 2023",
    claim="The sparse subnetwork's norm grows and the dense complement decays at the transition",
    paper_figure=PAPER_FIGURE,
    sizes=SIZES,
    run=run,
    verdict=verdict,
    configs=configs,
)
