"""Hyperparameter sweeps as Ray tasks: a grid of ordinary runs, resumable, with phase labels.

Grokking is a property of a region of hyperparameter space: Liu et al. 2022, "Towards
Understanding Grokking: An Effective Theory of Representation Learning", map the phases
comprehension / grokking / memorization / confusion over weight decay × learning rate × data
fraction, and Omnigrok (Liu, Michaud, Tegmark 2023) over initialization scale × data size. A
sweep trains one run per grid point and seed and labels each with its phase
(:mod:`grokinterp.analysis.phases`).

- **Grid**: ``--grid train.weight_decay=0.1,0.3,1 --grid task.train_fraction=0.2,0.5`` is the
  Cartesian product; every grid point is a *cell*. ``--seeds 0-4`` (or ``0,1,7``) trains one run
  per seed in every cell by setting ``train.seed`` only (the model initialization and batch
  order); the data split stays the preset's ``task.seed``, unless the grid names ``task.seed``.
- **Runs**: each run is an ordinary run directory ``OUT/<cell name>[__seed=N]`` (e.g.
  ``OUT/weight_decay=0.3__train_fraction=0.5``), trained by :func:`grokinterp.training.train`
  inside a Ray task with ``num_cpus=cpus_per_run`` (and as many torch threads) and
  ``num_gpus=gpus_per_run``.
- **Ray**: without ``address`` a local Ray instance is started and stopped by the sweep, with
  its temporary files and logs in ``OUT/ray/`` (reached through a short symlink in /tmp when
  ``OUT`` is too deep for Ray's 107-byte socket paths) and nothing on the terminal
  (``log_to_driver=False``). With ``address`` the sweep joins that cluster; ``OUT`` must then be
  on a filesystem every node sees (NFS, a shared volume), and every node needs grokinterp.
- **Resumable**: finished runs (``run.json`` status complete) are skipped; a run that was killed
  mid-training continues from its last checkpoint (``train(..., resume=True)``); runs that
  failed are tried again. ``grokinterp sweep --out OUT`` with no preset/grid continues the sweep
  recorded in ``OUT/sweep.json``.
- **Trackers**: with ``train.log`` (``--log tensorboard,wandb``) every run logs to its own
  tracker run in ``OUT/<run>/logs/`` (:mod:`grokinterp.training.trackers`); W&B runs are grouped
  by the sweep (``group`` = the folder's name, ``job_type`` = the cell), and
  ``tensorboard --logdir OUT`` shows one run per cell.
- **Manifest** ``OUT/sweep.json`` (layout in :mod:`grokinterp.report.sweep`): every cell, its
  overrides, status (pending / running / done / failed), error text, phase; rewritten atomically
  at every change. A failing run fails its cell (its error recorded), never the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokinterp.analysis.phases import (
    DEFAULT_RATIO,
    PHASE_THRESHOLD,
    PHASES,
    aggregate_phases,
    classify_metrics,
    validate_phase_params,
)
from grokinterp.config import GrokinterpError, RunConfig
from grokinterp.experiments.executors import (
    INSTALL_HINT,
    _finished,
    _import_ray,
    _partial,
    _RayExecutor,
    _SerialExecutor,
    execute_run,
)
from grokinterp.experiments.grid import (
    CellSpec,
    GridAxis,
    RunSpec,
    expand_grid,
    parse_grid,
    parse_seeds,
)
from grokinterp.report.sweep import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    manifest_counts,
    read_manifest,
    render_sweep_report,
)
from grokinterp.store import atomic_write_text, read_metrics

__all__ = [
    "INSTALL_HINT",
    "CellSpec",
    "GridAxis",
    "RunSpec",
    "SweepResult",
    "execute_run",
    "expand_grid",
    "parse_grid",
    "parse_seeds",
    "run_sweep",
]

LOCK_NAME = ".sweep.lock"


# ----------------------------------------------------------------------------- manifest


def _spec_dict(
    base: RunConfig,
    axes: Sequence[GridAxis],
    seeds: Sequence[int] | None,
    preset: str | None,
    threshold: float,
    ratio: float,
    sustain: int,
) -> dict[str, Any]:
    # A JSON round trip so that it compares equal to what a restart reads back from disk.
    return json.loads(
        json.dumps(
            {
                "preset": preset,
                "config": base.to_dict(),
                "grid": [a.to_dict() for a in axes],
                "seeds": list(seeds) if seeds is not None else None,
                "threshold": threshold,
                "ratio": ratio,
                "sustain": sustain,
            }
        )
    )


def _without_log(config: Any) -> Any:
    """A config dict without ``train.log`` (the trackers, which a continued sweep may change)."""
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        return config
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "log"}}


def _check_same_sweep(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    diffs = []
    if _without_log(old.get("config")) != _without_log(new["config"]):
        o, n = old.get("config", {}), new["config"]
        for section in ("task", "model", "train"):
            for k in sorted(set(o.get(section, {})) | set(n.get(section, {}))):
                if (section, k) == ("train", "log"):
                    continue  # trackers may change when a sweep continues (runs resume alike)
                if o.get(section, {}).get(k) != n.get(section, {}).get(k):
                    diffs.append(f"{section}.{k}")
        diffs = diffs or ["the base config"]
    old_grid = [(a["key"], a["labels"]) for a in old.get("grid", [])]
    new_grid = [(a["key"], a["labels"]) for a in new["grid"]]
    if old_grid != new_grid:
        diffs.append("the grid")
    if old.get("seeds") != new["seeds"]:
        diffs.append("the seeds")
    if diffs:
        raise GrokinterpError(
            f"{out} holds a different sweep (it differs in {', '.join(diffs)}); choose another "
            f"--out, or run `grokinterp sweep --out {out}` alone to continue the recorded one"
        )


def _cell_status(runs: list[dict[str, Any]]) -> str:
    statuses = {r["status"] for r in runs}
    for s in ("running", "pending", "failed"):
        if s in statuses:
            return s
    return "done"


def _cell_dict(cell: CellSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    finished = [r for r in runs if r.get("phase") in PHASES]
    agg = aggregate_phases(finished)
    errors = [r["error"] for r in runs if r.get("status") == "failed" and r.get("error")]
    return {
        "index": cell.index,
        "name": cell.name,
        "values": cell.values,
        "labels": cell.labels,
        "overrides": cell.overrides,
        "status": _cell_status(runs),
        "phase": agg.phase,
        "fractions": agg.fractions,
        "median_ratio": agg.median_ratio,
        "median_delay": agg.median_delay,
        "median_fit_step": agg.median_fit_step,
        "median_generalize_step": agg.median_generalize_step,
        "n_finished": agg.n_runs,
        "error": errors[0] if errors else None,
        "runs": runs,
    }


def _phase_fields(
    metrics: list[dict[str, Any]], threshold: float, ratio: float, sustain: int
) -> dict[str, Any]:
    try:
        return classify_metrics(metrics, threshold, ratio, sustain).to_dict()
    except GrokinterpError as e:
        return {"phase": None, "phase_error": str(e)}


def _last_metrics(path: Path) -> dict[str, Any] | None:
    """The last complete line of a metrics.jsonl (read from its tail only)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


class _Lock:
    """``OUT/.sweep.lock`` with host and pid: refuses a second live sweep on the same folder."""

    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        if self.path.is_file():
            try:
                info = json.loads(self.path.read_text())
                alive = info.get("host") == socket.gethostname() and _pid_alive(int(info["pid"]))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                alive = False
            if alive and int(info["pid"]) != os.getpid():
                raise GrokinterpError(
                    f"another sweep (pid {info['pid']}) is running in {out}; wait for it or stop it"
                )
        atomic_write_text(self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))

    def release(self) -> None:
        if self.path.is_file():
            self.path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What one invocation of :func:`run_sweep` did."""

    path: Path
    manifest: dict[str, Any]
    executed: list[str]  # runs trained (fresh or resumed) by this invocation
    skipped: list[str]  # runs already finished before it started
    resumed: list[str]  # executed runs that continued a partially trained run
    failed: list[str]  # runs that failed in this invocation
    report: Path | None = None

    @property
    def cells(self) -> list[dict[str, Any]]:
        return self.manifest["cells"]


class _Display:
    """A rich progress display: one overall bar (cells done / running / failed) + running runs."""

    def __init__(self, enabled: bool, total: int, console=None):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        self.overall = self.progress.add_task("[bold]sweep", total=total, info="")
        self.rows: dict[str, Any] = {}

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def counts(self, counts: dict[str, int], done_or_failed: int) -> None:
        if self.enabled:
            info = (
                f"[green]done {counts['done']}[/] · [cyan]running {counts['running']}[/] · "
                f"[red]failed {counts['failed']}[/] · pending {counts['pending']}"
            )
            self.progress.update(self.overall, completed=done_or_failed, info=info)

    def start(self, name: str, steps: int) -> None:
        if self.enabled:
            self.rows[name] = self.progress.add_task(f"  {name}", total=steps, info="")

    def tick(self, name: str, path: Path) -> None:
        if self.enabled and name in self.rows:
            m = _last_metrics(path / "metrics.jsonl")
            if m:
                self.progress.update(
                    self.rows[name],
                    completed=m.get("step", 0),
                    info=f"train {m.get('train_acc', 0):.2f} test {m.get('test_acc', 0):.2f}",
                )

    def finish(self, name: str, line: str) -> None:
        if self.enabled:
            if name in self.rows:
                self.progress.remove_task(self.rows.pop(name))
            self.progress.console.print(line, highlight=False)


def resume_spec(out_dir: str | Path) -> tuple[RunConfig, list[GridAxis], list[int] | None, dict]:
    """The base config, grid and seeds recorded in ``OUT/sweep.json`` (to continue a sweep)."""
    spec = read_manifest(out_dir).get("spec", {})
    base = RunConfig.from_dict(spec["config"])
    axes = [
        GridAxis(a["key"], tuple(a["values"]), tuple(a["labels"])) for a in spec.get("grid", [])
    ]
    return base, axes, spec.get("seeds"), spec


def run_sweep(
    base: RunConfig | None,
    grid: Sequence[str | GridAxis] | None,
    out_dir: str | Path,
    seeds: str | Sequence[int] | None = None,
    *,
    preset: str | None = None,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    max_concurrent: int | None = None,
    max_retries: int = 1,
    threshold: float | None = None,
    ratio: float | None = None,
    sustain: int | None = None,
    progress: bool = True,
    report: bool = True,
    use_ray: bool = True,
    console=None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Train every run of the grid (as Ray tasks), skipping finished ones; label their phases.

    Args:
        base: the base config (preset + ``--set``); None continues the sweep recorded in
            ``out_dir/sweep.json`` (then ``grid`` and ``seeds`` must be None too).
        grid: ``["train.weight_decay=0.1,0.3,1", "task.train_fraction=0.2,0.5"]``.
        out_dir: the sweep folder (runs, ``sweep.json``, ``ray/`` logs, ``report.html``).
        seeds: ``"0-4"``, ``"0,1,7"`` or a list: one run per seed (sets ``train.seed``).
        preset: the preset's name, recorded in the manifest.
        address: a Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``);
            None starts a local Ray for the duration of the sweep.
        cpus_per_run, gpus_per_run: Ray resources of each run (``num_cpus``, ``num_gpus``);
            fractional GPUs pack several runs on one GPU. Torch gets ``int(cpus_per_run)`` threads.
        max_concurrent: at most this many runs in flight (default: what the cluster's CPUs and
            GPUs allow at start; with a local Ray it also sizes Ray's CPU count).
        max_retries: Ray retries of a run whose worker died (the run resumes from its checkpoint).
        threshold, ratio, sustain: the phase rule (:func:`grokinterp.analysis.phases.classify_phase`);
            default: the manifest's values, else ``PHASE_THRESHOLD`` (0.9), 3, 1.
        progress: show the rich progress display.
        report: write ``out_dir/report.html`` at the end.
        use_ray: False runs everything in this process, one run after the other (tests).
        on_event: called as ``on_event(kind, record)`` with kind "start", "done" or "failed".
    """
    out = Path(out_dir).absolute()
    old_manifest = read_manifest(out) if (out / MANIFEST_NAME).is_file() else None
    old_spec = old_manifest.get("spec", {}) if old_manifest else {}
    if base is None:
        if grid or seeds is not None:
            raise GrokinterpError("--grid/--seeds need --preset or --config")
        if old_manifest is None:
            raise GrokinterpError(
                f"{out} holds no sweep.json; start a sweep with --preset or --config and --grid"
            )
        base, axes, seed_list, _ = resume_spec(out)
        preset = old_spec.get("preset")
    else:
        axes = [parse_grid(g) for g in (grid or [])]
        seed_list = parse_seeds(seeds)
        if not axes and seed_list is None:
            raise GrokinterpError("give at least one --grid key=v1,v2,... or --seeds")
    threshold = threshold if threshold is not None else old_spec.get("threshold", PHASE_THRESHOLD)
    ratio = ratio if ratio is not None else old_spec.get("ratio", DEFAULT_RATIO)
    sustain = sustain if sustain is not None else old_spec.get("sustain", 1)
    validate_phase_params(threshold, ratio, sustain)
    if not (cpus_per_run > 0):
        raise GrokinterpError(f"--cpus-per-run {cpus_per_run} must be > 0")
    if gpus_per_run < 0:
        raise GrokinterpError(f"--gpus-per-run {gpus_per_run} must be ≥ 0")
    if max_concurrent is not None and max_concurrent < 1:
        raise GrokinterpError(f"--max-concurrent {max_concurrent} must be ≥ 1")
    cells = expand_grid(base, axes, seed_list)
    spec = _spec_dict(base, axes, seed_list, preset, threshold, ratio, sustain)
    if old_manifest is not None:
        _check_same_sweep(old_spec, spec, out)
    elif out.exists() and any(out.iterdir()):
        raise GrokinterpError(
            f"{out} exists and is not a sweep folder (no {MANIFEST_NAME}); choose another --out"
        )
    if use_ray:
        _import_ray()  # say how to install Ray before touching the disk
    out.mkdir(parents=True, exist_ok=True)
    lock = _Lock(out)

    # ---- the state of every run, from the disk (the source of truth), not the old manifest
    old_runs = {
        r["name"]: r for c in (old_manifest or {}).get("cells", []) for r in c.get("runs", [])
    }
    records: dict[str, dict[str, Any]] = {}
    todo: list[RunSpec] = []
    skipped: list[str] = []
    for cell in cells:
        for rs in cell.runs:
            path = out / rs.name
            prev = old_runs.get(rs.name, {})
            rec = {
                "name": rs.name,
                "seed": rs.seed,
                "overrides": rs.overrides,
                "status": "pending",
                "error": None,
                "attempts": prev.get("attempts", 0),
            }
            if _finished(path, rs.config):
                rec["status"] = "done"
                for k in ("elapsed_s", "train_wall_s", "host"):
                    if k in prev:
                        rec[k] = prev[k]
                rec.update(
                    _phase_fields(read_metrics(path / "metrics.jsonl"), threshold, ratio, sustain)
                )
                skipped.append(rs.name)
            else:
                todo.append(rs)
            records[rs.name] = rec

    def write_manifest() -> dict[str, Any]:
        cell_dicts = [_cell_dict(c, [records[r.name] for r in c.runs]) for c in cells]
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "spec": spec,
            "created": (old_manifest or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "ray": {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run},
            "counts": manifest_counts(cell_dicts),
            "cells": cell_dicts,
        }
        atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1))
        return manifest

    manifest = write_manifest()
    executed: list[str] = []
    resumed: list[str] = []
    failed: list[str] = []
    display = _Display(progress, sum(len(c.runs) for c in cells), console)
    executor = None
    inflight: dict[Any, RunSpec] = {}
    queue = deque(todo)
    in_main = threading.current_thread() is threading.main_thread()
    original_handler = signal.getsignal(signal.SIGTERM) if in_main else None

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    def refresh() -> None:
        counts = manifest["counts"]
        display.counts(counts, counts["done"] + counts["failed"])

    try:
        with display:
            refresh()
            if queue:
                executor = (
                    _RayExecutor(
                        out, address, cpus_per_run, gpus_per_run, max_concurrent, max_retries
                    )
                    if use_ray
                    else _SerialExecutor(cpus_per_run)
                )
                limit = max_concurrent or executor.capacity()
                if in_main:
                    # After ray.init (which sets its own): a plain `kill` stops the sweep like
                    # Ctrl-C, with running runs back to pending and Ray stopped.
                    signal.signal(signal.SIGTERM, _on_term)
            while queue or inflight:
                while queue and len(inflight) < limit:
                    rs = queue.popleft()
                    rec = records[rs.name]
                    rec.update(status="running", error=None, attempts=rec["attempts"] + 1)
                    rec.pop("traceback", None)
                    rec["resumed"] = _partial(out / rs.name)
                    if rec["resumed"]:
                        resumed.append(rs.name)
                    executed.append(rs.name)
                    display.start(rs.name, rs.config.train.steps)
                    manifest = write_manifest()
                    refresh()
                    if on_event:
                        on_event("start", rec)
                    inflight[executor.submit(rs, out / rs.name)] = rs
                for h in executor.wait(list(inflight), timeout=0.5):
                    rs = inflight.pop(h)
                    res = executor.result(h)
                    rec = records[rs.name]
                    for k in ("elapsed_s", "train_wall_s", "host"):
                        if k in res:
                            rec[k] = res[k]
                    if res.get("ok"):
                        rec["status"] = "done"
                        rec.update(_phase_fields(res["metrics"], threshold, ratio, sustain))
                        line = f"[green]✓[/] {rs.name}: {rec.get('phase')}" + (
                            f" (fit step {rec['fit_step']}, generalize step {rec['generalize_step']})"
                            if rec.get("generalize_step") is not None
                            else ""
                        )
                    else:
                        rec.update(
                            status="failed", error=res["error"], traceback=res.get("traceback")
                        )
                        failed.append(rs.name)
                        line = f"[red]✗[/] {rs.name}: {res['error']}"
                    manifest = write_manifest()
                    display.finish(rs.name, line)
                    refresh()
                    if on_event:
                        on_event(rec["status"], rec)
                for rs in inflight.values():
                    display.tick(rs.name, out / rs.name)
    except BaseException:
        # Interrupted (Ctrl-C, kill) or a bug: what was running goes back to pending.
        for rs in inflight.values():
            records[rs.name]["status"] = "pending"
        if executor is not None:
            executor.cancel(list(inflight))
        write_manifest()
        raise
    finally:
        if executor is not None:
            executor.shutdown()
        if in_main and original_handler is not None:
            signal.signal(signal.SIGTERM, original_handler)
        lock.release()
    report_path = None
    if report:
        try:
            report_path = render_sweep_report(out, out / "report.html")
        except Exception as e:  # noqa: BLE001 — the runs are done; a report bug must not hide them
            if display.enabled:
                display.console.print(f"[yellow]warning:[/] report not written: {e}")
    return SweepResult(out, manifest, executed, skipped, resumed, failed, report_path)
