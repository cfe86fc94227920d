"""Humayun, Balestriero, Baraniuk 2024, "Deep Networks Always Grok and Here is Why" (ICML 2024).

Claims: the *local complexity* (LC: how many neuron boundaries cross a small cross-polytope of
2P vertices x ± r·v_j around a point) follows a descent, an ascent until the training set is
fitted, and a **second descent** ("region migration": the regions move away from the data
towards the decision boundary) — and grokking, and the *delayed robustness* (accuracy under an
adversarial L∞ attack rising long after the clean test accuracy), happen during that second
descent.

Run: the α = 8 digits MLP of the Omnigrok reproduction (:mod:`.liu2022`; the same run, trained
once into ``<root>/shared``), long enough to see the second descent. Measures: the
``complexity`` analysis with the paper's P = 25 directions and radius r = 0.005 (pixels scaled to
[0, 1], like the paper's normalised MNIST) on 256 train / test / random-domain points (paper:
1 000), and — since r = 0.005 crosses few boundaries on 64-pixel digits — also at grokinterp's
default radius (5 % of the median input norm); the ``robustness`` analysis (L∞ PGD, 10 steps,
ε ∈ {0.03, 0.1, 0.2}; paper up to 0.2). Phases: :func:`~grokinterp.analysis.curves.complexity_phases`.

Sizes (training time is liu2022's α = 8 run; it is trained here when this paper runs first):

* ``cpu``: omnigrok-digits (lr 1e-2), 30 000 steps; ~5 min on 2 cores with the analyses.
* ``paper``: lr 1e-3, float64, 200 000 steps (1 000 between checkpoints: ~220).
  **Estimated H200 time ~1.5 min** (training ≈ 2e5 graph-captured steps × 0.25 ms ≈ 50 s;
  complexity twice and PGD over ~220 checkpoints ≈ 20 s).

Results: ``{"threshold", "fit_step", "generalize_step", "test_acc_half_way_step",
"complexity": {radius_label: {"radius", set: phases}}, "robustness": {"eps", "half_way_step",
"accuracy_start", "accuracy_end"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from grokinterp.config import RunConfig
from grokinterp.experiments.reproductions.base import (
    Context,
    Paper,
    Setting,
    Verdict,
    fmt_step,
    grok,
    jsonable,
    status_of,
)
from grokinterp.experiments.reproductions.liu2022 import ALPHA8, THRESHOLD, alpha8_config
from grokinterp.store import atomic_write_text

KEY = "humayun2024"
PAPER_FIGURE = (
    "MNIST MLP (P = 25, r = 0.005): local complexity descends, ascends until the train set is "
    "fitted, then descends a second time while the network groks; adversarial robustness "
    "arrives late, during that second descent"
)
PAPER_RADIUS = 0.005
EPS = (0.03, 0.1, 0.2)
ROBUST_EPS = 0.1  # the ε whose accuracy must rise late (a middle one of EPS)
# Delayed robustness: robust accuracy reaches half its rise at ≥ this share of the step at which
# the clean test accuracy does (it comes with or after generalisation, not with fitting).
DELAY_SHARE = 0.8
# The LC peak (end of the ascent) must come before generalisation ends: ≤ this × generalize_step.
PEAK_SLACK = 1.5

SIZES = {
    "cpu": Setting(
        "liu2022's α = 8 run (digits, 200 images, MLP 64-200-200-10, MSE, AdamW lr 1e-2 wd 0.01, "
        f"float32, {ALPHA8['cpu'][0].split('=')[1]} steps); LC P = 25 at r = 0.005 and at 5% of "
        "the median norm, 256 points per set; PGD ε {0.03, 0.1, 0.2}",
        seeds=1,
        minutes=5,
        params={"threshold": THRESHOLD, "n_samples": 256},
    ),
    "paper": Setting(
        "liu2022's α = 8 run (digits, 200 images, full batch, MLP 64-200-200-10, MSE, AdamW lr 1e-3 "
        "wd 0.01, float64, 200 000 steps); LC P = 25 at r = 0.005 and at 5% of the median norm, "
        "256 points per set; PGD ε {0.03, 0.1, 0.2}, 10 steps",
        seeds=1,
        minutes=1.5,
        needs_gpu=True,
        params={"threshold": THRESHOLD, "n_samples": 256},
    ),
}


def configs(ctx: Context) -> dict[str, RunConfig]:
    return {"digits-alpha8": alpha8_config(ctx)}


def run(ctx: Context) -> dict[str, Any]:
    from grokinterp.analysis.curves import transition_step

    thr, n = float(ctx.params["threshold"]), int(ctx.params["n_samples"])
    r = ctx.train(alpha8_config(ctx), "digits-alpha8", shared=True)
    ctx.report_runs.append(r)
    out: dict[str, Any] = {**grok(r.metrics, test_threshold=thr)}
    out["test_acc_half_way_step"] = transition_step(r.metrics, "test_acc", 0.5)
    out["complexity"] = {}
    # The default radius first, the paper's last: the run's analysis cache holds one parameter
    # set per analysis, so it (and the report) keeps the paper's; the default radius's phases
    # are remembered in this paper's folder, so that a second call does not recompute both.
    memo = ctx.out / "complexity-relative.json"
    for label, params in (
        ("relative", {"n_directions": 25, "n_samples": n}),
        ("paper", {"radius": PAPER_RADIUS, "n_directions": 25, "n_samples": n}),
    ):
        key = [str(r.path.resolve()), r.steps[-1], params]
        if label == "relative" and memo.is_file():
            old = json.loads(memo.read_text(encoding="utf-8"))
            if old.get("key") == jsonable(key):
                out["complexity"][label] = old["phases"]
                continue
        res = ctx.analyse(r, {"complexity": params})
        s = ctx.summary(r, "complexity", res)
        out["complexity"][label] = jsonable(
            {
                "radius": float(res["complexity/radius"][0])
                if "complexity/radius" in res
                else None,
                **{
                    name: {k: s[k][i] for k in s if k != "sets"}
                    for i, name in enumerate(s.get("sets", []))
                },
            }
        )
        if label == "relative":
            phases = out["complexity"][label]
            atomic_write_text(memo, json.dumps({"key": jsonable(key), "phases": phases}))
    res = ctx.analyse(r, {"robustness": {"eps": list(EPS), "steps": 10}})
    s = ctx.summary(r, "robustness", res)
    out["robustness"] = {
        k: s.get(k) for k in ("eps", "half_way_step", "accuracy_start", "accuracy_end")
    }
    return out


def _second_descent(phases: Mapping[str, Any], gen: int | None) -> bool:
    """Descent, ascent and second descent present, the peak before generalisation ends."""
    return (
        bool(phases.get("ascent"))
        and bool(phases.get("second_descent"))
        and gen is not None
        and phases.get("peak_step") is not None
        and phases["peak_step"] <= PEAK_SLACK * gen
    )


def verdict(results: Mapping[str, Any]) -> Verdict:
    """Reproduced when, at the paper's radius, the train or test set's LC shows an ascent and a
    second descent whose peak comes before generalisation ends, *and* robustness (PGD at ε 0.1)
    is delayed — half its rise at ≥ 0.8 × the step the clean test accuracy makes half of its;
    partly when one of the two holds (the second descent may show only at the default radius);
    not otherwise."""
    gen = results.get("generalize_step")
    cx = results.get("complexity") or {}
    found = {
        label: [
            s
            for s in ("train", "test", "random")
            if _second_descent((cx.get(label) or {}).get(s) or {}, gen)
        ]
        for label in ("paper", "relative")
    }
    rob = results.get("robustness") or {}
    eps = rob.get("eps") or []
    half = rob.get("half_way_step") or []
    test_half = results.get("test_acc_half_way_step")
    j = min(range(len(eps)), key=lambda i: abs(eps[i] - ROBUST_EPS)) if eps else None
    r_half = half[j] if j is not None and j < len(half) else None
    delayed = r_half is not None and test_half is not None and r_half >= DELAY_SHARE * test_half
    paper_sd = bool(set(found["paper"]) & {"train", "test"})
    ph = (cx.get("paper") or {}).get("train") or {}
    ours = (
        f"test ≥ {results.get('threshold', THRESHOLD):.0%} at {fmt_step(gen)}; LC (r = "
        f"{PAPER_RADIUS:g}, train): peak {fmt_step(ph.get('peak_step'))}, second minimum "
        f"{fmt_step(ph.get('second_min_step'))}; second descent on "
        f"{', '.join(found['paper']) or 'no set'} (r = {PAPER_RADIUS:g}), "
        f"{', '.join(found['relative']) or 'no set'} (default radius); PGD ε "
        f"{f'{eps[j]:.3g}' if j is not None else '—'} "
        f"accuracy half-way at {fmt_step(r_half)} vs clean test {fmt_step(test_half)}"
    )
    status = status_of([paper_sd, delayed], [bool(found["relative"])])
    parts = []
    if not paper_sd:
        parts.append(
            "no second descent at the paper's radius"
            + (
                f" (only at the default radius, on {', '.join(found['relative'])})"
                if found["relative"]
                else ""
            )
        )
    if not delayed:
        parts.append("robustness is not delayed past the clean generalisation")
    why = (
        "LC ascends then descends a second time while the model groks; robustness arrives with or after generalisation"
        if status == "reproduced"
        else "; ".join(parts)
    )
    return Verdict(status, ours, PAPER_FIGURE, why)


PAPER = Paper(
    key=KEY,
    title="Humayun et al. 2024 (local complexity)",
    claim="Local complexity descends, ascends, then descends again while the network groks; robustness comes late",
    paper_figure=PAPER_FIGURE,
    sizes=SIZES,
    run=run,
    verdict=verdict,
    configs=configs,
)
