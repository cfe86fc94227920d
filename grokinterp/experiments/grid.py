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


# ----------------------------------------------------------------------------- grid files


@dataclass(frozen=True)
class GridFile:
    """A sweep written down: ``grokinterp sweep --grid-file NAME_OR_PATH``.

    A TOML file with ``preset`` (the base, or ``config``: a RunConfig file relative to the grid
    file), optional ``seeds`` (``"0-2"`` or a list), optional ``set`` (overrides of the base,
    ``["train.steps=2000"]``), optional ``notes``, and a ``[grid]`` table of ``"section.key" =
    [values]`` (one axis each, in file order)::

        preset = "demo"
        seeds = "0-2"
        [grid]
        "model.d_mlp" = [8, 16, 32, 64]

    Shipped files live in ``grokinterp/presets/sweeps/`` and are named without ``.toml``.
    """

    path: str
    preset: str | None
    config: str | None
    grid: tuple[str, ...]
    seeds: str | None
    overrides: tuple[str, ...]
    notes: str = ""


_GRID_FILE_KEYS = {"preset", "config", "seeds", "set", "notes", "grid"}


def _sweeps_dir():
    from grokinterp.config import PRESET_DIR

    return PRESET_DIR / "sweeps"


def grid_file_names() -> list[str]:
    """Names of the shipped grid files (``grokinterp/presets/sweeps/*.toml``)."""
    return sorted(p.stem for p in _sweeps_dir().glob("*.toml"))


def _value_text(value: Any) -> str:
    """A grid value as ``--grid`` text, read back by :func:`parse_grid` as the same value."""
    if isinstance(value, str) and not re.search(r"[,\[\]{}\"'=]", value):
        return value
    return json.dumps(value)


def load_grid_file(name_or_path: str | Any) -> GridFile:
    """Read a grid file (a shipped name such as ``width-demo``, or a path); every problem is
    one :class:`GrokinterpError` naming the file."""
    import tomllib
    from pathlib import Path

    text = str(name_or_path)
    path = Path(text)
    if not path.is_file():
        shipped = _sweeps_dir() / f"{text}.toml"
        if not shipped.is_file():
            raise GrokinterpError(
                f"grid file {text!r} not found; shipped: {', '.join(grid_file_names()) or 'none'}"
            )
        path = shipped
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise GrokinterpError(f"cannot read grid file {path}: {' '.join(str(e).split())}") from None
    unknown = set(data) - _GRID_FILE_KEYS
    if unknown:
        raise GrokinterpError(
            f"grid file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(_GRID_FILE_KEYS))}"
        )
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise GrokinterpError(f'grid file {path}: needs a [grid] table of "section.key" = [values]')
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GrokinterpError(f"grid file {path}: grid.{key} must be a non-empty list")
        axes.append(f"{key}=" + ",".join(_value_text(v) for v in values))
    for axis in axes:
        parse_grid(axis)  # a bad key or value fails here, naming the file
    preset, config = data.get("preset"), data.get("config")
    if (preset is None) == (config is None):
        raise GrokinterpError(f"grid file {path}: give exactly one of preset or config")
    if not isinstance(preset or config, str):
        raise GrokinterpError(f"grid file {path}: preset/config must be a string")
    if config is not None and not Path(config).is_absolute():
        config = str(path.parent / config)
    seeds = data.get("seeds")
    if seeds is not None:
        if isinstance(seeds, list):
            seeds = ",".join(str(s) for s in seeds)
        if not isinstance(seeds, str):
            raise GrokinterpError(f"grid file {path}: seeds must be a string such as 0-2 or a list")
        parse_seeds(seeds)
    overrides = data.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise GrokinterpError(f'grid file {path}: set must be a list of "section.key=value"')
    notes = data.get("notes", "")
    return GridFile(str(path), preset, config, tuple(axes), seeds, tuple(overrides), str(notes))
