"""Experiment trackers: every ``metrics.jsonl`` row also goes to TensorBoard and/or W&B.

``train.log = ["tensorboard", "wandb"]`` (``grokinterp train --log tensorboard,wandb``) opens one
tracker run per run folder. The scalars logged are the metrics row itself: same step, same keys
(``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``weight_norm_l2``, ``weight_norm_l1``,
``lr``, ``wall_time``, ...), same values: W&B stores the float64 numbers exactly (JSON);
TensorBoard's scalar format is float32, so its values are the rows' rounded to float32 (a float64
tensor summary would be exact, but TensorBoard's default data server does not plot those).
Training numerics are untouched: trackers only read the rows after they are written.

Where the logs go (inside the run folder, so they travel with it)::

    <run>/logs/tensorboard/events.out.tfevents.*     tensorboard --logdir <run>/logs
    <run>/logs/wandb/offline-run-*/run-<id>.wandb    (or the online run; W&B's own files)
    <run>/logs/wandb.json                            the W&B run id, project, name, group

W&B follows its own settings (``WANDB_MODE=offline`` / ``disabled``, ``WANDB_PROJECT``,
``WANDB_ENTITY``, ``wandb login``); the project defaults to ``grokinterp``. Every logged key is
plotted against the metric ``step`` (``define_metric``), so the analysis curves pushed later by
:func:`grokinterp.experiments.tracking.log_analysis` share the training curves' x-axis.

Resume continues the same tracker runs: W&B resumes the run id stored in ``logs/wandb.json``;
TensorBoard appends a new event file whose ``purge_step`` hides whatever the killed run logged
after the checkpoint it resumes from. A run in a sweep folder (beside its ``sweep.json``) joins
the W&B group named after the sweep (job type: its grid cell); the seeds of ``--seeds`` join the
group named after their folder. TensorBoard needs no groups: ``tensorboard --logdir SWEEP`` shows
one run per cell (``<cell>/logs/tensorboard``).

The packages are optional (``pip install 'grokinterp[trackers]'``) and imported only here, inside
functions, so a run without trackers never loads them.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from grokinterp.config import GrokinterpError, RunConfig
from grokinterp.config.schema import TRACKERS
from grokinterp.store import atomic_write_text

__all__ = [
    "INSTALL_HINT",
    "LOGS_DIR",
    "TRACKERS",
    "RunTrackers",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "has_tracker_run",
    "open_run_trackers",
    "open_trackers",
    "scalars",
    "tracker_tag",
]

INSTALL_HINT = "pip install 'grokinterp[trackers]'"
LOGS_DIR = "logs"
WANDB_META = "wandb.json"
DEFAULT_PROJECT = "grokinterp"
# The TensorBoard writer flushes at least this often (seconds), so a killed run loses at most
# this much of its event file (the resume then purges and re-logs from its checkpoint anyway).
TB_FLUSH_SECONDS = 2.0
# The sweep manifest's file name (grokinterp.report.sweep.MANIFEST_NAME; training may not import
# report): a run folder beside it is one run of that sweep.
SWEEP_MANIFEST = "sweep.json"
_SEED_DIR = re.compile(r"seed\d+")


class Tracker(Protocol):
    """One tracker run: ``log`` named scalars at a step, then ``close`` once."""

    name: str

    def log(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def _require(module: str, tracker: str) -> Any:
    """Import ``module`` for ``tracker``, or say which extra to install (one line)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise GrokinterpError(
            f"train.log names {tracker!r}, which needs the {tracker} package "
            f"({module} failed to import: {str(e).splitlines()[0] if str(e) else 'missing'}); "
            f"install it with {INSTALL_HINT}"
        ) from None


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (every key but ``step``), as floats; other values (text,
    lists, booleans) are not scalars and are left out."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def tracker_tag(key: str) -> str:
    """A key as a tag both trackers accept unchanged: letters, digits, ``_``, ``-`` and ``/``
    (W&B reads ``.`` as nesting; ``pre:blocks.0.mlp.act`` becomes ``pre_blocks_0_mlp_act``)."""
    return re.sub(r"[^A-Za-z0-9_/\-]", "_", key)


# ----------------------------------------------------------------------------- TensorBoard


def _wait_past_newest_events(path: Path) -> None:
    """Wait (at most a second) until the clock's second is past the newest event file's.

    TensorBoard reads a folder's event files in name order, and a name is
    ``events.out.tfevents.<second>.<host>.<pid>.<counter>``: a session opened within the same
    second as the last one can sort before it (``...1796.host.7.10`` < ``...1796.host.7.9``),
    and its purge (or its curves) would then be undone by the older file read after it."""
    seconds = []
    for f in path.glob("events.out.tfevents.*"):
        part = f.name.split(".")[3]
        if part.isdigit():
            seconds.append(int(part))
    now = time.time()
    if seconds and max(seconds) <= now < max(seconds) + 1:  # (a skewed clock: never wait)
        time.sleep(max(seconds) + 1 - now)


class TensorBoardTracker:
    """``torch.utils.tensorboard.SummaryWriter`` on ``<run>/logs/tensorboard``.

    Scalars are TensorBoard's plain float32 scalars, which every reader plots (its default Rust
    data server ignores float64 tensor summaries). ``purge_step``: TensorBoard hides every event
    of an earlier session at or after it (a resume passes its checkpoint step + 1; a fresh run
    0, which marks the first session start, so that the Python readers, which skip the first
    start, also purge on the next; None adds events without a new session, for the analysis
    curves pushed after training)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, purge_step: int | None) -> None:
        module = _require("torch.utils.tensorboard", "tensorboard")
        self.path = Path(run_dir) / LOGS_DIR / "tensorboard"
        _wait_past_newest_events(self.path)
        self.writer = module.SummaryWriter(
            str(self.path), purge_step=purge_step, flush_secs=int(TB_FLUSH_SECONDS)
        )
        self._flushed = time.monotonic()

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if time.monotonic() - self._flushed > TB_FLUSH_SECONDS:
            self.writer.flush()
            self._flushed = time.monotonic()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------- W&B


def _wandb_meta(run_dir: Path, config: RunConfig) -> dict[str, Any]:
    """The W&B identity of ``run_dir``: read from ``logs/wandb.json`` (so a resume, or analysis
    curves pushed later, continue the same W&B run), else made now and stored."""
    path = run_dir / LOGS_DIR / WANDB_META
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
            if isinstance(meta, dict) and isinstance(meta.get("id"), str):
                return meta
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: start a new W&B run rather than fail the training
    group, job_type = None, None
    parent = run_dir.absolute().parent
    if (parent / SWEEP_MANIFEST).is_file():  # a run of a sweep: group = the sweep
        group, job_type = parent.name, run_dir.name.split("__seed=")[0].split("__train.seed=")[0]
    elif _SEED_DIR.fullmatch(run_dir.name) and not (parent / "run.json").is_file():
        group = parent.name  # one seed of `grokinterp train --seeds`
    meta = {
        "id": secrets.token_hex(4),
        "project": os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        "entity": os.environ.get("WANDB_ENTITY") or None,
        "name": config.name,
        "group": group,
        "job_type": job_type,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(meta, indent=1))
    return meta


class WandbTracker:
    """A W&B run for ``run_dir`` (its files in ``<run>/logs/wandb``), resumed by id.

    Each row is logged as ``{"step": step, **values}`` with every key's x-axis defined as
    ``step``: W&B's own ``_step`` only counts calls, so rows logged out of order (analysis
    curves after training, the steps a resume repeats) are kept instead of dropped."""

    name = "wandb"

    def __init__(self, run_dir: Path, config: RunConfig, progress: bool = True) -> None:
        wandb = _require("wandb", "wandb")
        run_dir = Path(run_dir)
        meta = _wandb_meta(run_dir, config)
        settings = wandb.Settings(
            console="off",  # the terminal stays ours (tqdm, rich); metrics are logged explicitly
            disable_git=True,
            save_code=False,
            silent=not progress,
        )
        try:
            self.run = wandb.init(
                project=meta.get("project") or DEFAULT_PROJECT,
                entity=meta.get("entity"),
                id=meta["id"],
                name=meta.get("name"),
                group=meta.get("group"),
                job_type=meta.get("job_type"),
                dir=str(run_dir / LOGS_DIR),
                config=config.to_dict(),
                resume="allow",
                reinit="create_new",  # the seeds of one group are concurrent runs
                settings=settings,
            )
        except Exception as e:  # noqa: BLE001 — auth, network, bad settings: one line
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise GrokinterpError(
                f"W&B could not start a run for {run_dir} ({why}); run `wandb login`, or set "
                "WANDB_MODE=offline and upload later with `wandb sync`"
            ) from None
        self.run.define_metric("step")
        self._defined: set[str] = set()

    def log(self, values: Mapping[str, float], step: int) -> None:
        new = [k for k in values if k not in self._defined]
        for key in new:
            self.run.define_metric(key, step_metric="step")
        self._defined.update(new)
        self.run.log({"step": step, **values})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def has_tracker_run(run_dir: str | Path, name: str) -> bool:
    """Whether ``run_dir`` already holds a ``name`` tracker run (TensorBoard events, or the id
    of a W&B run in ``logs/wandb.json``)."""
    logs = Path(run_dir) / LOGS_DIR
    if name == "tensorboard":
        return any((logs / "tensorboard").glob("events.out.tfevents.*"))
    return (logs / WANDB_META).is_file()


# ----------------------------------------------------------------------------- one run's set


class RunTrackers:
    """The trackers of one run folder (none: every call is a no-op)."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one metrics row (its ``step`` and :func:`scalars`)."""
        if self.trackers:
            self.log_values(scalars(row), int(row["step"]))

    def log_values(self, values: Mapping[str, float], step: int) -> None:
        values = {tracker_tag(k): v for k, v in values.items()}
        for t in self.trackers:
            t.log(values, step)

    def close(self, failed: bool = False) -> None:
        """Close every tracker (each once; the first error is raised after all are closed)."""
        trackers, self.trackers = self.trackers, []
        error = None
        for t in trackers:
            try:
                t.close(failed)
            except Exception as e:  # noqa: BLE001 — close the others first
                error = error or e
        if error is not None and not failed:
            raise error


def open_run_trackers(
    names: Sequence[str],
    run_dir: str | Path,
    config: RunConfig,
    *,
    purge_step: int | None,
    progress: bool = True,
) -> RunTrackers:
    """Open the trackers ``names`` for the run in ``run_dir`` (see :class:`TensorBoardTracker`
    for ``purge_step``). If one fails, those already open are closed and a ``logs`` folder this
    call created is removed, so a fresh run folder stays vacant; the error is a GrokinterpError."""
    run_dir = Path(run_dir)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise GrokinterpError(
            f"unknown tracker {', '.join(map(repr, unknown))}; allowed: {', '.join(TRACKERS)}"
        )
    logs = run_dir / LOGS_DIR
    created = not logs.exists()
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run_dir, purge_step))
            else:
                opened.append(WandbTracker(run_dir, config, progress))
    except BaseException:
        RunTrackers(opened).close(failed=True)
        if created:
            shutil.rmtree(logs, ignore_errors=True)
        raise
    return RunTrackers(opened)


def open_trackers(
    configs: Sequence[RunConfig],
    dirs: Sequence[Path],
    resume_step: int | None,
    progress: bool = True,
) -> list[RunTrackers]:
    """The trackers of each run a training writes (``configs[i].train.log`` into ``dirs[i]``):
    a fresh training (``resume_step`` None) starts a TensorBoard session at step 0; a resume from
    the checkpoint at ``resume_step`` purges what the earlier session logged after it."""
    purge = 0 if resume_step is None else resume_step + 1
    out: list[RunTrackers] = []
    try:
        for config, d in zip(configs, dirs, strict=True):
            names = list(config.train.log)
            out.append(
                open_run_trackers(names, d, config, purge_step=purge, progress=progress)
                if names
                else RunTrackers()
            )
    except BaseException:
        for t in out:
            t.close(failed=True)
        raise
    return out
