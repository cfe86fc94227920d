"""One writer per run folder: an exclusive ``fcntl.flock`` on ``<run>/.lock``.

Whatever writes a run folder (``train``, ``train --resume``/``--overwrite``, a sweep cell, a
multi-seed group, ``import``) holds :class:`RunLock` on it for the whole write: from preparing
the folder (an ``--overwrite`` deletes only under the lock) to the last checkpoint. A second
writer fails at once with a one-line :class:`GrokinterpError` naming the holder's pid. Readers
(``Run.open``, ``analyze``, ``report``, ``ls``) never take the lock, so they keep working on a
live run.

The lock is an OS lock on an open file: a killed writer (``kill -9``, OOM, power loss of the
process) releases it with its file descriptors, so a stale lock file never blocks anybody; the
pid written into it is only for the message. A writer removes the lock file when it is done.

Within one process the lock is re-entrant for the thread that holds it (a multi-seed group that
falls back to :func:`~grokinterp.training.train` per seed takes it again); another thread of the
same process is refused like another process.

Taking the lock also removes the temporary files (``.<name>.tmp<pid>``, see
:func:`~grokinterp.store.atomic_write`) that a killed writer left in the folder, its ``steps/``
and ``state/`` (not ``analysis/``: ``analyze`` writes there without the lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from grokinterp.config import GrokinterpError

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "clear_run_dir",
    "holds_writer_lock",
    "is_being_written",
    "is_vacant_dir",
    "live_writer_below",
    "remove_stale_tmp",
    "writer_locks",
]

LOCK_FILE = ".lock"
_TMP = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temporary name: .<name>.tmp<pid>
# Files a writer writes in the run folder itself (report.html/summary.json are the reporter's).
_WRITER_ROOT_FILES = ("run.json", "metrics.jsonl")
_WRITER_SUBDIRS = ("steps", "state")


class _Held:
    def __init__(self, fd: int, thread: int, created: bool) -> None:
        self.fd, self.thread, self.created, self.count = fd, thread, created, 1


_held: dict[Path, _Held] = {}
_held_guard = threading.Lock()


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long: use it as given
        return path.absolute()


def _os_error(path: Path, e: OSError) -> GrokinterpError:
    why = e.strerror or str(e)
    if e.errno == errno.ENAMETOOLONG:
        why = "file name too long"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST) and path.exists() and not path.is_dir():
        return GrokinterpError(f"{path} is a file, not a run folder; choose another --out")
    return GrokinterpError(f"cannot write the run folder {path}: {why}")


def _holder_pid(lock_path: Path) -> str:
    for _ in range(5):  # the holder writes its pid just after locking: give it a moment
        try:
            text = lock_path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return "?"
        if text.isdigit():
            return text
        time.sleep(0.02)
    return "?"


class RunLock:
    """Exclusive writer lock on the run folder ``path`` (created if missing).

    ``with RunLock(out): ...`` — raises :class:`GrokinterpError` at once when another process
    (or another thread of this one) holds it. A folder the lock created is removed again on
    release if nothing was written into it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._key: Path | None = None

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self._key is not None:
            raise RuntimeError(f"RunLock({self.path}) is already acquired by this object")
        key = _key(self.path)
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                if held.thread != threading.get_ident():
                    raise GrokinterpError(
                        f"{self.path} is being written by another thread of this process "
                        f"(pid {os.getpid()})"
                    )
                held.count += 1
                self._key = key
                return
            fd, created = self._lock_file()
            _held[key] = _Held(fd, threading.get_ident(), created)
            self._key = key
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            remove_stale_tmp(self.path)
        except OSError as e:
            self.release()
            raise _os_error(self.path, e) from None

    def _lock_file(self) -> tuple[int, bool]:
        """Open and flock ``<path>/.lock``: (fd, whether the folder was created)."""
        created = False
        try:
            if not self.path.is_dir():
                self.path.mkdir(parents=True)
                created = True
        except FileExistsError:  # made meanwhile by someone else, or a file
            if not self.path.is_dir():
                raise _os_error(self.path, FileExistsError(errno.EEXIST, "exists")) from None
        except OSError as e:
            raise _os_error(self.path, e) from None
        for _ in range(20):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise _os_error(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _os_error(self.path, e) from None
                raise GrokinterpError(
                    f"{self.path} is being written by another process "
                    f"(pid {_holder_pid(self.lock_path)}); wait for it to finish or stop it"
                ) from None
            # The previous holder may have removed the file between our open and our flock:
            # then we hold a lock on a file nobody else will open. Try again on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                return fd, created
            os.close(fd)
        raise GrokinterpError(f"could not lock {self.lock_path} (it keeps being replaced)")

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None:
            return
        with _held_guard:
            held = _held.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _held[key]
            try:  # remove the file while still holding it (see _lock_file's check)
                if os.path.samestat(os.fstat(held.fd), os.stat(self.lock_path)):
                    self.lock_path.unlink()
            except OSError:
                pass
            os.close(held.fd)
            if held.created:
                try:
                    self.path.rmdir()  # only if still empty: a fresh run that wrote nothing
                except OSError:
                    pass


def holds_writer_lock(path: str | Path) -> bool:
    """Whether the current thread holds :class:`RunLock` on ``path``."""
    held = _held.get(_key(Path(path)))
    return held is not None and held.thread == threading.get_ident()


@contextmanager
def writer_locks(paths: Iterable[str | Path]) -> Iterator[list[RunLock]]:
    """Hold :class:`RunLock` on several run folders at once (all or none)."""
    with ExitStack() as stack:
        yield [stack.enter_context(RunLock(p)) for p in paths]


def remove_stale_tmp(path: str | Path) -> list[Path]:
    """Remove temporary files a killed writer left in run folder ``path`` (returns them).

    Only writer-owned places: ``.run.json.tmp*``/``.metrics.jsonl.tmp*`` and any
    ``.*.tmp<pid>`` in ``steps/`` and ``state/``. Call it only while holding the lock.
    """
    path = Path(path)
    found = [
        f
        for f in path.glob(".*.tmp*")
        if _TMP.match(f.name) and f.name[1:].rsplit(".tmp", 1)[0] in _WRITER_ROOT_FILES
    ]
    for sub in _WRITER_SUBDIRS:
        if (path / sub).is_dir():
            found += [f for f in (path / sub).glob(".*.tmp*") if _TMP.match(f.name)]
    removed = []
    for f in found:
        try:
            if f.is_file() and not f.is_symlink():
                f.unlink()
                removed.append(f)
        except OSError:
            pass
    return removed


def is_vacant_dir(path: str | Path) -> bool:
    """Whether ``path`` holds nothing a run could lose: missing, empty, or only the writer lock,
    empty ``steps``/``state`` folders and stale temporary files (a writer killed before it wrote
    ``run.json``)."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.name == LOCK_FILE or (_TMP.match(entry.name) and entry.is_file()):
            continue
        if entry.name in _WRITER_SUBDIRS and entry.is_dir() and not entry.is_symlink():
            if all(_TMP.match(f.name) for f in entry.iterdir()):
                continue
        return False
    return True


def is_being_written(path: str | Path) -> bool:
    """Whether some process (this one included) holds the writer lock of run folder ``path``
    now: a run whose ``run.json`` says "running" but that nobody writes was killed."""
    path = Path(path)
    if _key(path) in _held:
        return True
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing also drops the probe's shared lock
    return False


def live_writer_below(path: str | Path) -> Path | None:
    """A run folder strictly inside ``path`` whose writer lock is held now (None if none)."""
    path = Path(path)
    for lock_path in path.rglob(LOCK_FILE):
        folder = lock_path.parent
        if folder != path and lock_path.is_file() and is_being_written(folder):
            return folder
    return None


def clear_run_dir(path: str | Path) -> None:
    """Delete everything in run folder ``path`` except its lock file (for ``--overwrite``).

    Requires the caller to hold :class:`RunLock` on ``path``: a folder under a live writer is
    never deleted.
    """
    path = Path(path)
    if not holds_writer_lock(path):
        raise RuntimeError(f"clear_run_dir({path}) without holding RunLock on it")
    live = live_writer_below(path)
    if live is not None:
        raise GrokinterpError(
            f"cannot clear {path}: {live} inside it is being written by another process "
            f"(pid {_holder_pid(live / LOCK_FILE)})"
        )
    for entry in path.iterdir():
        if entry.name == LOCK_FILE:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as e:
            raise GrokinterpError(f"cannot clear {path} for --overwrite: {entry}: {e}") from None
