"""The training loop: ``train(config, out_dir)`` writes a run directory with dense checkpoints.

One loop for every training (in the spirit of nanoGPT): a :class:`~grokinterp.training.group.
SeedGroup` of ``S`` seeds (``S = 1``: a plain run; many seeds: :func:`grokinterp.training.
train_seeds`) takes a step (forward → loss → backward → masks, Grokfast → optimizer → masks, norm
constraint; the engine supplies the forward/loss and runs the step), evaluates every
``eval_every`` steps, checkpoints on a log-then-linear schedule, stops a seed early or marks it
diverged. The resume state (optimizer, RNG, filter, counters) is saved with every checkpoint, so
a killed run resumes bit-exactly on CPU, and a CPU run is the same on every thread count
(:mod:`grokinterp.training.numerics`). ``run.json`` records the engine that ran (``engine``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from grokinterp.config import GrokinterpError, RunConfig, validate
from grokinterp.store import Run, atomic_write_text, is_run_dir, read_metrics
from grokinterp.store.lock import RunLock, clear_run_dir, is_vacant_dir
from grokinterp.store.state import (
    STATE_JSON,
    has_resume_state,
    load_resume_state,
    resume_state_file,
)
from grokinterp.tasks import make_task, split_hash
from grokinterp.training.engines import resolve_device, resolve_engine
from grokinterp.training.group import STATE_KEYS, SeedGroup
from grokinterp.training.numerics import cpu_determinism
from grokinterp.training.trackers import open_trackers

# Keys that may differ between a run on disk and the config it is resumed with.
RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "early_stop_acc"),
    ("train", "early_stop_patience"),
    ("train", "device"),
    ("train", "engine"),
    ("train", "tf32"),
    ("train", "compile"),
    ("train", "threads"),  # results do not depend on the thread count (numerics.py)
    ("train", "log"),  # trackers only read the metrics rows (trackers.py)
}


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for section in ("task", "model", "train"):
        for key in sorted(set(da[section]) | set(db[section])):
            if (
                da[section].get(key) != db[section].get(key)
                and (section, key) not in RESUMABLE_CHANGES
            ):
                diffs.append(f"{section}.{key}")
    return diffs


def prepare_dir(config: RunConfig, out: Path, resume: bool, overwrite: bool) -> Run | None:
    """Return the existing run to resume, or None to start fresh; refuse to clobber. Call it
    holding :class:`~grokinterp.store.lock.RunLock` on ``out``."""
    if is_run_dir(out):
        if overwrite:
            clear_run_dir(out)
            return None
        existing = Run.open(out)
        if not resume:
            raise GrokinterpError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        diffs = _config_diff(existing.config, config)
        if diffs:
            raise GrokinterpError(
                f"cannot resume {out}: its config differs in {', '.join(diffs)} (use --overwrite to start over)"
            )
        if not has_resume_state(out):
            if existing.info.get("status") == "running" and set(existing.steps) <= {0}:
                # killed before its first resume state was written: nothing to lose, start over
                clear_run_dir(out)
                return None
            raise GrokinterpError(f"cannot resume {out}: {STATE_JSON} is missing")
        return existing
    if not is_vacant_dir(out):
        if overwrite:
            clear_run_dir(out)
        else:
            raise GrokinterpError(
                f"{out} exists and is not a grokinterp run; choose another --out or pass --overwrite"
            )
    return None


@contextlib.contextmanager
def numerics_scope(config: RunConfig) -> Iterator[None]:
    """``train.threads`` torch threads and, on CPU, deterministic algorithms (restored after)."""
    cpu = resolve_device(config.train.device).type == "cpu"
    with cpu_determinism(config.train.threads, deterministic=cpu):
        yield


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
) -> Run:
    """Train ``config`` into ``out_dir`` (DESIGN §4) and return the :class:`Run`.

    ``resume=True`` continues a killed or shorter run from its last checkpoint, bit-exactly on
    CPU; an existing different run is never overwritten unless ``overwrite=True``.
    ``trust_pickle=True`` lets a resume read a run written by an older grokinterp, whose resume
    state is a pickle (``state/latest.pt``), with the full unpickler when the safe
    ``weights_only`` loader refuses it (that can run code stored in the file).
    """
    validate(config)
    make_task(config.task.name, **config.task.params)  # bad parameters fail before any disk change
    out = Path(out_dir)
    with RunLock(out):  # one writer per run folder (store.lock)
        return train_locked(config, out, resume, overwrite, progress, trust_pickle)


def train_locked(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    engine: str | None = None,
) -> Run:
    """:func:`train` for a caller that holds the run folder's lock; ``engine`` overrides
    ``train.engine`` ("eager" | "fast")."""
    existing = prepare_dir(config, out, resume, overwrite)
    if existing is not None and existing.info.get("status") == "complete":
        done = existing.info.get("final_step", -1) >= config.train.steps or existing.info.get(
            "stopped_early"
        )
        if done and existing.config.train.steps == config.train.steps:
            return existing  # nothing left to do
    with numerics_scope(config):
        group = SeedGroup([config], engine or resolve_engine(config))
        if existing is None:
            return fit(group, [out], progress)[0]
        _resume(group, existing, trust_pickle)
        existing.update_info(config=config.to_dict(), status="running", engine=group.engine.name)
        return fit(group, [out], progress, runs=[existing])[0]


def _resume(group: SeedGroup, run: Run, trust_pickle: bool) -> None:
    """Load ``run``'s resume state into ``group`` (one seed) and drop whatever was written after
    it (metrics rows, later checkpoints); a state that does not fit is a GrokinterpError."""
    out = run.path
    state = load_resume_state(out, trust_pickle=trust_pickle)
    missing = sorted(STATE_KEYS - set(state))
    if missing:
        raise GrokinterpError(
            f"{resume_state_file(out)} is not a grokinterp resume state (it lacks "
            f"{', '.join(missing)}); cannot resume"
        )
    try:
        group.load_states([state])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise GrokinterpError(
            f"the resume state {resume_state_file(out)} does not fit this run ({why})"
        ) from None
    rows = [m for m in read_metrics(out / "metrics.jsonl") if m["step"] <= group.step]
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in rows))
    for s in run.steps:
        if s > group.step:
            run.step_path(s).unlink()
    group.ckpt_steps.add(group.tc.steps)


def fit(
    group: SeedGroup, dirs: list[Path], progress: bool, runs: list[Run] | None = None
) -> list[Run]:
    """Train ``group`` to ``train.steps`` writing seed ``i`` into ``dirs[i]``: new runs, or the
    resumed ``runs``. Seeds that diverge are marked ``"diverged"`` in ``run.json`` and, once the
    others are done, reported by a GrokinterpError."""
    fresh = runs is None
    # Before Run.create: a tracker that fails to open leaves a fresh folder untouched.
    trackers = open_trackers(group.configs, dirs, None if fresh else group.step, progress)
    if fresh:
        info = {
            "split_hash": split_hash(group.data.task),
            "n_params": sum(
                p[0].numel() if group.engine.stacked else p.numel() for p in group.params.values()
            ),
            "engine": group.engine.name,
        }
        runs = [Run.create(d, c, info) for c, d in zip(group.configs, dirs, strict=True)]
    logs = []
    try:
        logs = [open(d / "metrics.jsonl", "w" if fresh else "a") for d in dirs]  # noqa: SIM115
        if fresh:
            rows = group.evaluate(list(range(group.n)))
            for log, m in zip(logs, rows, strict=True):
                log.write(json.dumps(m) + "\n")
                log.flush()
            for t, m in zip(trackers, rows, strict=True):
                t.log(m)
            group.checkpoint(list(range(group.n)), dirs)
        outcome = _loop(group, logs, dirs, progress, trackers)
    except BaseException:
        group.close(quiet=True)  # what was snapshotted is written (a KeyboardInterrupt too)
        for t in trackers:
            t.close(failed=True)
        raise
    finally:
        for f in logs:
            f.close()
    for t in trackers:
        t.close()
    group.close()
    return _finish(group, runs, *outcome)


def _loop(group: SeedGroup, logs: list, dirs: list[Path], progress: bool, trackers: list):
    tc, n = group.tc, group.n
    active, stopped = [True] * n, [False] * n
    final, diverged = [tc.steps] * n, []
    name = group.configs[0].name
    bar = tqdm(
        total=tc.steps,
        initial=group.step,
        disable=not progress,
        desc=name if n == 1 else f"{name} ×{n}",
        dynamic_ncols=True,
        leave=True,
    )
    while group.step < tc.steps and any(active):
        start = time.perf_counter()
        group.train_step()
        group.wall += time.perf_counter() - start
        step, is_ckpt, stop_now = group.step, group.step in group.ckpt_steps, []
        if step % tc.eval_every == 0 or is_ckpt or step == tc.steps:
            rows = group.evaluate([i for i in range(n) if active[i]] if is_ckpt else None)
            for i, m in enumerate(rows):
                if not active[i]:
                    continue
                logs[i].write(json.dumps(m) + "\n")
                logs[i].flush()
                trackers[i].log(m)
                if not math.isfinite(m["train_loss"]):
                    active[i], final[i] = False, step
                    diverged.append(i)
                    continue
                if tc.early_stop_acc is not None:
                    group.above[i] = group.above[i] + 1 if m["test_acc"] >= tc.early_stop_acc else 0
                    if group.above[i] >= tc.early_stop_patience:
                        stop_now.append(i)
            if n == 1:
                bar.set_postfix(
                    train_loss=f"{rows[0]['train_loss']:.3g}",
                    train_acc=f"{rows[0]['train_acc']:.3f}",
                    test_acc=f"{rows[0]['test_acc']:.3f}",
                    refresh=False,
                )
        to_write = [i for i in range(n) if active[i]] if is_ckpt else stop_now
        if to_write:
            group.checkpoint(to_write, dirs)
        for i in stop_now:
            active[i], stopped[i], final[i] = False, True, step
        bar.update(1)
    bar.close()
    return stopped, final, diverged


def _finish(
    group: SeedGroup, runs: list[Run], stopped: list[bool], final: list[int], diverged: list[int]
) -> list[Run]:
    for i, run in enumerate(runs):
        if i in diverged:
            run.update_info(
                status="diverged", final_step=final[i], wall_time_s=round(group.wall, 3)
            )
            continue
        run.update_info(
            status="complete",
            final_step=min(final[i], group.step),
            wall_time_s=round(group.wall, 3),
            stopped_early=stopped[i],
        )
    if diverged and group.n == 1:
        raise GrokinterpError(
            f"training diverged at step {final[0]} (train loss is not finite); lower train.lr "
            "or model.init_scale"
        )
    if diverged:
        names = ", ".join(str(group.configs[i].train.seed) for i in diverged)
        raise GrokinterpError(
            f"training diverged for seed(s) {names} (train loss not finite); the other seeds "
            "completed. Lower train.lr or model.init_scale"
        )
    return runs


__all__ = ["RESUMABLE_CHANGES", "fit", "prepare_dir", "train", "train_locked"]
