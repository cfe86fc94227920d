"""Run configuration: dataclasses, presets, TOML/JSON I/O and validation.

A run is fully described by a :class:`RunConfig` (task + model + training). Presets are TOML
files in ``grokinterp/presets/``, one per reproduced paper setting (DESIGN §6).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"


class GrokinterpError(ValueError):
    """A user-facing error: bad configuration, bad input file, unknown name.

    The CLI prints its message on one line (no traceback) and exits with code 2.
    """


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise GrokinterpError(msg)


def _one_of(value: Any, allowed: tuple, name: str) -> None:
    _check(
        value in allowed, f"{name}={value!r} is not valid; allowed: {', '.join(map(str, allowed))}"
    )


@dataclass
class TaskConfig:
    """Which task to build: ``make_task(name, **params)``."""

    name: str = "mod_add"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Architecture. Fields not used by the chosen ``name`` are ignored.

    ``transformer`` defaults are those of Nanda et al. 2023 (1 layer, d_model 128, 4 heads of 32,
    d_mlp 512, ReLU, no LayerNorm).
    """

    name: str = "transformer"  # transformer | embed_mlp | mlp
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act_fn: str = "relu"  # relu | gelu | tanh | leaky_relu
    normalization: str = "none"  # none | LN
    # embed_mlp: token embedding width; "sum" adds E[a]+E[b] (Minegishi et al.), "concat"
    # concatenates them (GrokTransfer FNN); mlp_out adds the out-projection back to d_embed.
    d_embed: int = 128
    combine: str = "sum"
    mlp_out: bool = False
    bias: bool = True
    embedding: str = "full"  # full | factorized (E = A·B, GrokTransfer)
    embed_rank: int = 4
    init_scale: float = 1.0  # Omnigrok's α: multiplies every initial parameter
    output_scale: float = 1.0  # multiplies the logits (lazy vs rich, Kumar et al. 2024)


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    steps: int = 10_000
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    momentum: float = 0.0
    warmup_steps: int = 10
    batch_size: int | None = None  # None = full batch
    loss: str = "cross_entropy"  # cross_entropy | mse | hinge
    dtype: str = "float32"  # float32 | float64
    eval_every: int = 10
    checkpoint_every: int = 100
    checkpoint_log_steps: int = 20  # log-spaced checkpoints before checkpoint_every
    checkpoint_dtype: str = "float32"  # float32 | float16 (halves the size on disk)
    seed: int = 0
    early_stop_acc: float | None = None  # stop once test acc ≥ this ...
    early_stop_patience: int = 10  # ... for this many consecutive evaluations
    # Grokfast (Lee et al. 2024): {"kind": "ema", "alpha": 0.98, "lamb": 2.0} or
    # {"kind": "ma", "window": 100, "lamb": 5.0, "reduction": "mean", "warmup": true}
    grokfast: dict[str, Any] = field(default_factory=dict)
    norm_constraint: bool = False  # Omnigrok: keep the global L2 norm at its initial value
    init_state: str | None = None  # safetensors file overriding (some of) the initial weights
    mask: str | None = None  # safetensors of bool masks (True = kept), held fixed
    merge_embedding_at: int | None = None  # GrokTransfer: fold A·B into a full W_E at this step
    device: str = "cpu"  # cpu | cuda | auto
    # Training engine (grokinterp.training.engines): "fast" = functional forward on token tables,
    # fused AdamW, CUDA graph, async checkpoints (same function, float rounding aside); "auto"
    # = fast on CUDA, eager on CPU. tf32: TF32 matmuls on CUDA (faster, ~1e-3 rel. error).
    # compile: torch.compile the fast engine's training loss on CUDA (fuses the elementwise
    # work; costs a compilation at start, so it pays only for long or many-seed runs).
    engine: str = "auto"  # auto | eager | fast
    tf32: bool = False
    compile: bool = False
    # torch threads while training (0 = PyTorch's default, one per core). Results are the same
    # on every thread count; 1 is the default because the small models here gain little from
    # more, and 2 threads on a busy 2-core machine were 16x slower (benchmarks/bench_threads.py).
    threads: int = 1


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"
    notes: str = ""
    parent: str | None = None  # the run this one was derived from (tickets, transfer)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["train"].get("betas"), tuple):
            d["train"]["betas"] = list(d["train"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build and :func:`validate` a config; any bad shape or value is a GrokinterpError."""
        _check(
            isinstance(d, dict), f"a run config must be a table (mapping), not {type(d).__name__}"
        )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(d) - set(names)
        _check(
            not unknown,
            f"unknown config section(s): {', '.join(sorted(map(_key, unknown)))}; "
            f"valid: {', '.join(names)}",
        )
        cfg = cls(
            task=_section(TaskConfig, d.get("task", {}), "task"),
            model=_section(ModelConfig, d.get("model", {}), "model"),
            train=_section(TrainConfig, d.get("train", {}), "train"),
            name=d.get("name", "run"),
            notes=d.get("notes", ""),
            parent=d.get("parent"),
        )
        validate(cfg)
        return cfg

    def copy(self) -> RunConfig:
        return copy.deepcopy(self)


def _section(kind: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise GrokinterpError(f"config section [{where}] must be a table, not {_show(d)}")
    names = {f.name for f in dataclasses.fields(kind)}
    if kind is TaskConfig:
        # Task parameters may be written flat ([task] p = 59) or under params.
        params = d.get("params", {})
        if not isinstance(params, dict):
            raise GrokinterpError(f"task.params must be a table, not {_show(params)}")
        params = dict(params)
        params.update({k: v for k, v in d.items() if k not in names})
        return TaskConfig(name=d.get("name", "mod_add"), params=params)
    unknown = set(d) - names
    _check(
        not unknown,
        f"unknown key(s) in [{where}]: {', '.join(sorted(map(_key, unknown)))}; "
        f"valid keys: {', '.join(sorted(names))}",
    )
    return kind(**d)


# ----------------------------------------------------------------------------- validation
#
# One generic checker: every field's type comes from its dataclass annotation, its range or
# choices from the tables below (_RULES); nothing is checked field by field in code. Task
# parameters are a free dict per task: the small dataclasses _ModularParams & co. declare them
# (types and defaults as in the make_* functions of grokinterp.tasks, which this bottom layer may
# not import; tests/test_config_validation.py keeps the two in step), Grokfast's dict likewise.

# Caps against configs that would exhaust memory or disk; all are checked before anything runs.
MAX_STEPS = 1_000_000_000
MAX_DIM = 1 << 20  # any one width (d_model, d_mlp, d_head, ...) or the number of heads
MAX_LAYERS = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds end here
# inputs of a synthetic task, (n_train + n_test) × dimension: 4 GB in float32
MAX_DATA_VALUES = 1_000_000_000
# Parameters × (weights, gradients, two optimizer moments, the Grokfast filter's copies) × the
# training dtype's size: 16 GB is a model of ~1e9 parameters under AdamW in float32, some 1000×
# the largest grokking model of the presets; more would exhaust a workstation's (or a GPU's) memory.
MAX_STATE_BYTES = 16 * 10**9
MAX_CHECKPOINTS = 100_000  # files in steps/: beyond this a run folder is unusable to list or load
MAX_CHECKPOINT_BYTES = 50 * 10**9  # steps/ on disk: checkpoints × parameters × bytes per value
MAX_METRIC_ROWS = 10_000_000  # lines of metrics.jsonl (~200 bytes each: ~2 GB)
MAX_NESTING = 32  # levels of lists/tables in one --set value


@dataclass(frozen=True)
class Rule:
    """What one field allows beyond its annotated type.

    Numbers: the interval from ``lo`` to ``hi`` (None = unbounded; ``open_lo``/``open_hi``
    exclude the bound). Strings: one of ``choices``, or else free text of at most ``max_len``
    characters, non-empty unless ``empty``, without control characters unless not ``one_line``
    (never NUL, never unencodable). In lists and tuples the rule applies to every element.
    """

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[str, ...] = ()
    max_len: int = 4096
    empty: bool = False
    one_line: bool = True

    def ok(self, v: Any) -> bool:
        if isinstance(v, str):
            if self.choices:
                return v in self.choices
            if len(v) > self.max_len or (not v and not self.empty) or "\0" in v:
                return False
            if self.one_line and not v.isprintable():
                return False
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates (undecodable bytes on the command line)
                return False
            return True
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)

    def describe(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.open_lo else '['}{lo}, {hi}{')' if self.open_hi else ']'}"
        if self.lo is not None:
            return f"{'>' if self.open_lo else '≥'} {lo}"
        if self.hi is not None:
            return f"{'<' if self.open_hi else '≤'} {hi}"
        return ""


def _num(x: float | None) -> str:
    if isinstance(x, int) and abs(x) >= 100_000:
        return f"{x:_}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _show(value: Any, limit: int = 80) -> str:
    """A one-line, bounded ``repr`` (safe for huge ints and deeply nested lists)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(k: Any) -> str:
    return k if isinstance(k, str) and k.isprintable() and k else _show(k)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_BAD = object()
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _optional(tp: Any) -> Any | None:
    """The X of ``X | None``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and len(typing.get_args(tp)) == 2:
            return inner[0]
    return None


def _allowed(tp: Any, rule: Rule | None) -> str:
    inner = _optional(tp)
    if inner is not None:
        return f"{_allowed(inner, rule)}, or none"
    if tp is str and rule is not None and rule.choices:
        return rule.describe()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        what = f"a list of {len(args)} {_PLURAL[args[0]]}"
    elif origin is list:
        what = f"a list of {_PLURAL[args[0]]}"
    elif origin is dict:
        what = "a table"
    elif tp is str and rule is not None:
        what = f"{'a' if rule.empty else 'a non-empty'} string of at most {rule.max_len} characters"
        return what + ("" if not rule.one_line else " on one line")
    else:
        what = _SINGULAR[tp]
    text = rule.describe() if rule is not None and tp is not bool else ""
    return f"{what} {text}".strip()


def _fit(value: Any, tp: Any, rule: Rule | None) -> Any:
    """``value`` checked against annotation ``tp`` and ``rule``, normalized (ints in float
    fields become floats, lists in tuple fields tuples); ``_BAD`` if it does not fit."""
    inner = _optional(tp)
    if inner is not None:
        return None if value is None else _fit(value, inner, rule)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            return _BAD
        out = []
        for v in value:
            v = _fit(v, args[0], rule)
            if v is _BAD:
                return _BAD
            out.append(v)
        return tuple(out) if origin is tuple else out
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) and Rule().ok(k) for k in value)
        return dict(value) if ok else _BAD
    if tp is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):  # True is an int to Python, never a number here
        return _BAD
    if tp is int:
        if not isinstance(value, numbers.Integral):
            return _BAD
        value = int(value)
    elif tp is float:
        if not isinstance(value, numbers.Real):
            return _BAD
        try:
            value = float(value)
        except (OverflowError, ValueError, TypeError):
            return _BAD
        if not math.isfinite(value):
            return _BAD
    elif tp is str:
        if not isinstance(value, str):
            return _BAD
    else:  # pragma: no cover - a field annotated with a type this checker does not know
        raise TypeError(f"config: no checker for the annotation {tp!r}")
    if rule is not None and not rule.ok(value):
        return _BAD
    return value


def _conform(where: str, value: Any, tp: Any, rule: Rule | None) -> Any:
    out = _fit(value, tp, rule)
    if out is _BAD:  # (messages are built only on failure: this runs for every field)
        raise GrokinterpError(f"{where}={_show(value)} is not valid; allowed: {_allowed(tp, rule)}")
    return out


def _check_fields(obj: Any, cls: type, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Check (and normalize in place) every field of the dataclass instance ``obj``."""
    hints, rules = _hints(cls), _RULES[cls]
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            value = getattr(obj, f.name)
            setattr(obj, f.name, _conform(prefix + f.name, value, hints[f.name], rules.get(f.name)))


def _check_mapping(values: dict[str, Any], cls: type, prefix: str, what: str) -> dict[str, Any]:
    """Check a free dict (task parameters, Grokfast) against the fields of ``cls``."""
    hints, rules = _hints(cls), _RULES[cls]
    out = {}
    for k, v in values.items():
        if k not in hints:
            raise GrokinterpError(
                f"{prefix}{_key(k)}={_show(v)} is not valid: {what} has no parameter {_key(k)}; "
                f"valid: {', '.join(hints)}"
            )
        out[k] = _conform(prefix + k, v, hints[k], rules.get(k))
    return out


# ---- task parameters (the make_* signatures in grokinterp.tasks)


@dataclass
class _ModularParams:
    p: int = 97
    train_fraction: float = 0.3
    seed: int = 0
    split: str = "seeded"
    train_indices: list[int] | None = None


@dataclass
class _ParityParams:
    n: int = 40
    k: int = 3
    n_train: int = 1000
    n_test: int = 1000
    seed: int = 0


@dataclass
class _XorClusterParams:
    dimension: int = 1000
    eps: float = 0.05
    n_train: int = 400
    n_test: int = 1000
    seed: int = 0


@dataclass
class _DigitsParams:
    n_train: int = 1000
    seed: int = 0


@dataclass
class _MnistParams:
    path: str | None = None
    n_train: int = 1000
    n_test: int = 10_000
    seed: int = 0


MODULAR_TASKS = (
    "mod_add",
    "mod_sub",
    "mod_mul",
    "mod_div",
    "mod_x2_y2",
    "mod_x2_xy_y2",
    "mod_x2_xy_y2_x",
    "mod_x3_xy",
    "mod_x3_xy2_y",
    "mod_odd_div_else_sub",
)
_PRIME_MODULUS = ("mod_div", "mod_odd_div_else_sub")  # divide by y: needs inverses mod p
_NONZERO_Y = ("mod_div",)  # pairs with y = 0 are left out
_TASK_PARAMS: dict[str, type] = {
    **dict.fromkeys(MODULAR_TASKS, _ModularParams),
    "sparse_parity": _ParityParams,
    "xor_cluster": _XorClusterParams,
    "digits": _DigitsParams,
    "mnist": _MnistParams,
}
# (input dimension, classes) of the vector tasks whose sizes are fixed
_FIXED_SHAPES = {"digits": (64, 10), "mnist": (784, 10)}
N_DIGITS = 1797  # scikit-learn's 8×8 digits

# ---- Grokfast filters (grokinterp.training.optim)


@dataclass
class _GrokfastEMA:
    kind: str = "ema"
    alpha: float = 0.98
    lamb: float = 2.0


@dataclass
class _GrokfastMA:
    kind: str = "ma"
    window: int = 100
    lamb: float = 5.0
    reduction: str = "mean"
    warmup: bool = True


_GROKFAST = {"ema": _GrokfastEMA, "ma": _GrokfastMA}

# ---- the table: field -> Rule (bool fields need none; every other field has one)

_SIZE = Rule(1, MAX_DIM)
_STEP = Rule(0, MAX_STEPS)
_EVERY = Rule(1, MAX_STEPS)
_SEED = Rule(0, MAX_SEED)
_FRACTION = Rule(0, 1, open_lo=True, open_hi=True)
_SCALE = Rule(0, 1e6, open_lo=True)
_PATH = Rule(max_len=4096)
_COUNT = Rule(1, 10**8)

_RULES: dict[type, dict[str, Rule]] = {
    RunConfig: {
        "name": Rule(max_len=255),
        "notes": Rule(max_len=100_000, empty=True, one_line=False),
        "parent": _PATH,
    },
    TaskConfig: {"name": Rule(choices=tuple(_TASK_PARAMS))},
    ModelConfig: {
        "name": Rule(choices=("transformer", "embed_mlp", "mlp")),
        "n_layers": Rule(1, MAX_LAYERS),
        "d_model": _SIZE,
        "n_heads": _SIZE,
        "d_head": _SIZE,
        "d_mlp": _SIZE,
        "act_fn": Rule(choices=("relu", "gelu", "tanh", "leaky_relu")),
        "normalization": Rule(choices=("none", "LN")),
        "d_embed": _SIZE,
        "combine": Rule(choices=("sum", "concat")),
        "embedding": Rule(choices=("full", "factorized")),
        "embed_rank": _SIZE,
        "init_scale": _SCALE,
        "output_scale": _SCALE,
    },
    TrainConfig: {
        "steps": _EVERY,
        "optimizer": Rule(choices=("adamw", "adam", "sgd")),
        "lr": Rule(0, 1000, open_lo=True),
        "weight_decay": Rule(0, 1e4),
        "betas": Rule(0, 1, open_hi=True),
        "momentum": Rule(0, 1, open_hi=True),
        "warmup_steps": _STEP,
        "batch_size": _COUNT,
        "loss": Rule(choices=("cross_entropy", "mse", "hinge")),
        "dtype": Rule(choices=("float32", "float64")),
        "eval_every": _EVERY,
        "checkpoint_every": _EVERY,
        "checkpoint_log_steps": Rule(0, 10_000),
        "checkpoint_dtype": Rule(choices=("float32", "float16")),
        "seed": _SEED,
        "early_stop_acc": Rule(0, 1, open_lo=True),
        "early_stop_patience": _EVERY,
        "init_state": _PATH,
        "mask": _PATH,
        "merge_embedding_at": _EVERY,  # the fold happens after that step's update
        "device": Rule(choices=("cpu", "cuda", "auto")),
        "engine": Rule(choices=("auto", "eager", "fast")),
        "threads": Rule(0, 1024),
    },
    _ModularParams: {
        "p": Rule(2, 2000),
        "train_fraction": _FRACTION,
        "seed": _SEED,
        "split": Rule(choices=("seeded", "python_shuffle", "indices")),
        "train_indices": Rule(0, 2000 * 2000 - 1),
    },
    _ParityParams: {
        "n": Rule(1, 10_000),
        "k": Rule(1, 10_000),
        "n_train": _COUNT,
        "n_test": _COUNT,
        "seed": _SEED,
    },
    _XorClusterParams: {
        "dimension": Rule(3, 1_000_000),
        "eps": Rule(0, 1e6, open_lo=True),
        "n_train": _COUNT,
        "n_test": _COUNT,
        "seed": _SEED,
    },
    _DigitsParams: {"n_train": Rule(1, N_DIGITS - 1), "seed": _SEED},
    _MnistParams: {"path": _PATH, "n_train": _COUNT, "n_test": _COUNT, "seed": _SEED},
    _GrokfastEMA: {
        "kind": Rule(choices=("ema",)),
        "alpha": Rule(0, 1, open_hi=True),
        "lamb": Rule(0, 1000),
    },
    _GrokfastMA: {
        "kind": Rule(choices=("ma",)),
        "window": Rule(1, 100_000),
        "lamb": Rule(0, 1000),
        "reduction": Rule(choices=("mean", "sum")),
    },
}


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _task_params(task: TaskConfig) -> dict[str, Any]:
    """Check ``task.params`` for ``task.name``; return them with the task's defaults filled in."""
    name = task.name
    if not (isinstance(name, str) and name in _TASK_PARAMS):
        raise GrokinterpError(
            f"task.name={_show(name)} is not valid: unknown task {_show(name)}; "
            f"available: {', '.join(_TASK_PARAMS)}"
        )
    kind = _TASK_PARAMS[name]
    task.params = _check_mapping(task.params, kind, "task.", f"task {name!r}")
    q = {**dataclasses.asdict(kind()), **task.params}
    if kind is _ModularParams:
        _check_modular_split(name, q)
    elif kind is _ParityParams:
        _check(
            q["k"] <= q["n"],
            f"task.k={q['k']} is not valid; allowed: an integer in [1, task.n={q['n']}]",
        )
    elif kind is _MnistParams:
        _check(
            q["path"] is not None,
            "task.path=None is not valid; allowed: the directory holding the four MNIST IDX "
            "files (grokinterp never downloads data)",
        )
    dim = {_ParityParams: "n", _XorClusterParams: "dimension"}.get(kind)
    if dim is not None:
        n_values = (q["n_train"] + q["n_test"]) * q[dim]
        _check(
            n_values <= MAX_DATA_VALUES,
            f"task.n_train={q['n_train']}, task.n_test={q['n_test']}, task.{dim}={q[dim]} make "
            f"{n_values:_} input values; allowed: at most {MAX_DATA_VALUES:_}",
        )
    return q


def _check_modular_split(name: str, q: dict[str, Any]) -> None:
    """Both splits of a modular task non-empty, as ``tasks.modular._split`` will cut them."""
    p = q["p"]
    _check(
        name not in _PRIME_MODULUS or _is_prime(p),
        f"task.p={p} is not valid; allowed: a prime in [2, 2000] ({name} divides by y, which "
        "needs inverses mod p)",
    )
    n = p * (p - 1) if name in _NONZERO_Y else p * p
    if q["split"] == "indices":
        given = q["train_indices"]
        idx = given or []
        _check(
            0 < len(idx) < n and len(set(idx)) == len(idx) and max(idx) < n,
            f"task.train_indices={_show(given)} is not valid; allowed: 1 to {n - 1} distinct "
            f"integers in [0, {n - 1}] (split='indices' with p={p}: {n} pairs, both splits "
            "non-empty)",
        )
        return
    frac = q["train_fraction"]
    n_train = round(frac * n) if q["split"] == "seeded" else int(frac * n)
    _check(
        0 < n_train < n,
        f"task.train_fraction={frac!r} with task.p={p} leaves the "
        f"{'train' if n_train <= 0 else 'test'} split empty ({n_train} of {n} pairs train); "
        f"allowed: a fraction giving 1 to {n - 1} training pairs",
    )


def _grokfast(spec: dict[str, Any]) -> dict[str, Any]:
    if not spec:
        return {}
    kind = spec.get("kind")
    _check(
        isinstance(kind, str) and kind in _GROKFAST,
        f"train.grokfast.kind={_show(kind)} is not valid; allowed: {', '.join(_GROKFAST)} "
        "(or train.grokfast = {} for no filter)",
    )
    return _check_mapping(spec, _GROKFAST[kind], "train.grokfast.", f"Grokfast {kind!r}")


def estimate_params(model: ModelConfig, task_name: str, params: dict[str, Any]) -> int:
    """An upper estimate of the model's parameter count (mirrors grokinterp.models)."""
    m, q = model, {**dataclasses.asdict(_TASK_PARAMS[task_name]()), **params}
    n_ctx = 3 if task_name in MODULAR_TASKS else 0  # [a, b, =]
    if task_name in MODULAR_TASKS:
        d_in, n_out = q["p"] + 1, q["p"]
    elif task_name in _FIXED_SHAPES:
        d_in, n_out = _FIXED_SHAPES[task_name]
    else:  # the binary tasks sparse_parity and xor_cluster
        d_in, n_out = (q["n"] if task_name == "sparse_parity" else q["dimension"]), 2
    r, b = m.embed_rank, int(m.bias)

    def embed(rows: int, cols: int) -> int:
        return rows * r + r * cols if m.embedding == "factorized" else rows * cols

    def stack(width_in: int) -> int:  # n_layers blocks of W_in (+ b_in): width_in, then d_mlp
        return width_in * m.d_mlp + (m.n_layers - 1) * m.d_mlp**2 + b * m.n_layers * m.d_mlp

    if m.name == "transformer":
        d, h, ln = m.d_model, m.n_heads * m.d_head, int(m.normalization == "LN")
        block = 4 * d * h + 2 * d * m.d_mlp + b * (m.d_mlp + d) + 4 * d * ln
        return embed(d_in, d) + n_ctx * d + m.n_layers * block + 2 * d * ln + d * n_out
    if m.name == "embed_mlp":
        width_in = m.d_embed * (2 if m.combine == "concat" else 1)
        out = (m.d_mlp + b) * m.d_embed if m.mlp_out else 0
        d_last = m.d_embed if m.mlp_out else m.d_mlp
        unembed = (d_last + (b and not m.mlp_out)) * n_out
        return embed(d_in, m.d_embed) + stack(width_in) + out + unembed
    first = embed(d_in, m.d_mlp) if m.embedding == "factorized" else d_in * m.d_mlp
    return first + stack(0) + (m.d_mlp + b) * n_out


def _check_budget(cfg: RunConfig) -> None:
    """Refuse runs whose training state, checkpoints or metrics log would not fit."""
    m, t = cfg.model, cfg.train
    n_params = estimate_params(m, cfg.task.name, cfg.task.params)
    dims = {
        "transformer": ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"),
        "embed_mlp": ("n_layers", "d_embed", "d_mlp"),
        "mlp": ("n_layers", "d_mlp"),
    }[m.name]
    shape = ", ".join(f"model.{k}={getattr(m, k)}" for k in dims)
    itemsize = 8 if t.dtype == "float64" else 4
    filt = (
        t.grokfast.get("window", 100) if t.grokfast.get("kind") == "ma" else int(bool(t.grokfast))
    )
    state = n_params * (4 + filt) * itemsize
    _check(
        state <= MAX_STATE_BYTES,
        f"{shape} give ~{n_params:_} parameters, ~{state / 1e9:.3g} GB of training state in "
        f"{t.dtype}; allowed: at most {MAX_STATE_BYTES / 1e9:g} GB (a smaller model)",
    )
    # training.schedule.checkpoint_schedule keeps {0, steps}, at most min(checkpoint_log_steps,
    # every − 1) distinct log-spaced steps below every, and the multiples of every up to steps
    n_ckpt = 2 + min(t.checkpoint_log_steps, t.checkpoint_every - 1) + t.steps // t.checkpoint_every
    _check(
        n_ckpt <= MAX_CHECKPOINTS,
        f"train.checkpoint_every={t.checkpoint_every} with train.steps={t.steps} writes up to "
        f"{n_ckpt:_} checkpoints; allowed: at most {MAX_CHECKPOINTS:_} (raise "
        "train.checkpoint_every)",
    )
    size = n_ckpt * n_params * (2 if t.checkpoint_dtype == "float16" else itemsize)
    _check(
        size <= MAX_CHECKPOINT_BYTES,
        f"train.checkpoint_every={t.checkpoint_every} with train.steps={t.steps} writes up to "
        f"{n_ckpt:_} checkpoints of ~{n_params:_} parameters, ~{size / 1e9:.3g} GB; allowed: at "
        f"most {MAX_CHECKPOINT_BYTES / 1e9:g} GB (raise train.checkpoint_every, or "
        "train.checkpoint_dtype = 'float16')",
    )
    rows = t.steps // t.eval_every + n_ckpt
    _check(
        rows <= MAX_METRIC_ROWS,
        f"train.eval_every={t.eval_every} with train.steps={t.steps} logs up to {rows:_} "
        f"evaluations; allowed: at most {MAX_METRIC_ROWS:_} (raise train.eval_every)",
    )


def validate(cfg: RunConfig) -> None:
    """Check every field's type and range, the task's parameters and the run's size.

    Raises :class:`GrokinterpError` with a one-line message naming the field, its value and what
    is allowed. Normalizes in place: ints in float fields become floats, ``betas`` a tuple.
    """
    if not isinstance(cfg, RunConfig):
        raise GrokinterpError(f"a run config must be a RunConfig, not {_show(cfg)}")
    for attr, kind in (("task", TaskConfig), ("model", ModelConfig), ("train", TrainConfig)):
        section = getattr(cfg, attr)
        if not isinstance(section, kind):
            raise GrokinterpError(
                f"{attr}={_show(section)} is not valid; allowed: a {kind.__name__}"
            )
    _check_fields(cfg, RunConfig, "", skip=("task", "model", "train"))
    task = cfg.task
    if not isinstance(task.params, dict):
        raise GrokinterpError(f"task.params={_show(task.params)} is not valid; allowed: a table")
    _task_params(task)
    _check_fields(cfg.model, ModelConfig, "model.")
    _check_fields(cfg.train, TrainConfig, "train.")
    m, t = cfg.model, cfg.train
    t.grokfast = _grokfast(t.grokfast)
    tokens = task.name in MODULAR_TASKS
    fits = ("transformer", "embed_mlp") if tokens else ("mlp",)
    _check(
        m.name in fits,
        f"model.name={m.name!r} is not valid for task {task.name!r} "
        f"({'token' if tokens else 'vector'} inputs); allowed: {', '.join(fits)}",
    )
    _check(
        t.merge_embedding_at is None or m.embedding == "factorized",
        f"train.merge_embedding_at={t.merge_embedding_at} is not valid with "
        f"model.embedding={m.embedding!r}; allowed: none (merging needs 'factorized')",
    )
    _check_budget(cfg)


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
