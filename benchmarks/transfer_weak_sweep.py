"""GrokTransfer's weak model at the paper's size: best test accuracy over a small lr x wd grid.

    .venv/bin/python benchmarks/transfer_weak_sweep.py [--steps 30000] [--out /tmp/weak_sweep]

Preset ``groktransfer-weak-mod-add`` (d_embed 4, width 16, (a+b) mod 113, 25% train), eager
engine, evaluation every 250 steps, no dense checkpoints. Prints one JSON line per setting (the
table in benchmarks/RESULTS.md, "GrokTransfer at the paper's size"). About 1 minute per setting
on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from grokinterp.config import apply_overrides, load_preset
from grokinterp.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    ap.add_argument("--wds", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--out", default="/tmp/weak_sweep")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_preset("groktransfer-weak-mod-add")
    for lr in args.lrs:
        for wd in args.wds:
            cfg = apply_overrides(
                base,
                [
                    f"train.lr={lr}",
                    f"train.weight_decay={wd}",
                    f"train.steps={args.steps}",
                    "train.eval_every=250",
                    "train.checkpoint_every=1000000",
                    "train.checkpoint_log_steps=0",
                    "train.engine=eager",
                ],
            )
            start = time.perf_counter()
            run = train(cfg, f"{args.out}/lr{lr}_wd{wd}", overwrite=True, progress=False)
            best = max(run.metrics, key=lambda m: m["test_acc"])
            row = {
                "lr": lr,
                "wd": wd,
                "best_test": round(best["test_acc"], 4),
                "best_step": best["step"],
                "final_test": round(run.metrics[-1]["test_acc"], 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
