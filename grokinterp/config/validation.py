"""Validation of a :class:`~grokinterp.config.schema.RunConfig`: every field's type and range, task
parameters that leave both splits non-empty, and budgets that fit in memory and on disk.

One checker reads the dataclass annotations and the per-field :class:`Rule` table; every error is
a one-line :class:`~grokinterp.config.schema.GrokinterpError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from grokinterp.config.schema import (
    _FIXED_SHAPES,
    _GROKFAST,
    _NONZERO_Y,
    _PRIME_MODULUS,
    _TASK_PARAMS,
    MODULAR_TASKS,
    N_DIGITS,
    TRACKERS,
    GrokinterpError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    _check,
    _DigitsParams,
    _GrokfastEMA,
    _GrokfastMA,
    _key,
    _MnistParams,
    _ModularParams,
    _ParityParams,
    _show,
    _XorClusterParams,
)

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
    if origin is list and rule is not None and rule.choices:
        return f"a list of names from {rule.describe()}"
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
        "log": Rule(choices=TRACKERS),
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
        len(set(t.log)) == len(t.log),
        f"train.log={_show(t.log)} is not valid; allowed: each tracker at most once",
    )
    _check(
        t.merge_embedding_at is None or m.embedding == "factorized",
        f"train.merge_embedding_at={t.merge_embedding_at} is not valid with "
        f"model.embedding={m.embedding!r}; allowed: none (merging needs 'factorized')",
    )
    _check_budget(cfg)
