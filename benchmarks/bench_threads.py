"""How many torch threads should CPU training use, and what do deterministic algorithms cost?
(issue 15 item 2). Every figure is a ratio against a baseline measured in the same process,
interleaved round by round; medians are reported, with the machine's load average.

    python benchmarks/bench_threads.py [--presets demo nanda2023] [--threads 1 2] [--rounds 5]

Variants per preset and engine (one training each, all from the same initialisation, advanced in
turns): ``t<k>`` = k threads with the deterministic algorithms of every grokinterp CPU run;
``t1_nondet`` = one thread without them (their cost). The baseline is ``t1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from grokinterp.config import apply_overrides, load_preset
from grokinterp.training.group import SeedGroup
from grokinterp.training.numerics import cpu_determinism


def step_seconds(group: SeedGroup, threads: int, deterministic: bool, steps: int) -> float:
    with cpu_determinism(threads, deterministic=deterministic):
        start = time.perf_counter()
        for _ in range(steps):
            group.train_step()
        return (time.perf_counter() - start) / steps


def bench(preset: str, engine: str, threads: list[int], rounds: int, steps: int) -> dict:
    cfg = apply_overrides(load_preset(preset), ["train.device=cpu", "train.early_stop_acc=none"])
    variants = {f"t{t}": (t, True) for t in threads} | {"t1_nondet": (1, False)}
    groups = {k: SeedGroup([cfg], engine) for k in variants}
    for k, (t, det) in variants.items():  # warm-up: allocator, first-call costs
        step_seconds(groups[k], t, det, 3)
    times: dict[str, list[float]] = {k: [] for k in variants}
    load = []
    for _ in range(rounds):
        load.append(os.getloadavg()[0])
        for k, (t, det) in variants.items():
            times[k].append(step_seconds(groups[k], t, det, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "ms_per_step": {k: 1e3 * v for k, v in med.items()},
        "ratio_vs_t1": {k: v / med["t1"] for k, v in med.items()},
        "spread": {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()},
        "loadavg_1min": load,
    }
    print(f"\n[{preset}, {engine} engine, CPU] ms/step, median of {rounds} rounds × {steps} steps")
    for k in variants:
        print(
            f"  {k:10s} {out['ms_per_step'][k]:9.2f} ms   ×{out['ratio_vs_t1'][k]:6.2f} the time "
            f"of t1   spread {100 * out['spread'][k]:.0f}%"
        )
    print(f"  load average during the rounds: {', '.join(f'{x:.1f}' for x in load)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["demo"])
    ap.add_argument("--engines", nargs="+", default=["eager", "fast"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", help="save the numbers here")
    args = ap.parse_args()
    print(f"cpu_count={os.cpu_count()} torch={torch.__version__}")
    res = {
        f"{p}/{e}": bench(p, e, args.threads, args.rounds, args.steps)
        for p in args.presets
        for e in args.engines
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
