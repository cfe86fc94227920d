"""Benchmark: the "fourier" analysis over 100 checkpoints of the demo run (target <= 30 s on 2 CPU
cores), against a naive per-checkpoint implementation of the same measures timed in the same run.

    .venv/bin/python benchmarks/bench_fourier.py [--run checkpoints/demo_fourier] [--threads 2]

The demo run has ~90 checkpoints; the benchmark copies it to a temporary directory and adds
checkpoints interpolated half-way between neighbours until there are ``--checkpoints`` (100).
The naive baseline (rebuilds the model and the Fourier basis with Python loops at every
checkpoint, caches every activation, loops over neurons, frequencies and classes) runs on
``--baseline-checkpoints`` of them and is extrapolated; its results are checked against the fast
path on those checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from grokinterp.analysis import over_training
from grokinterp.config import load_preset
from grokinterp.store import Run, load_tensors, save_tensors


def prepare_run(src: Path, n: int, tmp: Path) -> Run:
    """Copy ``src`` into ``tmp`` and interpolate extra checkpoints until it has ``n``."""
    dst = tmp / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "state"))
    run = Run.open(dst)
    steps = run.steps
    while len(steps) < n:
        gaps = [(b - a, a, b) for a, b in zip(steps, steps[1:], strict=False) if b - a >= 2]
        _, a, b = max(gaps)
        sa, sb = load_tensors(run.step_path(a)), load_tensors(run.step_path(b))
        mid = (a + b) // 2
        save_tensors(run.step_path(mid), {k: (sa[k] + sb[k]) / 2 for k in sa})
        steps = run.steps
    for extra in steps[n:]:
        run.step_path(extra).unlink()
    return Run.open(dst)


# --------------------------------------------------------------------------- naive baseline


def naive_basis(p: int) -> torch.Tensor:
    rows = [[1.0 / math.sqrt(p)] * p]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append([math.cos(2 * math.pi * k * x / p) * math.sqrt(2 / p) for x in range(p)])
        rows.append([math.sin(2 * math.pi * k * x / p) * math.sqrt(2 / p) for x in range(p)])
    return torch.tensor(rows, dtype=torch.float64)


def naive_measures(run: Run, step: int, key: list[int]) -> dict[str, float | list]:
    task = run.task()
    p = task.p
    model = run.model(step)
    B = naive_basis(p)
    grid = torch.tensor([[a, b, p] for a in range(p) for b in range(p)])
    labels = (grid[:, 0] + grid[:, 1]) % p
    with torch.no_grad():
        logits, cache = model.run_with_cache(grid)
    L = logits.double()
    # embedding spectrum
    W_E = model.embed.W_E.detach().double()[:p]
    F_E = B @ W_E
    embed = [
        math.sqrt(float(F_E[2 * k - 1].pow(2).sum() + F_E[2 * k].pow(2).sum()))
        for k in range(1, (p - 1) // 2 + 1)
    ]
    # restricted / excluded loss: project every class column on each key direction
    s = (grid[:, 0] + grid[:, 1]).double()
    kept = torch.zeros_like(L) + L.mean(0, keepdim=True)
    for k in key:
        for trig in (torch.cos, torch.sin):
            d = trig(2 * math.pi * k * s / p)
            d = d / d.norm()
            for c in range(L.shape[1]):
                kept[:, c] += (d @ L[:, c]) * d
    excluded = L - (kept - L.mean(0, keepdim=True))
    train_pos = task.x_train[:, 0] * p + task.x_train[:, 1]
    ce = torch.nn.functional.cross_entropy
    # neurons: per neuron 2-D transform and per-frequency energy
    acts = cache["blocks.0.mlp.hook_post"][:, -1].double()
    best = []
    for j in range(acts.shape[1]):
        Fn = B @ acts[:, j].reshape(p, p) @ B.T
        E = Fn.pow(2)
        total = float(E.sum() - E[0, 0])
        shares = []
        for k in range(1, (p - 1) // 2 + 1):
            r = [2 * k - 1, 2 * k]
            e = float(E[r][:, [0]].sum() + E[[0]][:, r].sum() + E[r][:, r].sum())
            shares.append(e / total if total > 0 else 0.0)
        best.append(1 + max(range(len(shares)), key=shares.__getitem__) if total > 0 else 0)
    return {
        "embed_norms": embed,
        "restricted_loss": float(ce(kept, labels)),
        "excluded_loss": float(ce(excluded[train_pos], labels[train_pos])),
        "neuron_freq": best,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        type=Path,
        default=None,
        help="demo run (default checkpoints/demo_fourier or checkpoints/demo)",
    )
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--baseline-checkpoints", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="time the fast path only")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = args.run or next(
        (
            Path(p)
            for p in ("checkpoints/demo_fourier", "checkpoints/demo")
            if Path(p, "run.json").is_file()
        ),
        None,
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if src is None:
            from grokinterp.training import train

            print("no demo run found: training it (about a minute)...", file=sys.stderr)
            src = train(load_preset("demo"), tmp / "demo", progress=False).path
        run = prepare_run(src, args.checkpoints, tmp)
        steps = run.steps
        t0, c0 = time.perf_counter(), time.process_time()
        res = over_training(run, ["fourier"], progress=False, force=True)
        fast_s, fast_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        over_training(run, ["fourier"], progress=False)
        cached_s = time.perf_counter() - t0

        key = (torch.nonzero(res["fourier/key_mask"][-1]).squeeze(1) + 1).tolist()
        n_base = 0 if args.no_baseline else args.baseline_checkpoints
        idx = torch.linspace(0, len(steps) - 1, n_base).round().long().tolist()
        # one thread for the baseline too, like the fast path: the ratio is then algorithmic only
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        naive = [naive_measures(run, steps[i], key) for i in idx]
        naive_s = (time.perf_counter() - t0) * len(steps) / max(len(idx), 1)
        torch.set_num_threads(args.threads)
        # the baseline and the fast path agree
        for i, nv in zip(idx, naive, strict=True):
            assert math.isclose(
                nv["restricted_loss"],
                float(res["fourier/restricted_loss"][i]),
                rel_tol=1e-4,
                abs_tol=1e-6,
            )
            assert math.isclose(
                nv["excluded_loss"],
                float(res["fourier/excluded_loss"][i]),
                rel_tol=1e-4,
                abs_tol=1e-6,
            )
            torch.testing.assert_close(
                torch.tensor(nv["embed_norms"]).float(),
                res["fourier/embed_norms"][i],
                rtol=1e-4,
                atol=1e-5,
            )
            agree = (
                (torch.tensor(nv["neuron_freq"]) == res["fourier/neuron_freq"][i]).double().mean()
            )
            assert agree > 0.98, agree  # near-ties between two frequencies may flip in float32
    out = {
        "checkpoints": len(steps),
        "threads": args.threads,
        "fourier_seconds": round(fast_s, 2),
        "fourier_cpu_seconds": round(fast_cpu, 2),
        "per_checkpoint_ms": round(1000 * fast_s / len(steps), 1),
        "cached_seconds": round(cached_s, 3),
        "naive_seconds_extrapolated": round(naive_s, 1),
        "speedup_vs_naive": round(naive_s / fast_s, 1) if idx else None,
        "target_seconds": 30,
        "meets_target": fast_s <= 30,
        "key_frequencies": key,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
