"""Fixed inputs for analyses: seeded samples of a task's splits and random points of its domain.

Every analysis fixes its inputs once, in its factory, so that all checkpoints are measured on the
same points.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.config import GrokinterpError

__all__ = ["domain_points", "model_inputs", "sample_split"]


def sample_split(
    task: Any, split: str, n_samples: int | None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a seeded random subset of ``n_samples`` points of ``split``.

    ``split`` is ``"train"``, ``"test"`` or ``"both"`` (train then test); ``n_samples=None`` keeps
    all points.
    """
    if split not in ("train", "test", "both"):
        raise GrokinterpError(f"split must be 'train', 'test' or 'both', got {split!r}")
    if split == "both":
        x = torch.cat([task.x_train, task.x_test])
        y = torch.cat([task.y_train, task.y_test])
    else:
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    if n_samples is not None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise GrokinterpError(f"n_samples must be an integer ≥ 1 or None, got {n_samples!r}")
        if n_samples < len(y):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_samples]
            idx = idx.sort().values
            x, y = x[idx], y[idx]
    return x, y


def domain_points(task: Any, n: int, seed: int = 0) -> Tensor:
    """``n`` random points of the input domain (Humayun et al. 2024's "random" samples).

    Vector tasks: uniform in the per-feature box ``[min, max]`` of the training inputs (a feature
    constant on the training set, e.g. a blank border pixel, stays constant). Token tasks: each
    position drawn uniformly from the tokens seen at that position in the training set — for a
    complete modular grid these are valid inputs, half train-like and half test-like.
    """
    g = torch.Generator().manual_seed(seed)
    x = task.x_train
    if x.is_floating_point():
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        return lo + (hi - lo) * torch.rand((n, *x.shape[1:]), generator=g, dtype=x.dtype)
    cols = []
    for j in range(x.shape[1]):
        vals = torch.unique(x[:, j])
        cols.append(vals[torch.randint(len(vals), (n,), generator=g)])
    return torch.stack(cols, dim=1)


def model_inputs(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's device (and, if floating point, in its dtype)."""
    if x.is_floating_point():
        p = next(model.parameters())
        return x.to(dtype=p.dtype, device=p.device)
    return x.to(next(model.parameters()).device)
