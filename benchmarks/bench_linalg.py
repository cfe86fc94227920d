"""Benchmark: the small float64 linear algebra of the rank and rqi analyses, GPU vs CPU (issue 13).

The ``rank`` analysis needs the eigenvalues of one Gram matrix per checkpoint and layer
(512×512 or 128×128 at Nanda et al.'s size); ``rqi`` needs the top principal plane of one
113×128 embedding per checkpoint. On a GPU a batched call on such small matrices is launched
matrix by matrix by the solver library, so it can lose to the CPU. This times, in one process,
each shape on the GPU, on the CPU in one batched call, and on the CPU split across a thread pool,
to decide where the analyses should solve them. On an H200 box the GPU won for every shape
(RESULTS.md §(e2)), so they stay on the GPU and rank shrinks its matrices instead.

    python3 benchmarks/bench_linalg.py --json out.json        # on a machine with a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def timed(fn, device: str, repeat: int = 3) -> float:
    fn()  # warm-up (library load, workspace)
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def pooled(op, x: torch.Tensor, workers: int):
    parts = x.chunk(workers)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(op, parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=418)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    workers = os.cpu_count() or 1
    g = torch.Generator().manual_seed(0)
    cases = {
        "eigvalsh 512": (torch.linalg.eigvalsh, (512, 512), True),
        "eigvalsh 128": (torch.linalg.eigvalsh, (128, 128), True),
        "eigh 128": (torch.linalg.eigh, (128, 128), True),
        "svd 113x128": (lambda a: torch.linalg.svd(a, full_matrices=False), (113, 128), False),
        "svdvals 2000x128": (torch.linalg.svdvals, (2000, 128), False),
    }
    rows = {}
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": workers,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
    }
    for name, (op, shape, sym) in cases.items():
        a = torch.randn(args.batch, *shape, generator=g, dtype=torch.float64)
        if sym:
            a = a @ a.mT
        row = {
            "cpu batched": timed(lambda a=a, op=op: op(a), "cpu"),
            f"cpu pool {workers}": timed(lambda a=a, op=op: pooled(op, a, workers), "cpu"),
        }
        if cuda:
            ag = a.cuda()
            row["cuda batched"] = timed(lambda ag=ag, op=op: op(ag), "cuda")
            row["cuda→cpu pool→cuda"] = timed(
                lambda ag=ag, op=op: [
                    torch.as_tensor(r[0] if isinstance(r, tuple) else r).cuda()
                    for r in pooled(op, ag.cpu(), workers)
                ],
                "cuda",
            )
        rows[name] = {k: round(v, 4) for k, v in row.items()}
        print(f"{name:18s}", "  ".join(f"{k}: {v:.4f}s" for k, v in rows[name].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "seconds": rows}, f, indent=1)
    print(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
