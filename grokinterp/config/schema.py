"""The configuration schema: :class:`RunConfig` and its sections, and the project's error type.

A run is fully described by a :class:`RunConfig` (task + model + training).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


class GrokinterpError(ValueError):
    """A user-facing error: bad configuration, bad input file, unknown name.

    The CLI prints its message on one line (no traceback) and exits with code 2. ANSI escape
    codes (terminal colours that other libraries' messages carry, e.g. torch's ``weights_only``
    refusal) are stripped from the message.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(_ANSI.sub("", a) if isinstance(a, str) else a for a in args))


# CSI sequences (colours, bold: ESC [ ... m) and other two-character escapes
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


# The experiment trackers ``train.log`` may name (grokinterp.training.trackers implements them).
TRACKERS = ("tensorboard", "wandb")


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
    # Experiment trackers that also receive every metrics.jsonl row (grokinterp.training.trackers):
    # "tensorboard" writes <run>/logs/tensorboard, "wandb" <run>/logs/wandb (honours WANDB_MODE).
    # Optional packages: pip install 'grokinterp[trackers]'.
    log: list[str] = field(default_factory=list)


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
        from grokinterp.config.validation import validate  # validation builds on this schema

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
