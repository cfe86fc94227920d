"""Where does a fast-engine training step spend its GPU time? (issue 9; a diagnostic, not a
benchmark: no ratios are claimed from it.)

    python benchmarks/profile_step.py [--preset nanda2023] [--seeds 1 64] [--tf32 0 1]

For each (S, TF32) it runs the step *without* the CUDA graph under ``torch.profiler`` and prints
the kernels by GPU time (count per step, µs per step), the GPU-busy time per step, and the
replayed-graph step time of the same trainer, so launch overhead (graph time − busy time)
and the heaviest kernels are visible.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from grokinterp.config import apply_overrides, load_preset
from grokinterp.training.group import SeedGroup
from grokinterp.training.seeds import seed_config


def trainer(preset: str, s: int, tf32: bool) -> SeedGroup:
    cfg = apply_overrides(
        load_preset(preset), ["train.device=cuda", f"train.tf32={str(tf32).lower()}"]
    )
    t = SeedGroup([seed_config(cfg, k) for k in range(s)], "fast")
    assert t.engine.name == "fast"
    return t


def step_fn(t: SeedGroup):
    return t.train_step


def graph_ms(t: SeedGroup, n: int = 200) -> float:
    f = step_fn(t)
    for _ in range(20):
        f()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        f()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / n


def kernel_table(t: SeedGroup, n: int = 10, top: int = 18) -> None:
    t.runner.use_graph, t.runner.stream = False, None
    f = step_fn(t)
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            f()
        torch.cuda.synchronize()
    per: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            row = per[ev.name[:90]]
            row[0] += 1
            row[1] += (
                ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            )
    busy = sum(v[1] for v in per.values()) / n
    count = sum(v[0] for v in per.values()) / n
    print(f"  GPU busy {busy:8.1f} µs/step in {count:.0f} kernels/step (no graph)")
    for name, (c, us) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {us / n:8.1f} µs  ×{c / n:4.1f}  {name}")


def snapshot_costs(preset: str, n: int = 20) -> None:
    """Host time of each part of a fast-engine checkpoint snapshot (GPU idle before each)."""
    from grokinterp.store.writer import to_host
    from grokinterp.training.optim import portable_optimizer_state

    cfg = apply_overrides(load_preset(preset), ["train.device=cuda", "train.engine=fast"])
    t = SeedGroup([cfg], "fast")
    for _ in range(20):
        t.train_step()

    def state():
        opt = portable_optimizer_state(t.opt.state_dict(), t.tc)
        return t.seed_state(0, opt, t.grad_filter.state_dict() if t.grad_filter else None)

    parts = {
        "seed_state()": state,
        "engine.weights()": lambda: t.engine.weights(0),
        "to_host (packed, pinned)": lambda: to_host((t.engine.weights(0), state())),
    }
    print(f"\n[{preset}] host ms per call, GPU idle before each call ({n} calls)")
    for name, fn in parts.items():
        total = 0.0
        for _ in range(n):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            total += time.perf_counter() - start
        print(f"  {name:22s} {1e3 * total / n:8.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="nanda2023")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--tf32", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--snapshot", action="store_true", help="time checkpoint snapshots only")
    args = ap.parse_args()
    if args.snapshot:
        snapshot_costs(args.preset)
        return
    for s in args.seeds:
        for tf32 in args.tf32:
            t = trainer(args.preset, s, bool(tf32))
            ms = graph_ms(t)
            print(f"\n[{args.preset} S={s} tf32={tf32}] graph replay {ms:.3f} ms/step")
            kernel_table(t)
            torch.backends.cuda.matmul.allow_tf32 = False


if __name__ == "__main__":
    main()
