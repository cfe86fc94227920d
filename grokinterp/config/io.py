"""Reading configurations: TOML/JSON files, the shipped presets (one per reproduced paper setting,
DESIGN §6) and ``--set section.key=value`` overrides."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from grokinterp.config.schema import (
    _GROKFAST,
    _TASK_PARAMS,
    GrokinterpError,
    RunConfig,
    _check,
    _show,
)
from grokinterp.config.validation import (
    MAX_NESTING,
    _hints,
    _optional,
    validate,
)

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


# ----------------------------------------------------------------------------- I/O


def load_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    _check(path.is_file(), f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise GrokinterpError(
            f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None
    except OSError as e:
        raise GrokinterpError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except RecursionError:
        raise GrokinterpError(f"cannot parse config file {path}: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 — TOML/JSON syntax, over-long integers, ...
        msg = " ".join(str(e).split())
        raise GrokinterpError(f"cannot parse config file {path}: {msg}") from None
    try:
        return RunConfig.from_dict(data)
    except GrokinterpError as e:
        raise GrokinterpError(f"config file {path}: {e}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> RunConfig:
    """The RunConfig of a shipped preset (``grokinterp/presets/<name>.toml``)."""
    path = PRESET_DIR / f"{name}.toml"
    _check(path.is_file(), f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    cfg = load_config(path)
    if cfg.name == "run":
        cfg.name = name
    return cfg


def _depth(value: Any) -> int:
    """Levels of lists/tables in ``value`` (iterative: safe for any depth)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, tuple, dict)):
            deepest = max(deepest, d + 1)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_value(text: str) -> Any:
    """Parse an override value as TOML (numbers, bools, lists, strings); bare words stay strings.

    Never raises anything but :class:`GrokinterpError` (for a value nested too deeply).
    """
    _check(isinstance(text, str), f"an override value must be text, not {_show(text)}")
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        doc = tomllib.loads(f"v = {text}")
    except Exception:  # noqa: BLE001 — not TOML (or nested past the parser's recursion limit)
        return text
    if set(doc) != {"v"}:  # "1\nx = 2": more than one value
        return text
    value = doc["v"]
    _check(
        _depth(value) <= MAX_NESTING,
        f"value {_show(text)} is nested more than {MAX_NESTING} levels deep",
    )
    return value


def _word(value: Any, text: str, tp: Any) -> Any:
    """For a string field, a value TOML reads as something else (12, true, a date; none where
    the field cannot be none) is the word itself: ``model.normalization=none``, ``name=2024``."""
    if tp is str or _optional(tp) is str:
        if value is None:
            return None if tp is not str else text
        if not isinstance(value, (str, list, dict)):
            return text
    return value


def _table(section: Any, attr: str, where: str) -> None:
    value = getattr(section, attr)
    _check(isinstance(value, dict), f"{where}={_show(value)} is not valid; allowed: a table")


def _lookup(table: dict[str, type], name: Any) -> type | None:
    return table.get(name) if isinstance(name, str) else None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (``train.steps=200``, ``task.p=59``) to a copy.

    The result is validated; any bad override is a :class:`GrokinterpError` naming it.
    """
    _check(
        isinstance(overrides, (list, tuple)),
        f"overrides must be a list of section.key=value strings, not {_show(overrides)}",
    )
    _check(isinstance(cfg, RunConfig), f"overrides apply to a RunConfig, not {_show(cfg)}")
    cfg = cfg.copy()
    for item in overrides:
        _check(
            isinstance(item, str) and "=" in item,
            f"override {_show(item)} must look like section.key=value",
        )
        key, text = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        value = parse_value(text)
        if parts[0] == "task" and len(parts) == 2 and parts[1] not in ("name", "params"):
            _table(cfg.task, "params", "task.params")
            kind = _lookup(_TASK_PARAMS, cfg.task.name)
            tp = _hints(kind).get(parts[1]) if kind else None
            cfg.task.params[parts[1]] = _word(value, text, tp)
            continue
        if parts[0] == "train" and len(parts) == 3 and parts[1] == "grokfast":
            _table(cfg.train, "grokfast", "train.grokfast")
            kind = _lookup(_GROKFAST, cfg.train.grokfast.get("kind"))
            tp = _hints(kind).get(parts[2]) if kind else None
            cfg.train.grokfast[parts[2]] = _word(value, text, tp)
            continue
        if len(parts) == 1 and parts[0] in ("name", "notes", "parent"):
            setattr(cfg, parts[0], _word(value, text, _hints(RunConfig)[parts[0]]))
            continue
        _check(
            len(parts) == 2 and parts[0] in ("task", "model", "train"),
            f"override key {_show(key)} must be task.X, model.X or train.X "
            "(or name, notes, parent)",
        )
        section = getattr(cfg, parts[0])
        hints = _hints(type(section))
        _check(
            parts[1] in hints,
            f"unknown key {_show(key)}; valid: {', '.join(sorted(hints))}",
        )
        setattr(section, parts[1], _word(value, text, hints[parts[1]]))
    validate(cfg)
    return cfg
