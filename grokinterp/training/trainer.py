"""The trainer: ``train(config, out_dir)`` writes a run directory with dense checkpoints.

Kept small on purpose (in the spirit of nanoGPT): build task and model, then one loop of
forward → loss → backward → (mask, gradient filter) → optimizer step → (mask, norm constraint),
evaluating every ``eval_every`` steps and checkpointing on a log-then-linear schedule. The
resume state (optimizer, RNG, filter) is saved at every checkpoint, so a killed run resumes
bit-exactly on CPU.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from grokinterp.config import GrokinterpError, RunConfig, validate
from grokinterp.models import build_model
from grokinterp.store import (
    Run,
    atomic_write,
    atomic_write_text,
    is_run_dir,
    load_tensors,
    read_metrics,
    save_tensors,
)
from grokinterp.tasks import Task, make_task, split_hash
from grokinterp.training.optim import (
    FixedMask,
    NormConstraint,
    global_norm,
    make_gradient_filter,
    make_optimizer,
    warmup_factor,
)
from grokinterp.training.schedule import checkpoint_schedule

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Keys that may differ between a run on disk and the config it is resumed with.
RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "early_stop_acc"),
    ("train", "early_stop_patience"),
    ("train", "device"),
    ("train", "engine"),
    ("train", "tf32"),
    ("train", "compile"),
}


def loss_fn(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (in float64 when the model is, as Minegishi et al.), MSE on one-hot targets
    (mean over all entries, as Omnigrok's ``nn.MSELoss``) or multi-class hinge (for two classes:
    ½·max(0, 1 − y·f) with f the logit difference, Merrill et al.'s hinge up to a factor ½)."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits, y)
    if kind == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))
    return F.multi_margin_loss(logits, y)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, chunk: int = 8192
) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in chunks to bound memory."""
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        logits = model(x[i : i + chunk])
        total_loss += float(loss_fn(loss, logits, y[i : i + chunk])) * len(logits)
        correct += int((logits.argmax(-1) == y[i : i + chunk]).sum())
    return total_loss / len(y), correct / len(y)


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for section in ("task", "model", "train"):
        for key in sorted(set(da[section]) | set(db[section])):
            if (
                da[section].get(key) != db[section].get(key)
                and (section, key) not in RESUMABLE_CHANGES
            ):
                diffs.append(f"{section}.{key}")
    return diffs


def _prepare_dir(config: RunConfig, out: Path, resume: bool, overwrite: bool) -> Run | None:
    """Return the existing run to resume, or None to start fresh; refuse to clobber."""
    if is_run_dir(out):
        if overwrite:
            shutil.rmtree(out)
            return None
        existing = Run.open(out)
        if not resume:
            raise GrokinterpError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        diffs = _config_diff(existing.config, config)
        if diffs:
            raise GrokinterpError(
                f"cannot resume {out}: its config differs in {', '.join(diffs)} (use --overwrite to start over)"
            )
        if not (out / "state" / "latest.pt").is_file():
            raise GrokinterpError(f"cannot resume {out}: state/latest.pt is missing")
        return existing
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        else:
            raise GrokinterpError(
                f"{out} exists and is not a grokinterp run; choose another --out or pass --overwrite"
            )
    return None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GrokinterpError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def _initial_model(config: RunConfig, task: Task) -> nn.Module:
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, task)
    if config.train.init_state:
        init = load_tensors(config.train.init_state)
        named = dict(model.named_parameters())
        unknown = sorted(set(init) - set(named))
        if unknown:
            raise GrokinterpError(
                f"train.init_state names parameters the model does not have: {', '.join(unknown)}"
            )
        with torch.no_grad():
            for k, v in init.items():
                if v.shape != named[k].shape:
                    raise GrokinterpError(
                        f"train.init_state: {k} has shape {tuple(v.shape)}, the model expects {tuple(named[k].shape)}"
                    )
                named[k].copy_(v)
    return model


class _Trainer:
    def __init__(self, config: RunConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress = config, out, progress
        tc = config.train
        self.device = _resolve_device(tc.device)
        self.dtype = DTYPES[tc.dtype]
        self.task = make_task(config.task.name, **config.task.params)
        self.model = _initial_model(config, self.task).to(self.device, self.dtype)
        if hasattr(self.model, "last_position_only"):
            self.model.last_position_only = True  # the loss reads only the last position
        self.masks = None
        if tc.mask:
            self.masks = FixedMask(
                self.model, {k: v.bool() for k, v in load_tensors(tc.mask).items()}
            )
            self.masks.apply_to_weights()
        as_input = (
            (lambda t: t.to(self.device, self.dtype))
            if self.task.input_kind == "vector"
            else (lambda t: t.to(self.device))
        )
        self.x_train, self.x_test = as_input(self.task.x_train), as_input(self.task.x_test)
        self.y_train, self.y_test = (
            self.task.y_train.to(self.device),
            self.task.y_test.to(self.device),
        )
        self.merged = False
        self._build_optimizer()
        self.grad_filter = make_gradient_filter(tc.grokfast)
        self.norm = NormConstraint(self.params) if tc.norm_constraint else None
        self.data_gen = torch.Generator().manual_seed(tc.seed + 1)
        self.ckpt_steps = set(
            checkpoint_schedule(tc.steps, tc.checkpoint_every, tc.checkpoint_log_steps)
        )
        self.step = 0
        self.above_count = 0
        self.wall = 0.0

    def _build_optimizer(self, previous: torch.optim.Optimizer | None = None) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, self.cfg.train)
        if previous is not None:  # carry per-parameter moments over (GrokTransfer merge)
            for p in self.params:
                if p in previous.state:
                    self.opt.state[p] = previous.state[p]

    def merge_embedding(self) -> None:
        old = self.opt
        self.model.embed.merge()
        self.merged = True
        self._build_optimizer(old)
        if self.grad_filter is not None:  # the filter's buffers no longer match the parameters
            self.grad_filter = make_gradient_filter(self.cfg.train.grokfast)
        if self.norm is not None:  # hold the merged parameters' norm (same function), not θ₀'s
            self.norm.target = float(global_norm(self.params))

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "grad_filter": self.grad_filter.state_dict() if self.grad_filter else None,
            "norm_target": self.norm.target if self.norm else None,
            "torch_rng": torch.get_rng_state(),
            "data_rng": self.data_gen.get_state(),
            "above_count": self.above_count,
            "merged": self.merged,
            "wall": self.wall,
        }

    def load(self, state: dict[str, Any]) -> None:
        if state["merged"]:
            self.model.embed.merge()
            self.merged = True
            self._build_optimizer()
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.grad_filter and state["grad_filter"]:
            self.grad_filter.load_state_dict(state["grad_filter"])
        if self.norm:
            self.norm.target = state["norm_target"]
        torch.set_rng_state(state["torch_rng"])
        self.data_gen.set_state(state["data_rng"])
        self.step, self.above_count, self.wall = state["step"], state["above_count"], state["wall"]

    def finish(self) -> None:
        """Wait for pending writes (the fast engine writes checkpoints in the background)."""

    # ------------------------------------------------------------------ loop pieces
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.train.batch_size
        if bs is None or bs >= len(self.y_train):
            return self.x_train, self.y_train
        idx = torch.randint(0, len(self.y_train), (bs,), generator=self.data_gen).to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def train_step(self) -> None:
        tc = self.cfg.train
        for g in self.opt.param_groups:
            g["lr"] = tc.lr * warmup_factor(self.step, tc.warmup_steps)
        x, y = self.batch()
        loss = loss_fn(tc.loss, self.model(x), y)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        if self.masks:
            self.masks.apply_to_grads()
        if self.grad_filter:
            self.grad_filter(self.params)
        self.opt.step()
        if self.masks:
            self.masks.apply_to_weights()
        if self.norm:
            self.norm(self.params)
        self.step += 1
        if tc.merge_embedding_at is not None and self.step == tc.merge_embedding_at:
            self.merge_embedding()

    def metrics(self) -> dict[str, Any]:
        self.model.eval()
        loss = self.cfg.train.loss
        train_loss, train_acc = evaluate(self.model, self.x_train, self.y_train, loss)
        test_loss, test_acc = evaluate(self.model, self.x_test, self.y_test, loss)
        self.model.train()
        return {
            "step": self.step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "weight_norm_l2": float(global_norm(self.params, 2)),
            "weight_norm_l1": float(global_norm(self.params, 1)),
            "lr": self.opt.param_groups[0]["lr"],
            "wall_time": round(self.wall, 4),
        }

    def checkpoint(self) -> None:
        dtype = torch.float16 if self.cfg.train.checkpoint_dtype == "float16" else None
        state = {
            k: (v.to(dtype) if dtype and v.is_floating_point() else v)
            for k, v in self.model.state_dict().items()
        }
        save_tensors(
            self.out / "steps" / f"{self.step:08d}.safetensors",
            state,
            metadata={"step": str(self.step)},
        )
        atomic_write(self.out / "state" / "latest.pt", lambda tmp: torch.save(self.state(), tmp))


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Run:
    """Train ``config`` into ``out_dir`` (DESIGN §4) and return the :class:`Run`.

    ``resume=True`` continues a killed or shorter run from its last checkpoint, bit-exactly on
    CPU; an existing different run is never overwritten unless ``overwrite=True``.
    """
    validate(config)
    make_task(
        config.task.name, **config.task.params
    )  # bad task parameters fail before any disk change
    out = Path(out_dir)
    existing = _prepare_dir(config, out, resume, overwrite)
    if existing is not None and existing.info.get("status") == "complete":
        done = existing.info.get("final_step", -1) >= config.train.steps or existing.info.get(
            "stopped_early"
        )
        if done and existing.config.train.steps == config.train.steps:
            return existing  # nothing left to do
    from grokinterp.training.fast import make_trainer  # fast.py subclasses _Trainer

    t = make_trainer(config, out, progress)  # train.engine: eager _Trainer or FastTrainer
    tc = config.train
    if existing is not None:
        t.load(torch.load(out / "state" / "latest.pt", weights_only=False, map_location=t.device))
        run = existing
        run.update_info(config=config.to_dict(), status="running")
        # Drop whatever was written after the resumable state (metrics, later checkpoints).
        rows = [m for m in read_metrics(out / "metrics.jsonl") if m["step"] <= t.step]
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in rows))
        for s in run.steps:
            if s > t.step:
                run.step_path(s).unlink()
        t.ckpt_steps.add(tc.steps)
    else:
        run = Run.create(
            out,
            config,
            {"split_hash": split_hash(t.task), "n_params": sum(p.numel() for p in t.params)},
        )
        with open(out / "metrics.jsonl", "w") as f:
            f.write(json.dumps(t.metrics()) + "\n")
        t.checkpoint()

    bar = tqdm(
        total=tc.steps,
        initial=t.step,
        disable=not progress,
        desc=config.name,
        dynamic_ncols=True,
        leave=True,
    )
    t.model.train()
    stopped_early = False
    with open(out / "metrics.jsonl", "a") as log:
        while t.step < tc.steps:
            start = time.perf_counter()
            t.train_step()
            t.wall += time.perf_counter() - start
            is_ckpt = t.step in t.ckpt_steps
            if t.step % tc.eval_every == 0 or is_ckpt or t.step == tc.steps:
                m = t.metrics()
                log.write(json.dumps(m) + "\n")
                log.flush()
                bar.set_postfix(
                    train_loss=f"{m['train_loss']:.3g}",
                    train_acc=f"{m['train_acc']:.3f}",
                    test_acc=f"{m['test_acc']:.3f}",
                    refresh=False,
                )
                if not math.isfinite(m["train_loss"]):
                    raise GrokinterpError(
                        f"training diverged at step {t.step} (train loss is not finite); lower train.lr or model.init_scale"
                    )
                if tc.early_stop_acc is not None:
                    t.above_count = t.above_count + 1 if m["test_acc"] >= tc.early_stop_acc else 0
                    stopped_early = t.above_count >= tc.early_stop_patience
            if is_ckpt or stopped_early:
                t.checkpoint()
            bar.update(1)
            if stopped_early:
                break
    bar.close()
    t.finish()
    run.update_info(
        status="complete",
        final_step=t.step,
        wall_time_s=round(t.wall, 3),
        stopped_early=stopped_early,
    )
    return run
