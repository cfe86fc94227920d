"""Fan, Pascanu, Jaggi 2024, "Deep Grokking: Would Deep Neural Networks Generalize Better?".

Claim: a deep MLP with a large initialisation (depth 12, width 400, init ×8, MSE, float64,
AdamW lr 1e-3 wd 0.01, batch 200, MNIST) memorises first and generalises much later, and the
*feature rank* of its layers drops when the test accuracy rises (with two-stage generalisation
the rank shows a double descent).

Data: scikit-learn's 8×8 digits (the GPU machine has no MNIST and grokinterp never downloads),
200 training images — so the paper's batch of 200 is the full batch here (every step is one CUDA
graph replay on a GPU) — and the other 1 597 as the test set. Digits caps an MLP's test accuracy
near 0.9 with 200 images, so "generalised" means test accuracy ≥ ``threshold`` (0.8), not 95 %.

Measures: the ``rank`` analysis (Fan et al.'s numerical and effective rank of each hidden layer's
pre-activation features, centred, on up to 2 000 test images) at every checkpoint; the window
"around generalisation" of :func:`grokinterp.analysis.curves.generalization_window` (from where
test accuracy starts its climb, halved, to twice the step it reaches the threshold) and, per
layer, the largest fall of the effective rank inside it
(:func:`~grokinterp.analysis.curves.largest_drop`). The window starts at the fit step (train
accuracy ≥ 95 %) at the earliest: a fall during memorisation does not count.

Sizes:

* ``cpu``: the paper's depth and init at width 100: 12 hidden layers × 100, init ×8, AdamW lr 3e-3
  wd 0.03 (the ``deep-grokking`` preset's 3× lr and wd, so that it groks in 60k steps), MSE,
  float32, 200 images, 60 000 steps: ~5 min on 2 cores. Measured (seed 0): train ≥ 95 % at
  13 600, test ≥ 80 % at 51 400; the effective rank of all 12 layers falls by 54–94 % between
  steps 28k and 46k, while test accuracy climbs from 0.3 to 0.8 — reproduced. (The preset's 8
  layers at init ×6 fit and generalise together: ratio 2.2, "partly".)
* ``paper``: 12 hidden layers × 400, init ×8, AdamW lr 1e-3 wd 0.01 betas (0.9, 0.999), MSE,
  **float64**, 200 images (full batch = the paper's batch 200), 200 000 steps, a checkpoint every
  2 000 (~120; a float64 checkpoint is 14 MB). Weight decay shrinks the weights by
  exp(−lr·wd·t): e^−2 by 2e5 steps. Measured on a CPU (float32) with this lr and wd at width
  100: train accuracy 1 by ~40k steps, test accuracy from 0.12 at 60k to 0.82 at 102k. **Estimated H200 time
  ~4 min**, measured 247 s (training 98 s: 2e5 graph-captured float64 steps ≈ 0.5 ms each; the rest
  is the ``rank`` analysis of 12 layers and the report).

Results: ``{"threshold", "fit_step", "generalize_step", "final_test_acc", "window": {...} | None,
"layers": [{"layer", "drop_step", "drop_fraction", "rank_start", "rank_max", "rank_final"}]}``.
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
    fmt_step,
    grok,
    status_of,
)

KEY = "fan2024"
PAPER_FIGURE = (
    "MNIST MLP, depth 12, width 400, init ×8, MSE, float64: test accuracy rises long after "
    "train accuracy, and the feature rank of the layers drops as it rises"
)
THRESHOLD = 0.8  # "generalised" on digits (see the module docstring)
MIN_DROP = 0.10  # a fall of the effective rank by ≥ 10 % of its maximum in the window
MIN_RATIO = 3.0  # grokking: generalise at ≥ 3× the fitting step

SIZES = {
    "cpu": Setting(
        "digits, 200 train images, full batch, 12 hidden ReLU layers × 100, init ×8, AdamW lr 3e-3 "
        "wd 0.03, MSE, float32, 60 000 steps",
        seeds=1,
        minutes=5,
        params={
            "preset": "deep-grokking",
            "overrides": [
                "train.batch_size=none",  # = all 200 images (see liu2022.FULL)
                "model.n_layers=12",
                "model.init_scale=8.0",
                "train.steps=60000",
            ],
            "threshold": THRESHOLD,
        },
    ),
    "paper": Setting(
        "digits (no MNIST offline), 200 train images = the paper's batch 200 (full batch), 12 "
        "hidden ReLU layers × 400, init ×8, AdamW lr 1e-3 wd 0.01, MSE, float64, 200 000 steps",
        seeds=1,
        minutes=4,
        needs_gpu=True,
        params={
            "preset": "deep-grokking",
            "overrides": [
                "train.batch_size=none",
                "model.n_layers=12",
                "model.d_mlp=400",
                "model.init_scale=8.0",
                "train.lr=1e-3",
                "train.weight_decay=0.01",
                "train.dtype=float64",
                "train.steps=200000",
                "train.eval_every=500",
                # float64 checkpoints are 14 MB (plus a 43 MB resume state written with each):
                # every 2 000 steps (~120) resolves a fall spread over tens of thousands
                "train.checkpoint_every=2000",
                "train.checkpoint_log_steps=20",
            ],
            "threshold": THRESHOLD,
        },
    ),
}


def configs(ctx: Context) -> dict[str, RunConfig]:
    p = ctx.params
    return {
        f"seed{s}": ctx.config(p["preset"], [*p["overrides"], f"train.seed={s}"]) for s in ctx.seeds
    }


def run(ctx: Context) -> dict[str, Any]:
    from grokinterp.analysis.curves import generalization_window, largest_drop

    thr = float(ctx.params["threshold"])
    runs = [ctx.train(cfg, name) for name, cfg in configs(ctx).items()]
    ctx.report_runs.append(runs[0])
    per_seed = []
    for seed, r in zip(ctx.seeds, runs, strict=True):
        res = ctx.analyse(r, ["rank"])
        steps = [int(s) for s in res["steps"]]
        g = grok(r.metrics, test_threshold=thr)
        window = generalization_window(r.metrics, threshold=thr)
        if window is not None and g["fit_step"] is not None:
            # A fall while the network is still fitting its training set is memorisation's
            # (the 2-layer run fell there): the window starts at the fit step at the
            # earliest.
            window["lo"] = max(window["lo"], g["fit_step"])
        layers = []
        for key in sorted(k for k in res if k.startswith("rank/effective/pre:")):
            curve = res[key].double()
            step, frac = (
                largest_drop(steps, curve, window["lo"], window["hi"]) if window else (None, 0.0)
            )
            layers.append(
                {
                    "layer": key.removeprefix("rank/effective/"),
                    "drop_step": step,
                    "drop_fraction": frac,
                    "rank_start": float(curve[0]),
                    "rank_max": float(curve.max()),
                    "rank_final": float(curve[-1]),
                }
            )
        per_seed.append({"seed": seed, **g, "window": window, "layers": layers})
    return {"threshold": thr, **per_seed[0], "per_seed": per_seed}


def verdict(results: Mapping[str, Any]) -> Verdict:
    """Reproduced when the run groks (test accuracy reaches the threshold at ≥ 3× the step at
    which train accuracy reaches 95 %) and at least half of the hidden layers' effective rank
    falls by ≥ 10 % inside the window around generalisation (never before the fit step);
    partly when some layer falls there, with or without a clean grokking delay; not otherwise."""
    thr = results.get("threshold", THRESHOLD)
    fit, gen = results.get("fit_step"), results.get("generalize_step")
    layers = results.get("layers") or []
    falls = [
        lay
        for lay in layers
        if lay.get("drop_step") is not None and (lay.get("drop_fraction") or 0) >= MIN_DROP
    ]
    grokked = fit is not None and gen is not None and gen >= MIN_RATIO * max(fit, 1)
    most_fall = bool(layers) and 2 * len(falls) >= len(layers)
    w = results.get("window") or {}
    ours = (
        f"train ≥ 95% at {fmt_step(fit)}, test ≥ {thr:.0%} at {fmt_step(gen)}"
        f" (final test {100 * (results.get('final_test_acc') or 0):.0f}%); effective rank falls "
        f"≥ {MIN_DROP:.0%} in {len(falls)}/{len(layers)} hidden layers "
        + (f"inside steps {w['lo']}–{w['hi']}" if w else "(no generalisation: no window)")
    )
    if falls:
        big = max(falls, key=lambda lay: lay["drop_fraction"])
        ours += f" (largest: {big['layer']} −{100 * big['drop_fraction']:.0f}% at {fmt_step(big['drop_step'])})"
    status = status_of([grokked, most_fall], [bool(falls)])
    if status == "reproduced":
        why = "the rank of most layers falls while the test accuracy rises, long after fitting"
    elif not grokked:
        why = (
            "no grokking delay: "
            + (
                f"test accuracy never reached {thr:.0%}"
                if gen is None
                else f"it generalised at {gen} vs fit at {fit} (< {MIN_RATIO:g}×)"
            )
            + ("" if falls else "; and no rank fall around generalisation")
        )
    else:
        why = f"it groks, but the effective rank falls ≥ {MIN_DROP:.0%} around generalisation in only {len(falls)}/{len(layers)} layers"
    return Verdict(status, ours, PAPER_FIGURE, why)


PAPER = Paper(
    key=KEY,
    title="Fan et al. 2024 (Deep Grokking)",
    claim="A deep MLP with large init groks, and its feature rank drops when test accuracy rises",
    paper_figure=PAPER_FIGURE,
    sizes=SIZES,
    run=run,
    verdict=verdict,
    configs=configs,
)
