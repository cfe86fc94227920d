"""Benchmark: local complexity (Humayun et al. 2024) over many checkpoints.

Target (issue 5): 1000 points, P = 25 directions (50 vertices each), a 4-hidden-layer width-200
ReLU MLP on 64-D digits inputs, 50 checkpoints, in ≤ 60 s on 2 CPU cores.

Measured in the same run, on the same checkpoints:
  * ``local_complexity``: one batched forward of all 50 000 vertices per checkpoint, sign changes
    reduced inside forward-pre hooks;
  * baseline "per-vertex loop": for each of the 50 vertices, a forward pass of the 1000 shifted
    points, every layer's pre-activation signs kept, compared at the end (the straightforward
    implementation); its counts must equal ours exactly;
  * "per-point loop" (one forward of a single point's 50 vertices at a time), timed on a few
    checkpoints and extrapolated, for scale.

Usage: ``python benchmarks/bench_complexity.py [--checkpoints 50] [--points 1000] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from grokinterp.analysis.complexity import local_complexity, orthonormal_frame
from grokinterp.config import ModelConfig
from grokinterp.models import build_model
from grokinterp.tasks import make_task


def per_vertex_loop(
    model: nn.Module, x: torch.Tensor, radius: float, p: int, seed: int
) -> torch.Tensor:
    """Baseline: one forward per vertex; keep every layer's signs; count sign changes at the end."""
    frame = orthonormal_frame(x.shape[1], p, seed, dtype=x.dtype)
    offsets = torch.cat([frame, -frame]) * radius
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    signs: list[list[torch.Tensor]] = [[] for _ in acts]
    handles = [
        m.register_forward_pre_hook(lambda mod, a, i=i: signs[i].append(a[0] > 0))
        for i, m in enumerate(acts)
    ]
    try:
        with torch.no_grad():
            for v in offsets:
                model(x + v)
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros(x.shape[0], dtype=torch.long)
    for layer in signs:
        s = torch.stack(layer)  # [2P, n, width]
        total += (s.any(0) & ~s.all(0)).sum(-1)
    return total


def per_point_loop(model: nn.Module, x: torch.Tensor, radius: float, p: int, seed: int) -> None:
    """The most naive version: the vertices of one point at a time (timing only)."""
    for i in range(x.shape[0]):
        local_complexity(model, x[i : i + 1], radius, p, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--directions", type=int, default=25)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--point-loop-checkpoints", type=int, default=1)
    ap.add_argument("--bound", type=float, default=60.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    task = make_task("digits", n_train=1000)
    x = torch.cat([task.x_train, task.x_test])[: args.points]
    cfg = ModelConfig(name="mlp", n_layers=args.layers, d_mlp=args.width, init_scale=8.0)
    # 50 "checkpoints": independent seeded initialisations (the cost does not depend on values).
    states = []
    for s in range(args.checkpoints):
        torch.manual_seed(s)
        states.append({k: v.clone() for k, v in build_model(cfg, task).state_dict().items()})
    model = build_model(cfg, task).eval()
    radius = 0.05 * float(x.norm(dim=1).median())

    t0, c0 = time.perf_counter(), time.process_time()
    fast = []
    for st in states:
        model.load_state_dict(st)
        fast.append(local_complexity(model, x, radius, args.directions, seed=0))
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    slow = []
    for st in states:
        model.load_state_dict(st)
        slow.append(per_vertex_loop(model, x, radius, args.directions, seed=0))
    t_slow, c_slow = time.perf_counter() - t0, time.process_time() - c0
    # float32 matmuls of different batch shapes round differently, so a neuron whose
    # pre-activation is within round-off of 0 at a vertex may flip: count such disagreements.
    differ = sum(int((a != b).sum()) for a, b in zip(fast, slow, strict=True))

    k = max(1, min(args.point_loop_checkpoints, args.checkpoints))
    t0, c0 = time.perf_counter(), time.process_time()
    for st in states[:k]:
        model.load_state_dict(st)
        per_point_loop(model, x, radius, args.directions, seed=0)
    scale = args.checkpoints / k
    t_point, c_point = (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale

    n_vert = 2 * args.directions
    print(
        f"local complexity: {args.points} points x {n_vert} vertices, {args.layers}x{args.width} "
        f"ReLU MLP, {args.checkpoints} checkpoints, {args.threads} thread(s)"
    )
    per_ckpt = 1000 * t_fast / args.checkpoints
    print("                               wall s    cpu s   ratio vs local_complexity (wall, cpu)")
    print(
        f"  local_complexity (batched)  {t_fast:7.2f}  {c_fast:7.2f}   ({per_ckpt:.0f} ms/checkpoint)"
    )
    print(
        f"  baseline per-vertex loop    {t_slow:7.2f}  {c_slow:7.2f}   "
        f"x{t_slow / t_fast:.2f}, x{c_slow / c_fast:.2f}"
    )
    print(
        f"  per-point loop (extrap {k})  {t_point:7.2f}  {c_point:7.2f}   "
        f"x{t_point / t_fast:.1f}, x{c_point / c_fast:.1f}"
    )
    n_counts = args.checkpoints * args.points
    print(f"  counts differing from the baseline: {differ} of {n_counts} (float32 round-off at 0)")
    print(f"  mean local complexity: {torch.stack(fast).float().mean():.2f}")
    verdict = "PASS" if t_fast <= args.bound else "FAIL"
    print(f"  bound {args.bound:.0f} s (wall): {verdict}")


if __name__ == "__main__":
    main()
