"""Checkpoint writing for the training loop: snapshots and one writer per training.

A checkpoint is a snapshot of a seed's weights and resume state taken *now* (packed host copies;
asynchronous device-to-host copies on CUDA), then written by :func:`write_checkpoint` through
the atomic writers of :mod:`grokinterp.store` and :mod:`grokinterp.store.state`. The
:class:`AsyncWriter` runs those writes in order, on one background thread (the fast engine: file
writes off the critical path) or inline in the caller (``background=False``: the eager engine,
which writes synchronously as a plain loop would).
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grokinterp.store import save_tensors
from grokinterp.store.state import save_resume_state

_WRITERS: weakref.WeakSet = weakref.WeakSet()


class AsyncWriter:
    """Runs write jobs in order on one background thread; :meth:`flush` waits for them and
    re-raises the first error. Pending jobs are also flushed at interpreter exit. With
    ``background=False`` every job runs at once in the caller (errors raise there).

    One thread, also for many runs at once: 2, 4 and 8 threads sharded by run were measured
    slower (they compete with the training thread for the GIL; benchmarks/RESULTS.md)."""

    def __init__(self, max_pending: int = 512, background: bool = True) -> None:
        # Bounded: if the disk falls behind, training waits rather than filling host memory.
        self.jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self.background = background
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.newest_state: dict[Path, int] = {}  # run dir -> newest step whose state is queued
        _WRITERS.add(self)

    def submit(self, job: Callable[[], None]) -> None:
        if not self.background:
            job()
            return
        if self.error is not None:
            self.flush()
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, daemon=True, name="grokinterp-io")
            self.thread.start()
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if self.error is None:
                    job()
            except BaseException as e:  # noqa: BLE001  (re-raised by flush in the caller)
                self.error = e
            finally:
                self.jobs.task_done()

    def flush(self) -> None:
        self.jobs.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


@atexit.register
def _flush_all_writers() -> None:
    for w in list(_WRITERS):
        try:
            w.jobs.join()
        except Exception:  # noqa: BLE001, S110
            pass


def to_host(tree: Any, dtype: torch.dtype | None = None) -> tuple[Any, torch.cuda.Event | None]:
    """Snapshot every tensor in ``tree`` (dicts, lists, tuples) now, for writing elsewhere.

    Tensors are packed per (dtype, device) into one new buffer (the snapshot): on CUDA then
    copied asynchronously into pinned memory (the training thread waits on nothing; the returned
    event says when the data are there), on CPU one copy. The returned tensors are views of
    those buffers (:func:`materialize` gives independent tensors). Floating tensors are cast to
    ``dtype`` first when given. (Keeping the snapshot on the GPU for the writer thread to move
    was measured slower: its small synchronous copies stall the training stream.)
    """
    groups: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}

    def collect(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            key = (t.dtype, t.is_cuda)
            group = groups.setdefault(key, [])
            group.append(t)
            return (_Slot, key, len(group) - 1)
        if isinstance(t, dict):
            return {k: collect(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(collect(v) for v in t)
        return t

    shaped = collect(tree)
    views: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}
    for key, tensors in groups.items():
        flat = torch.cat([t.reshape(-1) for t in tensors])  # a new buffer: a true snapshot
        if key[1]:
            host = torch.empty(flat.numel(), dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
        else:
            host = flat
        sizes = [t.numel() for t in tensors]
        views[key] = [v.view(t.shape) for v, t in zip(host.split(sizes), tensors, strict=True)]
    event = None
    if any(cuda for _, cuda in groups):
        event = torch.cuda.Event()
        event.record()

    def place(t: Any) -> Any:
        if isinstance(t, tuple) and len(t) == 3 and t[0] is _Slot:
            return views[t[1]][t[2]]
        if isinstance(t, dict):
            return {k: place(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(place(v) for v in t)
        return t

    return place(shaped), event


class _Slot:
    """Placeholder marking where a packed CUDA tensor goes back (see :func:`to_host`)."""


def materialize(tree: Any) -> Any:
    """``tree`` with every tensor cloned (independent storages, as the eager trainer saves)."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: materialize(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(materialize(v) for v in tree)
    return tree


def write_checkpoint(
    out: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    event: torch.cuda.Event | None,
    newest_state: dict[Path, int] | None = None,
) -> None:
    """Write ``steps/<step>.safetensors`` then the resume state ``state/latest.safetensors`` +
    ``state/latest.json`` (all atomic, :func:`grokinterp.store.state.save_resume_state`), in the
    format of the eager trainer; waits for ``event`` (the device-to-host copies) first.

    When ``newest_state`` says a later state of this run is already queued, this (already
    superseded) resume state is not written: resume reads only the newest one.
    """
    if event is not None:
        event.synchronize()
    weights = materialize(weights)
    save_tensors(out / "steps" / f"{step:08d}.safetensors", weights, metadata={"step": str(step)})
    if newest_state is None or newest_state.get(out, step) <= step:
        save_resume_state(out, materialize(state))


@dataclass
class Snapshot:
    """Host copies of a checkpoint's weights and resume state (see :func:`snapshot`)."""

    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    event: torch.cuda.Event | None


def snapshot(
    step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], dtype: torch.dtype | None
) -> Snapshot:
    """Copy ``weights`` (cast to ``dtype``) and ``state`` to host memory now (asynchronously on
    CUDA: the returned event says when the copies are done)."""
    if dtype is None:  # one packed transfer for both
        (host_w, host_s), event = to_host((weights, state))
    else:
        host_w, ev1 = to_host(weights, dtype)
        host_s, ev2 = to_host(state)
        event = ev2 if ev2 is not None else ev1
    return Snapshot(step, host_w, host_s, event)


def submit_snapshot(writer: AsyncWriter, out: Path, snap: Snapshot) -> None:
    """Write ``snap`` as ``out``'s checkpoint on the writer's background thread."""
    writer.newest_state[out] = snap.step
    newest = writer.newest_state
    writer.submit(
        lambda: write_checkpoint(out, snap.step, snap.weights, snap.state, snap.event, newest)
    )


__all__ = [
    "AsyncWriter",
    "Snapshot",
    "materialize",
    "snapshot",
    "submit_snapshot",
    "to_host",
    "write_checkpoint",
]
