"""Run configuration: dataclasses, presets, TOML/JSON I/O and validation.

A run is fully described by a :class:`RunConfig` (task + model + training). Presets are TOML
files in ``grokinterp/presets/``, one per reproduced paper setting (DESIGN §6).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
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
    # Training engine (grokinterp.training.fast): "fast" = functional forward on token tables,
    # fused AdamW, CUDA graph, async checkpoints (same function, float rounding aside); "auto"
    # = fast on CUDA, eager on CPU. tf32: TF32 matmuls on CUDA (faster, ~1e-3 rel. error).
    # compile: torch.compile the fast engine's training loss on CUDA (fuses the elementwise
    # work; costs a compilation at start, so it pays only for long or many-seed runs).
    engine: str = "auto"  # auto | eager | fast
    tf32: bool = False
    compile: bool = False


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
        d["train"]["betas"] = list(d["train"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        _check(isinstance(d, dict), "a run config must be a mapping")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        _check(not unknown, f"unknown config section(s): {', '.join(sorted(unknown))}")
        cfg = cls(
            task=_section(TaskConfig, d.get("task", {}), "task"),
            model=_section(ModelConfig, d.get("model", {}), "model"),
            train=_section(TrainConfig, d.get("train", {}), "train"),
            name=str(d.get("name", "run")),
            notes=str(d.get("notes", "")),
            parent=d.get("parent"),
        )
        cfg.train.betas = tuple(cfg.train.betas)  # type: ignore[assignment]
        validate(cfg)
        return cfg

    def copy(self) -> RunConfig:
        return copy.deepcopy(self)


def _section(kind: type, d: dict[str, Any], where: str) -> Any:
    _check(isinstance(d, dict), f"config section [{where}] must be a table")
    names = {f.name for f in dataclasses.fields(kind)}
    if kind is TaskConfig:
        # Task parameters may be written flat ([task] p = 59) or under params.
        params = dict(d.get("params", {}))
        params.update({k: v for k, v in d.items() if k not in names})
        return TaskConfig(name=d.get("name", "mod_add"), params=params)
    unknown = set(d) - names
    _check(
        not unknown,
        f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}; "
        f"valid keys: {', '.join(sorted(names))}",
    )
    return kind(**d)


def validate(cfg: RunConfig) -> None:
    """Check value ranges; raises :class:`GrokinterpError` naming the offending key."""
    m, t = cfg.model, cfg.train
    _one_of(m.name, ("transformer", "embed_mlp", "mlp"), "model.name")
    _one_of(m.act_fn, ("relu", "gelu", "tanh", "leaky_relu"), "model.act_fn")
    _one_of(m.normalization, ("none", "LN"), "model.normalization")
    _one_of(m.embedding, ("full", "factorized"), "model.embedding")
    _one_of(m.combine, ("sum", "concat"), "model.combine")
    for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_embed", "embed_rank"):
        _check(int(getattr(m, key)) >= 1, f"model.{key} must be an integer ≥ 1")
    _check(m.init_scale > 0, "model.init_scale must be > 0")
    _check(m.output_scale > 0, "model.output_scale must be > 0")
    _one_of(t.optimizer, ("adamw", "adam", "sgd"), "train.optimizer")
    _one_of(t.loss, ("cross_entropy", "mse", "hinge"), "train.loss")
    _one_of(t.dtype, ("float32", "float64"), "train.dtype")
    _one_of(t.checkpoint_dtype, ("float32", "float16"), "train.checkpoint_dtype")
    _one_of(t.device, ("cpu", "cuda", "auto"), "train.device")
    _one_of(t.engine, ("auto", "eager", "fast"), "train.engine")
    _check(t.steps >= 1, "train.steps must be ≥ 1")
    _check(t.lr > 0, "train.lr must be > 0")
    _check(t.weight_decay >= 0, "train.weight_decay must be ≥ 0")
    _check(
        len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
        "train.betas must be two numbers in [0, 1)",
    )
    _check(t.warmup_steps >= 0, "train.warmup_steps must be ≥ 0")
    _check(
        t.batch_size is None or t.batch_size >= 1,
        "train.batch_size must be ≥ 1 (or omitted for full batch)",
    )
    _check(t.eval_every >= 1, "train.eval_every must be ≥ 1")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every must be ≥ 1")
    _check(t.checkpoint_log_steps >= 0, "train.checkpoint_log_steps must be ≥ 0")
    _check(
        t.early_stop_acc is None or 0 < t.early_stop_acc <= 1,
        "train.early_stop_acc must be in (0, 1]",
    )
    _check(t.early_stop_patience >= 1, "train.early_stop_patience must be ≥ 1")
    if t.grokfast:
        _one_of(t.grokfast.get("kind"), ("ema", "ma"), "train.grokfast.kind")
    _check(
        t.merge_embedding_at is None or m.embedding == "factorized",
        "train.merge_embedding_at needs model.embedding = 'factorized'",
    )


# ----------------------------------------------------------------------------- I/O


def load_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    _check(path.is_file(), f"config file not found: {path}")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise GrokinterpError(f"cannot parse config file {path}: {e}") from None
    return RunConfig.from_dict(data)


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


def parse_value(text: str) -> Any:
    """Parse an override value as TOML (numbers, bools, lists, strings); bare words stay strings."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (``train.steps=200``, ``task.p=59``) to a copy."""
    cfg = cfg.copy()
    for item in overrides:
        _check("=" in item, f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        value = parse_value(text.strip())
        if parts[0] == "task" and len(parts) == 2 and parts[1] != "name":
            cfg.task.params[parts[1]] = value
            continue
        if parts[0] == "train" and len(parts) == 3 and parts[1] == "grokfast":
            cfg.train.grokfast[parts[2]] = value
            continue
        if len(parts) == 1 and parts[0] in ("name", "notes", "parent"):
            setattr(cfg, parts[0], value)
            continue
        _check(
            len(parts) == 2 and parts[0] in ("task", "model", "train"),
            f"override key {key!r} must be task.X, model.X or train.X",
        )
        section = getattr(cfg, parts[0])
        names = {f.name for f in dataclasses.fields(section)}
        _check(parts[1] in names, f"unknown key {key!r}; valid: {', '.join(sorted(names))}")
        if parts[1] == "betas":
            value = tuple(value)
        if value is None and isinstance(getattr(section, parts[1]), str):
            value = text.strip()  # "none" is a word for string options (model.normalization=none)
        setattr(section, parts[1], value)
    return RunConfig.from_dict(cfg.to_dict())
