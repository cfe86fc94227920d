"""Benchmark: analysing a run at the speed of training (issue 13).

For one run (trained here first, timed, unless ``--run`` names an existing one) it times, in one
process and for every analysis that applies:

* **new**: ``over_training(run, [name], device=...)`` — batched over checkpoints, from an empty
  cache, every checkpoint (the path ``grokinterp analyze`` and ``grokinterp run`` take);
* **old**: the per-checkpoint reference path (``reference=True``: one model, one checkpoint at a
  time — what the driver did before batching) on ``--old-checkpoints`` evenly spread checkpoints,
  extrapolated linearly to all of them (the old path costs minutes per analysis);
* **cached**: a second ``over_training`` call (must compute nothing);
* **one call**: all of them in one ``over_training`` call from an empty cache, as ``grokinterp
  analyze`` does (the checkpoints are read and stacked once and shared by the analyses);

and prints the ratios new/old and (new total)/(training time). JSON goes to ``--json``.

    .venv/bin/python benchmarks/bench_analysis.py --preset demo --threads 2 --json out.json
    python3 benchmarks/bench_analysis.py --preset nanda2023 --device cuda --set train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from grokinterp.analysis import applicable, over_training
from grokinterp.config import apply_overrides, load_preset
from grokinterp.store import Run
from grokinterp.training import train


def spread(steps: list[int], k: int) -> list[int]:
    if len(steps) <= k:
        return list(steps)
    if k <= 1 or len(steps) == 1:
        return steps[-1:]
    return [steps[round(i * (len(steps) - 1) / (k - 1))] for i in range(k)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def warm_up(run: Run, device: str) -> float:
    """What every process pays once before its first analysis (CUDA context, the cuBLAS and
    cuSOLVER libraries, the first forward): timed apart, as process start-up."""
    sync(device)
    t = time.perf_counter()
    a = torch.randn(64, 64, device=device, dtype=torch.float64)
    torch.linalg.eigvalsh(a @ a.T)
    torch.linalg.svdvals(a.float())
    model = run.model(run.steps[0]).to(device)
    with torch.no_grad():
        model(run.task().x_test[:8].to(device))
    sync(device)
    return time.perf_counter() - t


def write_profile(
    run: Run, names: list[str], device: str, path: Path, with_torch: bool = True
) -> None:
    """Each analysis once more (from scratch) under cProfile and, ``with_torch``, torch.profiler
    (whose kernel trace costs minutes on a GPU run of hundreds of checkpoints)."""
    import cProfile
    import io
    import pstats
    from contextlib import nullcontext

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    parts = []
    for name in names:
        prof_py = cProfile.Profile()
        with profile(activities=acts) if with_torch else nullcontext() as prof:
            prof_py.enable()
            over_training(run, [name], progress=False, device=device, force=True)
            sync(device)
            prof_py.disable()
        buf = io.StringIO()
        pstats.Stats(prof_py, stream=buf).sort_stats("tottime").print_stats(12)
        ops = prof.key_averages().table(sort_by=sort, row_limit=15) if with_torch else ""
        parts.append(f"===== {name}\n{ops}\n{buf.getvalue()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--run", type=Path, help="analyse this run (copied) instead of training one")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated analyses (default: all)")
    ap.add_argument("--old-checkpoints", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--profile", type=Path, help="write each analysis's profile (top ops, Python) to this file"
    )
    ap.add_argument(
        "--profile-python-only",
        action="store_true",
        help="profile with cProfile only (no torch.profiler kernel trace: seconds, not minutes)",
    )
    ap.add_argument(
        "--chunk-sizes",
        default=None,
        help="also time each analysis at these checkpoints per chunk (e.g. 8,14,16), best of 2",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    try:
        if args.run is not None:
            shutil.copytree(args.run, tmp / "run", ignore=shutil.ignore_patterns("analysis"))
            run = Run.open(tmp / "run")
            t_train = float(run.info.get("wall_time_s") or "nan")
        else:
            cfg = apply_overrides(load_preset(args.preset), args.overrides)
            t0 = time.perf_counter()
            run = train(cfg, tmp / "run", progress=False)
            t_train = time.perf_counter() - t0
        names = [n for n, r in applicable(run).items() if r is None]
        if args.only:
            names = [n for n in names if n in args.only.split(",")]
        n_ckpt = len(run.steps)
        print(
            f"run {args.run or args.preset}: {n_ckpt} checkpoints, trained in {t_train:.1f} s; "
            f"device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
        warmup_s = warm_up(run, device)
        print(f"  device warm-up (CUDA context, cuBLAS/cuSOLVER load): {warmup_s:.2f} s")
        rows = {}
        for name in names:
            sync(device)
            t = time.perf_counter()
            over_training(run, [name], progress=False, device=device, force=True)
            sync(device)
            new = time.perf_counter() - t
            t = time.perf_counter()
            again = over_training(run, [name], progress=False, device=device)
            cached = time.perf_counter() - t
            old_steps = spread(run.steps, args.old_checkpoints)
            sync(device)
            t = time.perf_counter()
            over_training(
                run, [name], old_steps, progress=False, device=device, force=True, reference=True
            )
            sync(device)
            old = (time.perf_counter() - t) * n_ckpt / len(old_steps)
            # the reference call rewrote the cache for its steps; restore the full one
            over_training(run, [name], progress=False, device=device, force=True)
            rows[name] = {
                "new_s": new,
                "old_s_extrapolated": old,
                "old_checkpoints": len(old_steps),
                "speedup": old / new,
                "cached_s": cached,
                "cached_computed": again.computed[name],
            }
            print(
                f"  {name:11s} new {new:7.2f} s   old {old:8.1f} s (from {len(old_steps)} ckpts)"
                f"   {old / new:6.1f}x   cached {cached:.3f} s",
                flush=True,
            )
        by_chunk: dict[str, dict[int, float]] = {}
        for name in names if args.chunk_sizes else []:
            for size in [int(c) for c in args.chunk_sizes.split(",")]:
                times = []
                for _ in range(2):
                    sync(device)
                    t = time.perf_counter()
                    over_training(
                        run, [name], progress=False, device=device, force=True, chunk_size=size
                    )
                    sync(device)
                    times.append(time.perf_counter() - t)
                by_chunk.setdefault(name, {})[size] = min(times)
            print(f"  {name:11s} by chunk size: " + ", ".join(
                f"{k}: {v:.2f} s" for k, v in by_chunk[name].items()
            ))  # fmt: skip
        total_new = sum(r["new_s"] for r in rows.values())
        total_old = sum(r["old_s_extrapolated"] for r in rows.values())
        # what `grokinterp analyze` does: all of them in one call, sharing the stacked weights
        sync(device)
        t = time.perf_counter()
        one = over_training(run, names, progress=False, device=device, force=True)
        sync(device)
        one_call = time.perf_counter() - t
        t = time.perf_counter()
        again = over_training(run, names, progress=False, device=device)
        all_cached = time.perf_counter() - t
        summary = {
            "preset": args.preset if args.run is None else str(args.run),
            "device": device,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "checkpoints": n_ckpt,
            "train_s": t_train,
            "analyses": rows,
            "total_new_s": total_new,
            "total_old_s_extrapolated": total_old,
            "one_call_s": one_call,
            "seconds_by_chunk_size": by_chunk,
            "one_call_seconds": one.seconds,
            "one_call_over_train": one_call / t_train,
            "new_over_train": total_new / t_train,
            "old_over_train": total_old / t_train,
            "all_cached_s": all_cached,
            "all_cached_computed": sum(again.computed.values()),
            "warmup_s": warmup_s,
        }
        print(
            f"all in one call (weights shared): {one_call:.2f} s = {one_call / t_train:.2f}x "
            f"training {dict((k, round(v, 2)) for k, v in one.seconds.items())}"
        )
        print(
            f"total: new {total_new:.1f} s = {total_new / t_train:.2f}x training; old "
            f"{total_old:.1f} s = {total_old / t_train:.1f}x training; second call "
            f"{all_cached:.2f} s ({summary['all_cached_computed']} computed)"
        )
        if args.profile:
            write_profile(run, names, device, args.profile, not args.profile_python_only)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
