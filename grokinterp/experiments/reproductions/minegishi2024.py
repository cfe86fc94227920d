"""Minegishi, Iwasawa, Matsuo, "Bridging Lottery Ticket and Grokking" (arXiv 2310.19470).

Claim: the *grokking ticket* — the magnitude mask (k = 0.6 of the weights removed, one global
threshold over every weight matrix, embedding and unembedding included) of a checkpoint after
generalisation, rewound to the initial weights θ₀ and trained with the mask fixed — generalises
much sooner than the dense network, and sooner than the dense θ₀ rescaled to the ticket's L1 or
L2 norm (so the speed-up is the mask's structure, not a smaller norm); a random mask of the same
sparsity does not.

Runs: the parent (dense) model per seed, packed on one device; then per seed, with
:func:`grokinterp.experiments.tickets.compare_tickets`, the ticket of its final checkpoint and the
``dense_l2``, ``dense_l1`` and ``random`` controls (same seed, same split, same budget; early stop
once test accuracy holds ≥ 99 %). The dense baseline is the parent itself (same θ₀ and config:
retraining it would repeat the same trajectory). Speed = first step with test accuracy ≥ 95 %
(the paper's t_gen), censored at the budget when never reached.

Sizes:

* ``cpu``: ``minegishi2024-mlp`` with d_embed = d_model = 128 (``tickets.CPU_OVERRIDES``), parent
  2 500 steps, children 2 500 steps, 1 seed, kinds ticket / dense_l2 / dense_l1: ~4 min on 2 cores.
* ``paper``: the preset as in the paper's MLP setting ((a+b) mod 67, 40 % train, W_E 67→500 per
  token, summed, 500→48→500, W_U, no biases, AdamW lr 1e-3 wd 1 betas (0.9, 0.98), full batch),
  float32 (the paper's loss is float64), parent 10 000 steps (the paper 30k epochs; the dense
  model generalises ~2k), children ≤ 5 000 steps, 3 seeds, plus the random-mask control.
  **Estimated H200 time: ~1.5 min** (parents packed ≈ 10 s; 12 single-seed children of
  ≤ 5 000 graph-captured steps ≈ 5 s each with start-up).

Results: ``{"sparsity": float, "budget": int, "parent_steps": int, "seeds": [{"seed", "dense",
"ticket", "dense_l2", "dense_l1", "random"}]}``, each kind's value its ``generalize_step`` (None:
not within the budget; ``dense`` within ``parent_steps``).
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
    config_hash,
    fmt_step,
    grok,
    most,
    status_of,
)

KEY = "minegishi2024"
PAPER_FIGURE = (
    "(a+b) mod 67 MLP: the k = 0.6 grokking ticket generalises much sooner than the dense "
    "model; dense θ₀ matched to the ticket's L1 / L2 norm, random masks and pruning at "
    "initialisation do not"
)
# "Much sooner": the ticket needs at most half the dense model's steps; it beats a norm-matched
# control when it needs at most 2/3 of that control's steps.
DENSE_FACTOR = 0.5
CONTROL_FACTOR = 2 / 3

_CPU = ["model.d_embed=128", "model.d_model=128"]
SIZES = {
    "cpu": Setting(
        "minegishi2024-mlp with d_embed = d_model = 128: (a+b) mod 67, 40% train, embed-MLP "
        "sum → 48 → out-proj, no biases, AdamW lr 1e-3 wd 1, full batch, float32; parent 2 500 "
        "steps, ticket k = 0.6 from its final checkpoint; children ≤ 2 500 steps",
        seeds=1,
        minutes=4,
        params={
            "parent": [*_CPU, "train.steps=2500"],
            "child_steps": 2500,
            "kinds": ["ticket", "dense_l2", "dense_l1"],
            "sparsity": 0.6,
        },
    ),
    "paper": Setting(
        "minegishi2024-mlp: (a+b) mod 67, 40% train, W_E 67→500 per token summed, 500→48→500, W_U, "
        "no biases, AdamW lr 1e-3 wd 1 betas (0.9, 0.98), full batch, float32 (paper: float64 "
        "loss); parent 10 000 steps (paper 30k), ticket k = 0.6 from the final checkpoint; "
        "children ≤ 5 000 steps; parents packed on one GPU",
        seeds=3,
        minutes=1.5,
        needs_gpu=True,
        params={
            "parent": ["train.steps=10000", "train.checkpoint_every=500"],
            "child_steps": 5000,
            "kinds": ["ticket", "dense_l2", "dense_l1", "random"],
            "sparsity": 0.6,
        },
    ),
}


def configs(ctx: Context) -> dict[str, RunConfig]:
    return {"parents": ctx.config("minegishi2024-mlp", ctx.params["parent"])}


def run(ctx: Context) -> dict[str, Any]:
    from grokinterp.experiments.tickets import compare_tickets

    p = ctx.params
    cfg = configs(ctx)["parents"]
    parents = ctx.train_seeds(cfg, "parents")
    child_over = [
        "train.early_stop_acc=0.99",
        "train.early_stop_patience=10",
        "train.checkpoint_every=500",
        *ctx.overrides,
    ]
    seeds = []
    for seed, parent in zip(ctx.seeds, parents, strict=True):
        # The parent's path is in the children's configs (init_state, mask, parent): a moved
        # root gets new children folders instead of a refusal to reuse.
        tag = config_hash(
            str(parent.path.resolve()),
            parent.config.to_dict(),
            child_over,
            p["child_steps"],
            p["sparsity"],
        )
        out_dir = ctx.out / f"tickets-seed{seed}-{tag}"
        ctx.used.append(out_dir)
        comp = compare_tickets(
            parent,
            "final",
            sparsity=p["sparsity"],
            out_dir=out_dir,
            kinds=p["kinds"],
            steps=p["child_steps"],
            seed=seed,
            overrides=child_over,
            progress=ctx.progress,
        )
        row = {"seed": seed, "dense": grok(parent.metrics)["generalize_step"]}
        row.update({r["kind"]: r["generalize_step"] for r in comp.rows})
        seeds.append(row)
        budget = next(iter(comp.runs.values())).config.train.steps  # after any --set
        if seed == ctx.seeds[0]:
            ctx.report_runs.extend([parent, *comp.runs.values()])
    return {
        "sparsity": p["sparsity"],
        "budget": budget,
        "parent_steps": cfg.train.steps,
        "seeds": seeds,
    }


def _censor(step: Any, budget: int) -> float:
    """A step, or (never within ``budget``) the budget itself: a lower bound on the true step."""
    return float(step) if step is not None else float(budget)


def verdict(results: Mapping[str, Any]) -> Verdict:
    """Reproduced when on ≥ 2/3 of the seeds the ticket reaches 95 % test accuracy within the
    budget, in ≤ half the dense model's steps, and in ≤ 2/3 of each norm-matched control's
    (a control that never gets there counts as the budget: the ticket still beats it); partly
    when the ticket only beats the dense model (the issue's CPU result: the L1-matched control
    was faster than dense too)."""
    seeds = results.get("seeds") or []
    budget = int(results.get("budget") or 0)
    parent_steps = int(results.get("parent_steps") or budget)
    if not seeds:
        return Verdict("not", "no seed trained", PAPER_FIGURE, "no results")
    beats_dense, beats_controls = [], []
    for s in seeds:
        t = s.get("ticket")
        if t is None:
            beats_dense.append(False)
            beats_controls.append(False)
            continue
        beats_dense.append(t <= DENSE_FACTOR * _censor(s.get("dense"), parent_steps))
        controls = [k for k in ("dense_l2", "dense_l1") if k in s]
        beats_controls.append(
            bool(controls)
            and all(t <= CONTROL_FACTOR * _censor(s.get(k), budget) for k in controls)
        )
    s0 = seeds[0]
    parts = [f"ticket {fmt_step(s0.get('ticket'), budget)}"]
    parts.append(f"dense {fmt_step(s0.get('dense'), parent_steps)}")
    for k in ("dense_l2", "dense_l1", "random"):
        if k in s0:
            parts.append(f"{k} {fmt_step(s0.get(k), budget)}")
    ours = f"steps to 95% test, seed {s0.get('seed')}: " + ", ".join(parts)
    if len(seeds) > 1:
        ours += (
            f"; ticket beats dense on {sum(beats_dense)}/{len(seeds)} seeds, the norm-matched "
            f"controls on {sum(beats_controls)}/{len(seeds)}"
        )
    status = status_of([most(beats_dense), most(beats_controls)], [any(beats_dense)])
    if status == "reproduced":
        why = "the ticket groks in ≤ half the dense steps and sooner than the L1/L2-matched dense controls"
    elif most(beats_dense):
        why = "the ticket beats dense, but a norm-matched dense control is about as fast: part of the speed-up is the smaller norm"
    elif any(beats_dense):
        why = f"the ticket beats dense on only {sum(beats_dense)}/{len(seeds)} seeds"
    else:
        why = "the ticket is not faster than the dense model (or never reached 95% test)"
    return Verdict(status, ours, PAPER_FIGURE, why)


PAPER = Paper(
    key=KEY,
    title="Minegishi et al. (grokking tickets)",
    claim="A post-generalisation ticket (k = 0.6) groks much sooner than dense; L1/L2-matched dense does not",
    paper_figure=PAPER_FIGURE,
    sizes=SIZES,
    run=run,
    verdict=verdict,
    configs=configs,
)
