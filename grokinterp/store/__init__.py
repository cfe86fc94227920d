"""The run store: the on-disk format of a training run (DESIGN §4).

```
<run>/run.json          full RunConfig, versions, split hash, format version, status
<run>/metrics.jsonl     one JSON object per evaluated step
<run>/steps/<step:08d>.safetensors   weights at each checkpoint (step 0 = initialisation)
<run>/state/latest.pt   optimizer + RNG + filter state for exact resume
<run>/analysis/         cached analysis results
```
Every file is written atomically (temporary file, then rename), so a crash never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from grokinterp.config import GrokinterpError, RunConfig

FORMAT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``: readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


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
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise GrokinterpError(f"{path} is truncated or corrupt ({e})") from None


def environment_info() -> dict[str, str]:
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
        self.config = RunConfig.from_dict(info["config"])
        self._task = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        meta = path / "run.json"
        if not meta.is_file():
            raise GrokinterpError(f"{path} is not a grokinterp run (no run.json)")
        try:
            info = json.loads(meta.read_text())
        except json.JSONDecodeError as e:
            raise GrokinterpError(f"{meta} is corrupt: {e}") from None
        version = info.get("format_version")
        if not isinstance(version, int) or "config" not in info:
            raise GrokinterpError(f"{meta} is not a grokinterp run file (no format_version/config)")
        if version > FORMAT_VERSION:
            raise GrokinterpError(
                f"{path} was written by a newer grokinterp (run format {version}; this version reads "
                f"≤ {FORMAT_VERSION}); upgrade grokinterp to open it"
            )
        return cls(path, info)

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
        dtype = next(iter(state.values())).dtype
        model.to(dtype)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise GrokinterpError(
                f"checkpoint {self.step_path(step)} does not fit the run's model: {e}"
            ) from None
        return model.eval()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def delete(self) -> None:
        shutil.rmtree(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, task={self.config.task.name}, steps={len(self.steps)})"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl, ignoring a truncated last line (a crash mid-append)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def first_step_reaching(run_or_metrics: Run | list[dict], key: str, threshold: float) -> int | None:
    """First evaluated step where ``key`` ≥ ``threshold`` (None if never)."""
    rows = run_or_metrics.metrics if isinstance(run_or_metrics, Run) else run_or_metrics
    for m in rows:
        if m.get(key) is not None and m[key] >= threshold:
            return m["step"]
    return None


__all__ = [
    "FORMAT_VERSION",
    "Run",
    "atomic_write",
    "atomic_write_text",
    "first_step_reaching",
    "is_run_dir",
    "load_tensors",
    "read_metrics",
    "save_tensors",
]


# Imported last: importers build on Run (import existing grokked models as ordinary runs).
from grokinterp.store.importers import import_run  # noqa: E402

__all__ += ["import_run"]
