"""Run every benchmark (``make bench``): the training engines (bench_train.py: step times,
checkpointing, analysis; on a CUDA machine also time-to-99% and many seeds) and the Fourier
analyses over a run's checkpoints (bench_analysis.py). Numbers are printed and saved as JSON under ``--out``; the
figures quoted in benchmarks/RESULTS.md come from these scripts.

    python benchmarks/run_all.py [--out artifacts/bench] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="artifacts/bench")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    rounds = ["--rounds", "2" if args.quick else "5"]
    train = [sys.executable, str(HERE / "bench_train.py")]
    jobs = [
        ("step_cpu", [*train, "step", "--device", "cpu", *rounds]),
        (
            "ckpt_cpu",
            [*train, "ckpt", "--device", "cpu", "--ckpt-preset", "demo"]
            + [
                "--ckpt-steps",
                "300" if args.quick else "1000",
                "--rounds",
                "1" if args.quick else "3",
            ],
        ),
        (
            "analysis_cpu",
            [*train, "analysis", "--analysis-checkpoints", "5" if args.quick else "20"],
        ),
        ("threads_cpu", [sys.executable, str(HERE / "bench_threads.py"), *rounds]),
    ]
    if cuda:
        jobs += [
            ("step_cuda", [*train, "step", "--device", "cuda", *rounds]),
            ("grok_cuda", [*train, "grok", "--device", "cuda"]),
            ("seeds_cuda", [*train, "seeds", "--device", "cuda", "--seeds", "1", "8", "64"]),
            ("ckpt_cuda", [*train, "ckpt", "--device", "cuda", "--rounds", "2"]),
        ]
    analysis = [sys.executable, str(HERE / "bench_analysis.py"), "--preset", "demo"]
    jobs.append(("analysis_batched_cpu", [*analysis, "--device", "cpu", "--threads", "2"]))
    if cuda:
        jobs.append(
            ("analysis_cuda", [*analysis, "--device", "cuda", "--set", "train.device=cuda"])
        )
    failed = []
    for name, cmd in jobs:
        if any(b in cmd[1] for b in ("bench_train.py", "bench_threads.py", "bench_analysis.py")):
            cmd = [*cmd, "--json", str(out / f"{name}.json")]
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"===== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
