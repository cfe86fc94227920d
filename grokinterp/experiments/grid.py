"""Sweep grids: ``--grid key=v1,v2`` axes, ``--seeds`` specs, and their expansion into cells of
validated run configs (every cell is validated before any run starts)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grokinterp.config import GrokinterpError, RunConfig, apply_overrides, parse_value, validate

# ----------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid key=v1,v2,...``: the override key, parsed values and their text labels."""

    key: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "values": list(self.values), "labels": list(self.labels)}


def _split_values(text: str) -> list[str]:
    """Split at commas that are not inside brackets or quotes (``betas=[0.9,0.98],[0.9,0.99]``)."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_grid(spec: str | GridAxis) -> GridAxis:
    """Parse ``"train.weight_decay=0.1,0.3,1"`` into a :class:`GridAxis`."""
    if isinstance(spec, GridAxis):
        return spec
    if not isinstance(spec, str) or "=" not in spec:
        raise GrokinterpError(f"--grid {spec!r} must look like section.key=v1,v2,...")
    key, text = (s.strip() for s in spec.split("=", 1))
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
        raise GrokinterpError(
            f"--grid key {key!r} must look like section.key (task.X, model.X or train.X)"
        )
    labels = _split_values(text)
    if not text or any(not lab for lab in labels):
        raise GrokinterpError(f"--grid {spec!r} has an empty value; give v1,v2,... after '='")
    if len(set(labels)) != len(labels):
        raise GrokinterpError(f"--grid {spec!r} repeats a value")
    values = [parse_value(lab) for lab in labels]
    # TOML dates and times have no JSON form (sweep.json): such a value stays its text
    values = [v if _jsonable(v) else lab for v, lab in zip(values, labels, strict=True)]
    return GridAxis(key, tuple(values), tuple(labels))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def parse_seeds(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,1,7"`` and ``"0-2,7"`` work too; a list passes through."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        seeds = [int(s) for s in spec]
    else:
        seeds = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise GrokinterpError(f"--seeds range {part!r} is empty (write low-high)")
                seeds.extend(range(lo, hi + 1))
            elif part.isdigit():
                seeds.append(int(part))
            else:
                raise GrokinterpError(
                    f"--seeds {spec!r} must be a range or list of integers ≥ 0, e.g. 0-4 or 0,1,7"
                )
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise GrokinterpError(f"--seeds {spec!r} must name distinct integers ≥ 0")
    return seeds


@dataclass
class RunSpec:
    """One run of the sweep: its folder name, seed (None = the base config's) and config."""

    name: str
    cell: int
    seed: int | None
    overrides: list[str]
    config: RunConfig


@dataclass
class CellSpec:
    """One grid point and its runs (one per seed)."""

    index: int
    name: str
    values: dict[str, Any]
    labels: dict[str, str]
    overrides: list[str]
    runs: list[RunSpec] = field(default_factory=list)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand_grid(
    base: RunConfig, axes: Sequence[GridAxis], seeds: Sequence[int] | None = None
) -> list[CellSpec]:
    """The cells of the grid (Cartesian product, first axis slowest) with their runs' configs.

    Every config is built and validated here, so a bad key or value fails before anything runs:
    one :class:`GrokinterpError` names the failing cells (the first three) and how many fail.
    """
    axes = [parse_grid(a) for a in axes]
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise GrokinterpError(f"--grid names a key twice: {', '.join(keys)}")
    if seeds is not None and "train.seed" in keys:
        raise GrokinterpError(
            "give the seeds either with --seeds or with --grid train.seed, not both"
        )
    short = [k.split(".")[-1] for k in keys]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, keys, strict=True)]
    seed_name = "train.seed" if "seed" in names else "seed"
    cells, used = [], set()
    errors: dict[str, str] = {}  # cell name -> its first failure (its seeds fail alike)
    for index, combo in enumerate(itertools.product(*[range(len(a.values)) for a in axes])):
        values = {a.key: a.values[i] for a, i in zip(axes, combo, strict=True)}
        labels = {a.key: a.labels[i] for a, i in zip(axes, combo, strict=True)}
        overrides = [f"{k}={labels[k]}" for k in keys]
        name = "__".join(f"{n}={_safe(labels[k])}" for n, k in zip(names, keys, strict=True))
        name = name or "base"
        if name in used:  # two labels that differ only in unsafe characters
            name = f"{name}__{index}"
        used.add(name)
        cell = CellSpec(index, name, values, labels, overrides)
        for seed in seeds if seeds is not None else [None]:
            run_over = overrides + ([f"train.seed={seed}"] if seed is not None else [])
            run_name = name + (f"__{seed_name}={seed}" if seed is not None else "")
            try:
                cfg = apply_overrides(base, run_over)
                cfg.name = run_name
                validate(cfg)
            except GrokinterpError as e:
                errors.setdefault(name, f"cell {name}: {e}")
                continue
            cell.runs.append(RunSpec(run_name, index, seed, run_over, cfg))
        cells.append(cell)
    if errors:  # every cell is checked before any trains; report them all, train none
        msgs = list(errors.values())
        head = "" if len(msgs) == 1 else f"{len(msgs)} of {len(cells)} cells fail validation: "
        more = f"; and {len(msgs) - 3} more" if len(msgs) > 3 else ""
        raise GrokinterpError(head + "; ".join(msgs[:3]) + more)
    return cells
