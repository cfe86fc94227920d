"""Start-up time of the ``grokinterp`` commands (issue 16, item 3: "fast start").

Every command runs in a fresh interpreter, ``N`` rounds; the medians of its wall time and of its
CPU time (user + system: on a machine shared with other work it moves much less than the wall
time) are reported. The baselines (``python -c pass``, ``import torch``,
``import transformer_lens``) run in the same rounds, so a busy machine shows in them too.

* ``--help``, ``ls DIR``: should import neither torch nor TransformerLens (target ≤ 1 s);
* ``report RUN``: the full report (plotly.js embedded) of an analysed run whose analyses are all
  cached (target ≤ 3 s); the bench fails if a cache file was rewritten (not a report from cache);
* ``train --set train.steps=1`` (the ``demo`` preset): start-up = wall time − the run's own
  training time (the ``wall_time`` of its last ``metrics.jsonl`` row: the step, its evaluation and
  the checkpoint writes).

``--before DIR`` also times every grokinterp command with ``DIR`` first on ``PYTHONPATH`` (a
clean export of another commit), interleaved with the current code in every round, so that
before and after see the same machine load. ``--before-run`` is the analysed run it reports on
(a run folder that version can read; default ``--run``)::

    git -C /work/main archive HEAD | tar -x -C /tmp/gi_head
    python benchmarks/bench_startup.py --before /tmp/gi_head --out startup.json

The analysed run defaults to the ``demo`` preset, trained and analysed once into ``--workdir``
(``grokinterp run --preset demo``: a few minutes on 2 cores) and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "grokinterp-bench-startup"
TRAIN = "grokinterp train --set train.steps=1"
STARTUP = "train start-up (wall − training loop)"


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "grokinterp.cli", *args]


def _env(pythonpath: str | None = None) -> dict[str, str]:
    # a wide terminal (no wrapping work), no colour codes, one torch thread
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd``; the CPU time (user + system of the child) hardly depends
    on what else the machine runs, the wall time does."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _last_wall_time(run: Path) -> float:
    """The training loop's own time: the ``wall_time`` of the last ``metrics.jsonl`` row."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return float(rows[-1].get("wall_time", 0.0))


def _cache_stamps(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run / "analysis").glob("*.safetensors")}


def analysed_run(workdir: Path) -> Path:
    """``workdir/runs/demo``: the demo preset trained and analysed (built on the first call)."""
    run = workdir / "runs" / "demo"
    if not (run / "analysis").is_dir():
        print(f"building the analysed demo run in {run} (once; a few minutes)…", flush=True)
        subprocess.run(
            _cmd("run", "--preset", "demo", "--out", str(run), "--quiet", "--light"),
            cwd=workdir,
            check=True,
            env=_env(),
        )
    return run


def grokinterp_commands(run: Path, workdir: Path, tag: str) -> dict[str, list[str]]:
    train_out = workdir / f"train-1-step-{tag}"
    return {
        "grokinterp --help": _cmd("--help"),
        "grokinterp ls": _cmd("ls", str(run.parent)),
        # into another file, so that the run's own report.html stays as it is
        "grokinterp report (cached)": _cmd(
            "report", str(run), "--out", str(workdir / f"bench-report-{tag}.html")
        ),
        TRAIN: _cmd(
            "train", "--preset", "demo", "--set", "train.steps=1", "--out", str(train_out),
            "--overwrite", "--quiet",
        ),
    }  # fmt: skip


def _stats(ts: list[float], cpu: list[float]) -> dict[str, object]:
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "cpu_median_s": statistics.median(cpu),
        "all_s": ts,
        "cpu_all_s": cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", "-n", type=int, default=5, help="rounds (median reported)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--run", type=Path, help="an analysed run for `report` (default: demo)")
    ap.add_argument("--before", help="a checkout to time too (first on PYTHONPATH)")
    ap.add_argument("--before-run", type=Path, help="the analysed run of --before's report")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args()

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run = (args.run or analysed_run(workdir)).resolve()
    variants = {"after": (None, run)}
    if args.before:
        variants = {"before": (args.before, (args.before_run or run).resolve()), **variants}
    python = [sys.executable, "-c"]
    jobs: list[tuple[str, str, list[str], dict[str, str]]] = [
        ("baseline", name, python + [code], _env())
        for name, code in (
            ("python -c pass", "pass"),
            ("import torch", "import torch"),
            ("import transformer_lens", "import transformer_lens"),
        )
    ]
    which = {}
    for tag, (path, vrun) in variants.items():
        env = _env(path)
        jobs += [(tag, n, c, env) for n, c in grokinterp_commands(vrun, workdir, tag).items()]
        which[tag] = subprocess.run(
            python + ["import grokinterp; print(grokinterp.__file__)"],
            cwd=workdir, capture_output=True, text=True, env=env, check=True,
        ).stdout.strip()  # fmt: skip
    for _, _, cmd, env in jobs:  # warm-up, untimed (the page cache)
        _timed(cmd, workdir, env)
    stamps = {tag: _cache_stamps(vrun) for tag, (_, vrun) in variants.items()}

    times: dict[tuple[str, str], list[float]] = {(t, n): [] for t, n, _, _ in jobs}
    cpus: dict[tuple[str, str], list[float]] = {(t, n): [] for t, n, _, _ in jobs}
    loops: dict[str, list[float]] = {tag: [] for tag in variants}
    for r in range(args.repeats):
        for tag, name, cmd, env in jobs:
            wall, cpu = _timed(cmd, workdir, env)
            times[tag, name].append(wall)
            cpus[tag, name].append(cpu)
            if name == TRAIN:
                loops[tag].append(_last_wall_time(workdir / f"train-1-step-{tag}"))
        print(f"round {r + 1}/{args.repeats}", flush=True)
    for tag, (_, vrun) in variants.items():
        if _cache_stamps(vrun) != stamps[tag]:
            raise SystemExit(f"{tag}: the report rewrote caches of {vrun}: not from the cache")
        shutil.rmtree(workdir / f"train-1-step-{tag}", ignore_errors=True)

    results: dict[str, dict[str, dict]] = {"baseline": {}, **{t: {} for t in variants}}
    for (tag, name), ts in times.items():
        results[tag][name] = _stats(ts, cpus[tag, name])
    for tag in variants:
        startup = [w - s for w, s in zip(times[tag, TRAIN], loops[tag], strict=True)]
        cpu = [c - s for c, s in zip(cpus[tag, TRAIN], loops[tag], strict=True)]
        results[tag][STARTUP] = {**_stats(startup, cpu), "training_loop_s": loops[tag]}
    doc = {
        "what": "start-up of grokinterp commands: fresh interpreter each, median of the rounds",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "grokinterp": which,
        "runs": {tag: str(vrun) for tag, (_, vrun) in variants.items()},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": os.getloadavg(),
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    cols = [(t, k) for t in variants for k in ("median_s", "cpu_median_s")]
    print(
        f"\n{'wall / CPU seconds':44}"
        + "".join(f"{t + (' cpu' if 'cpu' in k else ''):>12}" for t, k in cols)
    )
    for name, r in results["baseline"].items():
        print(f"{name:44}{r['median_s']:12.2f}{r['cpu_median_s']:12.2f}")
    for name in results["after"]:
        print(f"{name:44}" + "".join(f"{results[t][name][k]:12.2f}" for t, k in cols))
    print(f"median of {args.repeats} rounds; wrote {args.out}")


if __name__ == "__main__":
    main()
