"""The Task dataclass shared by every task."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from grokinterp.config import GrokinterpError


@dataclass(frozen=True)
class Task:
    """A supervised task with a fixed split.

    ``input_kind`` is ``"tokens"`` (int64 ``x`` of shape [N, seq], ``vocab_size`` set) or
    ``"vector"`` (float ``x`` of shape [N, input_dim]). Labels are int64 class indices.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_kind: str
    params: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    input_dim: int | None = None
    p: int | None = None


def split_hash(task: Task) -> str:
    """A short hash of the exact split, stored in run.json to detect a changed dataset."""
    h = hashlib.sha256()
    for t in (task.x_train, task.y_train, task.x_test, task.y_test):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_fraction(value: float, name: str = "train_fraction") -> float:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise GrokinterpError(f"{name}={value!r} must be a number in (0, 1)")
    return float(value)


def check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    ok = ok and (hi is None or value <= hi)
    if not ok:
        rng = f"[{lo}, {hi}]" if hi is not None else f"≥ {lo}"
        raise GrokinterpError(f"{name}={value!r} must be an integer {rng}")
    return value


def seeded_split(n: int, n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded random permutation: the first ``n_train`` are train."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train:]
