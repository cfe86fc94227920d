"""Import grokked models trained by other code into ordinary grokinterp run directories.

``import_run(kind, path, out_dir, **params) -> Run`` (re-exported as ``grokinterp.store.import_run``):

* ``"progress-measures"``: files of the code of Nanda, Chan, Lieberum, Smith, Steinhardt (2023),
  "Progress measures for grokking via mechanistic interpretability". A torch pickle holding a dict
  with ``model`` (a state dict) and optionally ``config`` (``p``, ``fn_name``, ``frac_train``,
  ``seed``, ``lr``, ``weight_decay``, ...), ``train_losses``, ``test_losses``, ``epoch``; or a
  full-run file with ``state_dicts`` (a list) and ``epochs`` (every checkpoint is imported). Its
  weights are stored transposed relative to TransformerLens (``W_E [d_model, d_vocab]``,
  ``W_K/W_Q/W_V [heads, d_head, d_model]``, ``W_O [d_model, heads*d_head]`` head-major,
  ``W_in [d_mlp, d_model]``, ``W_out [d_model, d_mlp]``, ``W_U [d_model, d_vocab]`` whose last
  column, the ``=`` token, is not a class). Its split: the row-major pairs shuffled by
  ``random.seed(seed); random.shuffle(pairs)``, the first ``int(frac_train * p^2)`` are train.
* ``"tl-demo"``: the file saved by the TransformerLens "Grokking demo" notebook: ``model`` (a
  TransformerLens 3.x ``HookedTransformer`` state dict), ``config`` (a pickled
  ``HookedTransformerConfig``, a class transformer-lens 4 no longer has: it is read into a plain
  mapping; its ``initializer_range`` is a numpy float, read as a Python number),
  ``checkpoints`` with ``checkpoint_epochs``, ``train_losses``, ``test_losses``,
  ``train_indices``, ``test_indices``.

Steps are the source's epoch labels. Every imported checkpoint is evaluated once with the
grokinterp model (train/test loss and accuracy, weight norm) into ``metrics.jsonl``; the source's
per-epoch loss curves are kept there too, under ``train_loss``/``test_loss`` at the other epochs.

Loading a pickle can run code: files are read by :func:`grokinterp.store.safe_load.load_pickle`
(``torch.load(weights_only=True)`` plus an allow-list of inert stand-ins; anything else only with
``trust_pickle=True``, ``--trust-pickle``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grokinterp.config import GrokinterpError, ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokinterp.models import build_model, class_logits
from grokinterp.store import Run, atomic_write_text, is_run_dir, save_tensors
from grokinterp.store.lock import RunLock, clear_run_dir, is_vacant_dir
from grokinterp.store.safe_load import PickledObject, _squash, load_pickle
from grokinterp.tasks import make_task, split_hash

__all__ = ["IMPORT_KINDS", "PickledObject", "import_run", "load_pickle"]

IMPORT_KINDS = ("progress-measures", "tl-demo")

# Nanda et al.'s fns_dict names -> grokinterp task names
_PM_FUNCTIONS = {
    "add": "mod_add",
    "subtract": "mod_sub",
    "sub": "mod_sub",
    "x2xyy2": "mod_x2_xy_y2",
    "mul": "mod_mul",
    "multiply": "mod_mul",
    "div": "mod_div",
    "divide": "mod_div",
}


# ---------------------------------------------------------------------------------------------
# Reading the loaded file's contents
# ---------------------------------------------------------------------------------------------


def _as_mapping(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, PickledObject):
        return dict(obj.state)
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    raise GrokinterpError(f"config must be a mapping or an object, got {type(obj).__name__}")


def _state_dict(obj: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise GrokinterpError(f"{where} must be a state dict (a mapping of names to tensors)")
    return {str(k): v.detach().cpu() for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# Layout conversion
# ---------------------------------------------------------------------------------------------


def _layers(sd: Mapping[str, Tensor]) -> int:
    idx = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if not idx or idx != set(range(len(idx))):
        raise GrokinterpError("state dict has no blocks.{i}.* weights numbered from 0")
    return len(idx)


def _need(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise GrokinterpError(f"state dict lacks {key!r} (expected layout not found)")
    return sd[key].float()


def convert_progress_measures(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Nanda et al. (2023) layout -> grokinterp/TransformerLens layout; also the model dims."""
    unknown = [k for k in sd if k.startswith("ln") or ".ln" in k]
    if unknown:
        raise GrokinterpError(f"LayerNorm weights ({unknown[0]}) are not supported for this import")
    n_layers = _layers(sd)
    W_E = _need(sd, "embed.W_E")  # [d_model, d_vocab]
    d_model, d_vocab = W_E.shape
    out = {"embed.W_E": W_E.T.contiguous(), "pos_embed.W_pos": _need(sd, "pos_embed.W_pos")}
    dims = {"n_layers": n_layers, "d_model": d_model, "d_vocab": d_vocab}
    for i in range(n_layers):
        b = f"blocks.{i}."
        W_Q = _need(sd, b + "attn.W_Q")  # [heads, d_head, d_model]
        n_heads, d_head, _ = W_Q.shape
        for name in ("W_Q", "W_K", "W_V"):
            out[b + "attn." + name] = _need(sd, b + "attn." + name).transpose(1, 2).contiguous()
        W_O = _need(sd, b + "attn.W_O")  # [d_model, heads*d_head], head-major
        out[b + "attn.W_O"] = W_O.T.reshape(n_heads, d_head, d_model).contiguous()
        W_in = _need(sd, b + "mlp.W_in")  # [d_mlp, d_model]
        out[b + "mlp.W_in"] = W_in.T.contiguous()
        out[b + "mlp.b_in"] = _need(sd, b + "mlp.b_in")
        out[b + "mlp.W_out"] = _need(sd, b + "mlp.W_out").T.contiguous()
        out[b + "mlp.b_out"] = _need(sd, b + "mlp.b_out")
        dims.update(n_heads=n_heads, d_head=d_head, d_mlp=W_in.shape[0])
    out["unembed.W_U"] = _need(sd, "unembed.W_U")[:, :-1].contiguous()  # drop the '=' column
    return out, dims


def convert_tl(sd: Mapping[str, Tensor], n_classes: int) -> dict[str, Tensor]:
    """TransformerLens 3.x HookedTransformer state dict -> grokinterp layout.

    Attention biases are folded exactly: ``b_K`` adds a per-query constant to the scores (softmax
    ignores it); ``b_V`` passes through attention unchanged (pattern rows sum to 1), so its
    contribution ``b_V W_O`` joins ``b_O``; ``b_O`` is a constant in the residual stream, so it
    is added to the next MLP's ``b_in`` (through ``W_in``) and to its ``b_out``. ``b_Q`` and
    ``b_U`` cannot be represented and must be zero (the demo freezes all biases at zero).
    """
    n_layers = _layers(sd)
    out: dict[str, Tensor] = {}
    for key in ("embed.W_E", "pos_embed.W_pos"):
        out[key] = _need(sd, key)
    for i in range(n_layers):
        b = f"blocks.{i}."
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            out[b + "attn." + name] = _need(sd, b + "attn." + name)
        d_model = out[b + "attn.W_O"].shape[-1]
        zero = torch.zeros(())
        b_Q = sd.get(b + "attn.b_Q", zero).float()
        if b_Q.abs().max() > 0:
            raise GrokinterpError(
                f"{b}attn.b_Q is non-zero; grokinterp's transformer has no query bias"
            )
        b_V = sd.get(b + "attn.b_V", torch.zeros(1, 1)).float()
        b_O = sd.get(b + "attn.b_O", torch.zeros(d_model)).float()
        resid_bias = b_O + torch.einsum(
            "he,hed->d", b_V.expand(out[b + "attn.W_O"].shape[:2]), out[b + "attn.W_O"]
        )
        if b + "ln2.w" in sd and resid_bias.abs().max() > 0:
            raise GrokinterpError(
                f"{b}attn.b_O/b_V are non-zero before a LayerNorm: cannot be folded"
            )
        W_in = _need(sd, b + "mlp.W_in")
        out[b + "mlp.W_in"] = W_in
        out[b + "mlp.b_in"] = (
            sd.get(b + "mlp.b_in", torch.zeros(W_in.shape[1])).float() + resid_bias @ W_in
        )
        out[b + "mlp.W_out"] = _need(sd, b + "mlp.W_out")
        out[b + "mlp.b_out"] = sd.get(b + "mlp.b_out", torch.zeros(d_model)).float() + resid_bias
        for ln in ("ln1", "ln2"):
            if b + ln + ".w" in sd:
                out[b + ln + ".w"] = _need(sd, b + ln + ".w")
                out[b + ln + ".b"] = _need(sd, b + ln + ".b")
    if "ln_final.w" in sd:
        out["ln_final.w"] = _need(sd, "ln_final.w")
        out["ln_final.b"] = _need(sd, "ln_final.b")
    b_U = sd.get("unembed.b_U")
    if b_U is not None and b_U[:n_classes].abs().max() > 0:
        raise GrokinterpError("unembed.b_U is non-zero; grokinterp's transformer has no logit bias")
    out["unembed.W_U"] = _need(sd, "unembed.W_U")[:, :n_classes].contiguous()
    return out


# ---------------------------------------------------------------------------------------------
# Run writing
# ---------------------------------------------------------------------------------------------


def _evaluate(model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return math.nan, math.nan
    with torch.no_grad():
        logits = class_logits(model, x).double()
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(-1) == y).double().mean().item()


def _floats(seq: Any) -> list[float] | None:
    if seq is None:
        return None
    if isinstance(seq, Tensor):
        seq = seq.reshape(-1).tolist()
    try:
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _write_run(
    out_dir: Path,
    config: RunConfig,
    checkpoints: Iterable[tuple[int, dict[str, Tensor]]],
    curves: dict[str, list[float] | None],
    source: dict[str, Any],
    overwrite: bool,
) -> Run:
    task = make_task(config.task.name, **config.task.params)
    model = build_model(config.model, task)
    with RunLock(out_dir):  # one writer per run folder
        if not is_vacant_dir(out_dir):
            if not is_run_dir(out_dir) or not overwrite:
                raise GrokinterpError(
                    f"{out_dir} is not empty; choose a new --out directory (or overwrite=True "
                    "for a run)"
                )
            clear_run_dir(out_dir)
        return _write_run_locked(out_dir, config, task, model, checkpoints, curves, source)


def _write_run_locked(
    out_dir: Path,
    config: RunConfig,
    task: Any,
    model: torch.nn.Module,
    checkpoints: Iterable[tuple[int, dict[str, Tensor]]],
    curves: dict[str, list[float] | None],
    source: dict[str, Any],
) -> Run:
    run = Run.create(out_dir, config, {"split_hash": split_hash(task), "imported": source})
    rows: dict[int, dict[str, Any]] = {}
    last = 0
    for step, state in checkpoints:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise GrokinterpError(
                f"converted weights of step {step} do not fit the model: {_squash(e)}"
            ) from None
        model.eval()
        train_loss, train_acc = _evaluate(model, task.x_train, task.y_train)
        test_loss, test_acc = _evaluate(model, task.x_test, task.y_test)
        norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
        rows[step] = {
            "step": step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "weight_norm_l2": norm,
        }
        save_tensors(run.step_path(step), state, metadata={"step": str(step)})
        last = max(last, step)
    if not rows:
        raise GrokinterpError("the file holds no model weights to import")
    for key in ("train_loss", "test_loss"):
        for epoch, value in enumerate(curves.get(key) or []):
            if epoch not in rows:
                rows[epoch] = {"step": epoch}
            rows[epoch].setdefault(key, value)
    text = "".join(json.dumps(rows[s]) + "\n" for s in sorted(rows))
    atomic_write_text(out_dir / "metrics.jsonl", text)
    run.update_info(status="complete", final_step=last)
    return run


def _transformer_config(
    dims: Mapping[str, int], act_fn: str = "relu", normalization: str = "none"
) -> ModelConfig:
    return ModelConfig(
        name="transformer",
        n_layers=int(dims["n_layers"]),
        d_model=int(dims["d_model"]),
        n_heads=int(dims["n_heads"]),
        d_head=int(dims["d_head"]),
        d_mlp=int(dims["d_mlp"]),
        act_fn=act_fn,
        normalization=normalization,
        bias=True,
    )


def _train_config(steps: int, lr: Any = None, wd: Any = None, seed: Any = None) -> TrainConfig:
    t = TrainConfig(steps=max(int(steps), 1))
    if lr is not None:
        t.lr = float(lr)
    if wd is not None:
        t.weight_decay = float(wd)
    if seed is not None:
        t.seed = int(seed)
    return t


def _import_progress_measures(data: Any, path: Path, params: dict[str, Any]) -> tuple:
    if not isinstance(data, Mapping) or not ("model" in data or "state_dicts" in data):
        raise GrokinterpError(
            f"{path} is not a progress-measures file (no 'model' or 'state_dicts')"
        )
    cfg = _as_mapping(data.get("config"))
    states: list[tuple[int, dict[str, Tensor]]] = []
    if "state_dicts" in data:
        sds = list(data["state_dicts"])
        epochs = list(data.get("epochs") or [])
        if len(epochs) != len(sds):
            raise GrokinterpError(
                f"{path}: 'epochs' must list one epoch per entry of 'state_dicts'"
            )
        states = [
            (int(e), _state_dict(sd, f"state_dicts[{i}]"))
            for i, (e, sd) in enumerate(zip(epochs, sds, strict=True))
        ]
    if "model" in data:
        epoch = data.get("epoch")
        step = int(epoch) if epoch is not None else (states[-1][0] if states else 0)
        if not any(s == step for s, _ in states):
            states.append((step, _state_dict(data["model"], "model")))
    if not states:
        raise GrokinterpError(f"{path}: no weights to import ('state_dicts' is empty, no 'model')")
    states.sort(key=lambda t: t[0])
    converted = []
    dims: dict[str, int] = {}
    for step, sd in states:
        new, dims = convert_progress_measures(sd)
        converted.append((step, new))
    p_file = dims["d_vocab"] - 1
    p = int(params.get("p") or cfg.get("p") or p_file)
    if p != p_file:
        raise GrokinterpError(
            f"p={p} does not match the file's vocabulary (d_vocab={dims['d_vocab']} = p + 1)"
        )
    fn = str(params.get("fn") or cfg.get("fn_name") or "add")
    if fn not in _PM_FUNCTIONS and fn not in _PM_FUNCTIONS.values():
        raise GrokinterpError(
            f"fn={fn!r} is not supported; allowed: {', '.join(sorted(_PM_FUNCTIONS))}"
        )
    task_name = _PM_FUNCTIONS.get(fn, fn)
    frac = float(params.get("frac_train") or cfg.get("frac_train") or 0.3)
    seed = params.get("seed", cfg.get("seed", 0))
    seed = int(seed if seed is not None else 0)
    task = TaskConfig(
        task_name, {"p": p, "train_fraction": frac, "seed": seed, "split": "python_shuffle"}
    )
    train = _train_config(converted[-1][0], cfg.get("lr"), cfg.get("weight_decay"), seed)
    model = _transformer_config(dims)
    curves = {
        "train_loss": _floats(data.get("train_losses")),
        "test_loss": _floats(data.get("test_losses")),
    }
    return task, model, train, converted, curves


def _import_tl_demo(data: Any, path: Path, params: dict[str, Any]) -> tuple:
    if not isinstance(data, Mapping) or "model" not in data or "config" not in data:
        raise GrokinterpError(
            f"{path} is not a TransformerLens grokking-demo file (needs 'model' and 'config')"
        )
    cfg = _as_mapping(data["config"])
    try:
        dims = {
            k: int(cfg[k]) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")
        }
    except (KeyError, TypeError, ValueError) as e:
        raise GrokinterpError(f"{path}: config lacks a model dimension ({e})") from None
    act = str(cfg.get("act_fn") or "relu")
    if act not in ("relu", "gelu"):
        raise GrokinterpError(
            f"act_fn={act!r} of the TransformerLens model is not supported (relu, gelu)"
        )
    norm = cfg.get("normalization_type")
    if norm not in (None, "LN"):
        raise GrokinterpError(f"normalization_type={norm!r} is not supported (None or 'LN')")
    if cfg.get("n_ctx") not in (None, 3):
        raise GrokinterpError(f"n_ctx={cfg.get('n_ctx')} is not 3: not an [a, b, =] grokking model")
    p = int(params.get("p") or dims["d_vocab"] - 1)
    n_classes = int(cfg.get("d_vocab_out") or dims["d_vocab"])
    n_classes = min(n_classes, p)
    sds = list(data.get("checkpoints") or [])
    epochs = list(data.get("checkpoint_epochs") or [])
    if len(sds) != len(epochs):
        raise GrokinterpError(f"{path}: 'checkpoint_epochs' must list one epoch per checkpoint")
    states = [
        (int(e), _state_dict(sd, f"checkpoints[{i}]"))
        for i, (e, sd) in enumerate(zip(epochs, sds, strict=True))
    ]
    train_losses = _floats(data.get("train_losses"))
    final_step = max([s for s, _ in states] + [len(train_losses) - 1 if train_losses else 0])
    if not any(s == final_step for s, _ in states):  # also when there are no checkpoints
        states.append((final_step, _state_dict(data["model"], "model")))
    states.sort(key=lambda t: t[0])
    converted = [(s, convert_tl(sd, n_classes)) for s, sd in states]
    train_idx = data.get("train_indices")
    if train_idx is None:
        raise GrokinterpError(f"{path}: 'train_indices' missing; the split cannot be reconstructed")
    train_idx = torch.as_tensor(train_idx).long().reshape(-1).tolist()
    fn = str(params.get("fn") or "add")
    task_name = _PM_FUNCTIONS.get(fn, fn)
    frac = len(train_idx) / (p * p)
    task = TaskConfig(
        task_name,
        {
            "p": p,
            "train_fraction": frac,
            "seed": int(cfg.get("seed") or 0),
            "split": "indices",
            "train_indices": train_idx,
        },
    )
    model = _transformer_config(dims, act, "LN" if norm == "LN" else "none")
    train = _train_config(final_step, params.get("lr"), params.get("weight_decay"), cfg.get("seed"))
    curves = {"train_loss": train_losses, "test_loss": _floats(data.get("test_losses"))}
    return task, model, train, converted, curves


def import_run(
    kind: str,
    path: str | Path,
    out_dir: str | Path,
    *,
    trust_pickle: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    **params: Any,
) -> Run:
    """Import a model trained elsewhere as a run directory that every analysis accepts.

    Args:
        kind: ``"progress-measures"`` (Nanda et al. 2023's code) or ``"tl-demo"`` (the
            TransformerLens grokking demo's saved file); see the module docstring for layouts.
        path: the torch file.
        out_dir: the new run directory (must be empty or absent).
        trust_pickle: allow the full unpickler when safe (``weights_only``) loading refuses the
            file; unpickling can execute code stored in it.
        overwrite: replace an existing run directory at ``out_dir``.
        name: run name (default: the directory name).
        **params: for progress-measures ``p``, ``fn`` (add, subtract, x2xyy2, ...),
            ``frac_train``, ``seed`` (each defaults to the file's ``config``, else 113-from-
            vocabulary/add/0.3/0); for tl-demo optionally ``fn``, ``lr``, ``weight_decay``.
    """
    if kind not in IMPORT_KINDS:
        raise GrokinterpError(f"kind={kind!r} is not valid; allowed: {', '.join(IMPORT_KINDS)}")
    allowed = {
        "progress-measures": {"p", "fn", "frac_train", "seed"},
        "tl-demo": {"p", "fn", "lr", "weight_decay"},
    }[kind]
    params = {k: v for k, v in params.items() if v is not None}
    extra = set(params) - allowed
    if extra:
        raise GrokinterpError(
            f"unknown parameter(s) for {kind}: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}"
        )
    path, out = Path(path), Path(out_dir)
    data = load_pickle(path, trust_pickle=trust_pickle)
    build = _import_progress_measures if kind == "progress-measures" else _import_tl_demo
    task, model, train, converted, curves = build(data, path, params)
    config = RunConfig(
        task=task,
        model=model,
        train=train,
        name=name or out.name,
        notes=f"imported from {kind} file {path.name}",
    )
    source = {"kind": kind, "file": str(path.resolve()), "sha256": _sha256(path)}
    return _write_run(out, config, converted, curves, source, overwrite)
