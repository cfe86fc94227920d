"""The run store: the on-disk format of a training run (DESIGN §4).

```
<run>/run.json          full RunConfig, versions, split hash, format version, status
<run>/metrics.jsonl     one JSON object per evaluated step
<run>/steps/<step:08d>.safetensors   weights at each checkpoint (step 0 = initialisation)
<run>/state/latest.safetensors   resume tensors: weights, optimizer moments, filter buffers, RNG
<run>/state/latest.json          resume state scalars (step, hyper-parameters, counters) and
                                 the SHA-256 of latest.safetensors (written last; see store.state)
<run>/analysis/         cached analysis results
<run>/.lock             held (flock) by the one process writing the run (see store.lock)
```
Every file is written atomically (temporary file, then rename), so a crash never leaves a
half-written file under its final name; a kill mid-append of ``metrics.jsonl`` leaves a torn last
line, which readers skip with a warning. Any other damage (a corrupt ``run.json``, a bad line
inside ``metrics.jsonl``, a garbage checkpoint) is a one-line GrokinterpError naming the file.
The resume state is not a pickle, so resuming never runs code from the run folder (an old run's
``state/latest.pt`` is read with ``weights_only`` unless ``trust_pickle``; see
:mod:`grokinterp.store.state`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokinterp.config import GrokinterpError, RunConfig

if TYPE_CHECKING:
    import torch

# torch (and safetensors.torch) are imported inside the functions that move tensors: opening a
# run and reading its config and metrics (``grokinterp ls``) needs neither (issue 16).

FORMAT_VERSION = 1


class RunFolderWarning(UserWarning):
    """Something in a run folder was skipped (e.g. the torn last line of ``metrics.jsonl``)."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives under the process's umask (read twice: setting
    it is the only way to read it)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the new.

    The file gets the mode the umask gives ordinary files (safetensors creates its files 0600,
    which would hide a shared run from colleagues)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_file(
    tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, imported on the first call (it imports torch)."""
    from safetensors.torch import save_file as _save_file

    _save_file(tensors, filename, metadata=metadata)


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically save a dict of tensors as safetensors."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises a GrokinterpError naming it."""
    path = Path(path)
    if not path.is_file():
        raise GrokinterpError(f"file not found: {path}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, MemoryError) as e:
        raise GrokinterpError(f"{path} is truncated or corrupt ({_one_line(e)})") from None


def torch_load(path: str | Path, **kwargs: Any) -> Any:
    """``torch.load`` without torch's "Detected pickle protocol" UserWarning (noise on stderr
    for files written by other code; whether the file is refused or read is unchanged)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, **kwargs)


def environment_info() -> dict[str, str]:
    import torch

    from grokinterp._version import __version__

    info = {
        "grokinterp": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


class Run:
    """A training run on disk. Open with :meth:`Run.open`."""

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path = path
        self.info = info
        try:
            self.config = RunConfig.from_dict(info["config"])
        except GrokinterpError as e:
            raise GrokinterpError(f"{path / 'run.json'}: bad config: {e}") from None
        self._task = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Open the run in ``path``; a missing, corrupt or foreign ``run.json`` is a
        one-line GrokinterpError naming it."""
        path = Path(path)
        meta = path / "run.json"
        try:
            if not meta.is_file():
                raise GrokinterpError(f"{path} is not a grokinterp run (no run.json)")
            text = meta.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise GrokinterpError(f"{meta} is corrupt: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise GrokinterpError(f"cannot read {meta}: {e.strerror or e}") from None
        try:
            info = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise GrokinterpError(f"{meta} is corrupt: {_one_line(e)}") from None
        return cls(path, check_run_info(info, meta))

    @classmethod
    def create(
        cls, path: str | Path, config: RunConfig, extra: dict[str, Any] | None = None
    ) -> Run:
        path = Path(path)
        (path / "steps").mkdir(parents=True, exist_ok=True)
        info = {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "versions": environment_info(),
            "status": "running",
            **(extra or {}),
        }
        atomic_write_text(path / "run.json", json.dumps(info, indent=2))
        return cls(path, info)

    def writer_lock(self) -> RunLock:
        """This folder's one-writer lock: ``with run.writer_lock(): ...`` (see store.lock)."""
        return RunLock(self.path)

    def update_info(self, **fields: Any) -> None:
        self.info.update(fields)
        atomic_write_text(self.path / "run.json", json.dumps(self.info, indent=2))

    # ------------------------------------------------------------------ contents
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def analysis_dir(self) -> Path:
        return self.path / "analysis"

    @property
    def steps(self) -> list[int]:
        out = []
        for f in (self.path / "steps").glob("*.safetensors"):
            if f.stem.isdigit():
                out.append(int(f.stem))
        return sorted(out)

    def step_path(self, step: int) -> Path:
        return self.path / "steps" / f"{step:08d}.safetensors"

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path / "metrics.jsonl")

    def metric(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, e.g. ``run.metric("test_acc")``."""
        rows = [m for m in self.metrics if key in m]
        return [m["step"] for m in rows], [m[key] for m in rows]

    def load_state(self, step: int) -> dict[str, torch.Tensor]:
        """Weights at ``step`` (float16 checkpoints are returned as float32)."""
        path = self.step_path(step)
        if not path.is_file():
            steps = self.steps
            near = f"{steps[:3]}…{steps[-3:]}" if len(steps) > 6 else str(steps)
            raise GrokinterpError(
                f"run {self.path} has no checkpoint at step {step}; available: {near}"
            )
        import torch

        state = load_tensors(path)
        return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}

    def task(self):
        from grokinterp.tasks import make_task

        if self._task is None:
            self._task = make_task(self.config.task.name, **self.config.task.params)
        return self._task

    def model(self, step: int | None = None) -> torch.nn.Module:
        """The model with the weights of ``step`` (default: the last checkpoint), in eval mode."""
        from grokinterp.models import build_model

        step = self.steps[-1] if step is None else step
        state = self.load_state(step)
        model = build_model(self.config.model, self.task())
        if "embed.W_E" in state and getattr(model.embed, "factorized", False):
            model.embed.merge()  # GrokTransfer run checkpointed after --merge-at
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        if dtype is None:
            raise GrokinterpError(
                f"checkpoint {self.step_path(step)} holds no floating-point weights"
            )
        model.to(dtype)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            why = " ".join(str(e).split())[:400]  # load_state_dict's message, on one line
            raise GrokinterpError(
                f"checkpoint {self.step_path(step)} does not fit the run's model: {why}"
            ) from None
        return model.eval()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def delete(self) -> None:
        shutil.rmtree(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, task={self.config.task.name}, steps={len(self.steps)})"


# Optional run.json fields the package reads, with the types they must have.
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "final_step": (int,),
    "stopped_early": (bool,),
    "n_params": (int,),
    "wall_time_s": (int, float),
    "split_hash": (str,),
    "versions": (dict,),
    "imported": (dict,),
}


def check_run_info(info: Any, meta: Path) -> dict[str, Any]:
    """Check the parsed ``run.json`` ``meta`` (format version, config present, field types)."""
    if not isinstance(info, dict):
        raise GrokinterpError(
            f"{meta} is not a grokinterp run file (it holds a JSON {type(info).__name__}, "
            "not an object)"
        )
    version = info.get("format_version")
    if version is None or "config" not in info:
        raise GrokinterpError(f"{meta} is not a grokinterp run file (no format_version/config)")
    if type(version) is int and version > FORMAT_VERSION:
        raise GrokinterpError(
            f"{meta.parent} was written by a newer grokinterp (run format {version}; this "
            f"version reads {FORMAT_VERSION}); upgrade grokinterp to open it"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise GrokinterpError(
            f"{meta} has run format_version {version!r}; this grokinterp reads {FORMAT_VERSION}"
        )
    if not isinstance(info["config"], dict):
        raise GrokinterpError(
            f"{meta}: config must be an object, not {type(info['config']).__name__}"
        )
    for key, types in _INFO_TYPES.items():
        value = info.get(key)
        bad_int = int in types and bool not in types and isinstance(value, bool)
        if value is not None and (not isinstance(value, types) or bad_int):
            raise GrokinterpError(
                f"{meta}: {key} = {json.dumps(value)[:60]} is not a "
                f"{' or '.join(t.__name__ for t in types)}"
            )
    return info


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` (``[]`` when absent).

    A torn last line (no final newline, and the start of a metrics row: a crash mid-append) is
    skipped with a :class:`RunFolderWarning`; any other bad line is a GrokinterpError naming file
    and line.
    """
    path = Path(path)
    try:
        if not path.is_file():
            if path.exists():
                raise GrokinterpError(f"{path} is not a file")
            return []
        data = path.read_bytes()
    except OSError as e:
        raise GrokinterpError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, as every complete write does
    rows = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rows.append(_metrics_row(raw))
        except ValueError as e:
            raise GrokinterpError(f"{path}:{n}: bad metrics line ({e})") from None
    if torn.strip():
        try:
            rows.append(_metrics_row(torn))
        except ValueError as e:
            where = f"{path}:{len(lines) + 1}"
            # A crash mid-append leaves the prefix of a JSON object; anything else is corruption.
            if not torn.lstrip().startswith(b'{"step"'):
                raise GrokinterpError(f"{where}: bad metrics line ({e})") from None
            if where not in _warned_torn:  # once per file and line, however often it is read
                _warned_torn.add(where)
                warnings.warn(
                    f"{where}: skipped the torn last line (the run was stopped while writing it)",
                    RunFolderWarning,
                    stacklevel=2,
                )
    return rows


_warned_torn: set[str] = set()


def _metrics_row(raw: bytes) -> dict[str, Any]:
    """One parsed ``metrics.jsonl`` line; ``ValueError`` saying what is wrong with it."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not an object")
    step = row.get("step")
    if type(step) is not int or step < 0:
        raise ValueError(f"step = {json.dumps(step)[:40]} is not an integer ≥ 0")
    for key, value in row.items():
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"{key} = {json.dumps(value)[:40]} is not a number")
    return row


__all__ = [
    "FORMAT_VERSION",
    "Run",
    "RunFolderWarning",
    "atomic_write",
    "atomic_write_text",
    "check_run_info",
    "is_run_dir",
    "load_tensors",
    "read_metrics",
    "save_tensors",
    "torch_load",
]


from grokinterp.store.lock import RunLock  # noqa: E402

__all__ += [
    "RunLock",
    "has_resume_state",
    "import_run",
    "load_resume_state",
    "save_resume_state",
]


def __getattr__(name: str) -> Any:
    # Lazy: importers build on Run and pull in the models (TransformerLens, seconds to import),
    # which opening a run or taking its writer lock does not need.
    if name == "import_run":
        from grokinterp.store.importers import import_run

        return import_run
    if name in ("has_resume_state", "load_resume_state", "save_resume_state"):
        # Lazy: the resume state's module imports torch, which opening a run does not need.
        from grokinterp.store import state

        return getattr(state, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
