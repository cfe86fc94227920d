"""The per-checkpoint cache of an analysis: ``<run>/analysis/<name>.safetensors``.

One row per checkpoint step for every output of the analysis, with the parameters, the key (what
the rows depend on beyond the parameters) and the steps in the file's metadata. A cache of
another version, or one that cannot be read, is treated as absent (recomputed, never fatal).
Written atomically (``store.save_tensors``). Used by :func:`grokinterp.analysis.registry.over_training`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grokinterp.config import GrokinterpError
from grokinterp.store import Run, load_tensors, save_tensors

__all__ = ["CACHE_VERSION", "cache_info", "cache_path", "load_cached"]

CACHE_VERSION = 2


def cache_path(run: Run, name: str) -> Path:
    return run.analysis_dir / f"{name}.safetensors"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@dataclass
class Cache:
    meta: dict[str, Any]
    steps: list[int]
    tensors: dict[str, Tensor]

    def rows(self) -> dict[int, int]:
        return {s: i for i, s in enumerate(self.steps)}


def cache_info(run: Run, name: str) -> dict[str, Any] | None:
    """The metadata of ``name``'s cache (``params``, ``key``, ``steps``, ``last_step``), parsed;
    None if there is no readable cache of this version."""
    c = read_cache(run, name, tensors=False)
    return None if c is None else {**c.meta, "steps": c.steps}


def read_cache(run: Run, name: str, tensors: bool = True) -> Cache | None:
    path = cache_path(run, name)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        if raw.get("cache_version") != str(CACHE_VERSION):
            return None
        meta = {
            "params": json.loads(raw["params"]),
            "key": json.loads(raw["key"]),
            "last_step": json.loads(raw["last_step"]),
        }
        steps = [int(s) for s in json.loads(raw["steps"])]
        data = load_tensors(path) if tensors else {}
    except Exception:  # a corrupt or foreign cache is recomputed, never fatal
        return None
    if tensors and any(v.shape[:1] != (len(steps),) for v in data.values()):
        return None
    return Cache(meta, steps, data)


def write_cache(run: Run, name: str, cache: Cache) -> None:
    meta = {
        "cache_version": str(CACHE_VERSION),
        "params": canonical_json(cache.meta["params"]),
        "key": canonical_json(cache.meta["key"]),
        "last_step": canonical_json(cache.meta["last_step"]),
        "steps": json.dumps(cache.steps),
    }
    save_tensors(cache_path(run, name), cache.tensors, metadata=meta)


def load_cached(
    run: Run, name: str, params: Mapping[str, Any] | None = None, steps: Sequence[int] | None = None
) -> dict[str, Tensor] | None:
    """The cached rows of ``name`` (None if absent, unreadable, or computed with other
    ``params``, or missing one of ``steps``). With ``steps`` the rows are those steps, in order."""
    c = read_cache(run, name)
    if c is None:
        return None
    if params is not None and canonical_json(c.meta["params"]) != canonical_json(dict(params)):
        return None
    if steps is None:
        return c.tensors
    rows = c.rows()
    if any(s not in rows for s in steps):
        return None
    idx = torch.tensor([rows[s] for s in steps], dtype=torch.long)
    return {k: v[idx] for k, v in c.tensors.items()}


def concat_rows(
    parts: list[tuple[list[int], dict[str, Tensor]]],
) -> tuple[list[int], dict[str, Tensor]]:
    """Chunks' ``(steps, rows)`` as one ``(steps, rows)``."""
    if len(parts) == 1:
        return parts[0]
    steps = [s for chunk_steps, _ in parts for s in chunk_steps]
    keys = parts[0][1].keys()
    try:
        return steps, {k: torch.cat([rows[k] for _, rows in parts]) for k in keys}
    except (RuntimeError, KeyError):
        raise GrokinterpError(
            "analysis outputs change keys or shape across checkpoints; pad them to a fixed shape"
        ) from None


def merge_rows(
    old: Cache | None, new_steps: list[int], new: dict[str, Tensor], meta: dict
) -> Cache:
    """``old``'s rows plus the ``new`` rows, sorted by step."""
    if old is None or not old.steps:
        steps, tensors = list(new_steps), dict(new)
    else:
        if set(old.tensors) != set(new):
            raise GrokinterpError("cached and new rows have different keys; recompute with --force")
        steps = old.steps + list(new_steps)
        tensors = {}
        for k, v in new.items():
            if old.tensors[k].shape[1:] != v.shape[1:]:
                raise GrokinterpError(
                    f"analysis output {k!r} changes shape across checkpoints "
                    f"({tuple(old.tensors[k].shape[1:])} vs {tuple(v.shape[1:])})"
                )
            tensors[k] = torch.cat([old.tensors[k], v.to(old.tensors[k].dtype)])
    order = sorted(range(len(steps)), key=steps.__getitem__)
    idx = torch.tensor(order, dtype=torch.long)
    return Cache(meta, [steps[i] for i in order], {k: v[idx] for k, v in tensors.items()})
