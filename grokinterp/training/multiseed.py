"""Many seeds of one config at once (issue 9): ``grokinterp train --seeds 0-63``.

The S models are trained in one process with *stacked* parameters (every tensor gets a leading
seed dimension) through the seed-batched functional forward of :mod:`grokinterp.training.fast`,
so one GEMM serves all seeds. Seeds never interact:

- the loss is the sum over seeds of each seed's mean loss, so each seed's gradient is exactly its
  own;
- AdamW / Adam / SGD, the Grokfast filters (Lee et al. 2024) and fixed masks act elementwise, so
  one optimizer over the stacked tensors is S independent optimizers; Omnigrok's norm
  constraint (Liu, Michaud, Tegmark 2023) is applied per seed;
- early stopping is per seed: a seed that stops keeps being computed (its slice is ignored) but
  nothing more is written for it.

``train.seed`` is what varies (initialisation and minibatch order); the task split
(``task.seed``) is shared. Each seed is written as an ordinary run directory ``<out>/seed<k>``
(run.json, metrics.jsonl, dense checkpoints, and ``state/latest.pt`` in the eager trainer's
format), equal within float rounding to training that seed alone; ``Run.open`` and
``grokinterp train --resume`` work on it as on any run.

Configs the batched engine does not cover (minibatches, an embedding merge, a model without a
fast forward) and resumes fall back to training the seeds one after another with
:func:`grokinterp.training.train`, which gives the same result, only slower.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from grokinterp.config import GrokinterpError, RunConfig, validate
from grokinterp.store import Run, is_run_dir, load_tensors
from grokinterp.tasks import make_task, split_hash
from grokinterp.training.fast import (
    AsyncWriter,
    FastForward,
    StepRunner,
    eager_optimizer_state,
    graph_blockers,
    make_fast_optimizer,
    matmul_precision,
    metrics_row,
    per_seed_loss,
    per_seed_norms,
    snapshot,
    submit_snapshot,
    training_loss,
)
from grokinterp.training.optim import make_gradient_filter
from grokinterp.training.schedule import checkpoint_schedule
from grokinterp.training.trainer import (
    DTYPES,
    _initial_model,
    _prepare_dir,
    _resolve_device,
    train,
)


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"3"``, ``"0,2,5-7"`` → sorted distinct seeds."""
    seeds: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise GrokinterpError(
                f"--seeds {text!r}: use a list of integers and ranges such as 0-63 or 0,2,5-7"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise GrokinterpError(f"--seeds {text!r}: range {part} is empty")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed training is written: ``<out>/seed<seed>``."""
    return Path(out_dir) / f"seed{seed}"


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    cfg = config.copy()
    cfg.train.seed = seed
    cfg.name = f"{config.name}-seed{seed}"
    return cfg


def batched_blockers(config: RunConfig) -> list[str]:
    """Why ``config`` cannot be trained with stacked seeds (empty: it can)."""
    out = []
    tc = config.train
    if tc.batch_size is not None:
        out.append("train.batch_size (each seed draws its own minibatches)")
    if tc.merge_embedding_at is not None:
        out.append("train.merge_embedding_at")
    if config.model.name not in FastForward.SUPPORTED:
        out.append(f"model {config.model.name!r} has no fast forward")
    return out


def train_seeds(
    config: RunConfig,
    seeds: list[int],
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_batch: int | None = None,
) -> list[Run]:
    """Train ``config`` once per seed in ``seeds`` into ``<out_dir>/seed<k>``; returns the runs.

    Seeds are trained together with stacked weights, ``max_batch`` at a time (default: all);
    see the module docstring for what falls back to one-at-a-time training.
    """
    validate(config)
    if not seeds:
        raise GrokinterpError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise GrokinterpError("--seeds: seeds must be distinct")
    if max_batch is not None and max_batch < 1:
        raise GrokinterpError("max_batch must be ≥ 1")
    make_task(config.task.name, **config.task.params)  # bad task parameters fail first
    out = Path(out_dir)
    configs = [seed_config(config, s) for s in seeds]
    dirs = [seed_dir(out, s) for s in seeds]
    if (resume and any(is_run_dir(d) for d in dirs)) or batched_blockers(config):
        return [
            train(c, d, resume=resume, overwrite=overwrite, progress=progress)
            for c, d in zip(configs, dirs, strict=True)
        ]
    runs: list[Run] = []
    size = max_batch or len(seeds)
    for i in range(0, len(seeds), size):
        group = list(zip(configs[i : i + size], dirs[i : i + size], strict=True))
        for c, d in group:
            _prepare_dir(c, d, resume=False, overwrite=overwrite)
        trainer = _MultiSeedTrainer([c for c, _ in group], [d for _, d in group])
        if trainer.fast is None:  # the fast forward disagreed with the module: one at a time
            runs += [train(c, d, progress=progress) for c, d in group]
            continue
        runs += trainer.run(progress)
    return runs


class _PerSeedNorm:
    """Omnigrok's norm constraint (Liu et al. 2023) per seed: rescale each seed's parameters so
    its global L2 norm stays at its value at initialisation."""

    def __init__(self, params: list[torch.Tensor]):
        self.target = per_seed_norms(params)[0]

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> None:
        scale = self.target / per_seed_norms(params)[0]
        for p in params:
            p.mul_(scale.view(-1, *([1] * (p.ndim - 1))))


class _MultiSeedTrainer:
    """S runs of one config (differing in ``train.seed``) with stacked parameters."""

    def __init__(self, configs: list[RunConfig], dirs: list[Path]):
        self.configs, self.dirs = configs, dirs
        base = configs[0]
        tc = base.train
        self.tc = tc
        self.device = _resolve_device(tc.device)
        self.dtype = DTYPES[tc.dtype]
        self.task = make_task(base.task.name, **base.task.params)
        models, self.rng_states = [], []
        for c in configs:
            models.append(_initial_model(c, self.task).to(self.device, self.dtype))
            # The eager trainer saves the global RNG as it is after building the model.
            self.rng_states.append(torch.get_rng_state())
        self.template = models[0]
        if hasattr(self.template, "last_position_only"):
            self.template.last_position_only = True
        named = [dict(m.named_parameters()) for m in models]
        self.names = [k for k, p in named[0].items() if p.requires_grad]
        self.state_keys = list(models[0].state_dict())
        self.buffers = [
            {k: v for k, v in m.state_dict().items() if k not in named[0]} for m in models
        ]
        self.params = {
            k: nn.Parameter(torch.stack([n[k].detach() for n in named])) for k in self.names
        }
        self.plist = list(self.params.values())
        self.masks = self._load_masks(tc.mask) if tc.mask else None
        if self.masks:
            self._apply_masks(weights=True)
        self.x_train = self.task.x_train.to(self.device)
        self.x_test = self.task.x_test.to(self.device)
        if self.task.input_kind == "vector":
            self.x_train, self.x_test = self.x_train.to(self.dtype), self.x_test.to(self.dtype)
        self.y_train, self.y_test = (
            self.task.y_train.to(self.device),
            self.task.y_test.to(self.device),
        )
        self.fast = FastForward.build(base.model, self.task, self.device, self.dtype)
        if self.fast is not None and not self.fast.agrees_with(self.template, self.x_train[:256]):
            self.fast = None
        if self.fast is None:
            return
        self.tf32 = tc.tf32 and self.device.type == "cuda"
        self.writer = AsyncWriter()
        self.train_inputs = self.fast.prepare(self.x_train)
        self.train_loss = training_loss(
            self.fast, tc.loss, self.train_inputs, self.y_train, tc.compile
        )
        self.eval_sets = [
            (self.fast.prepare(x[i : i + 16384], backward=False), y[i : i + 16384], split)
            for split, x, y in ((0, self.x_train, self.y_train), (1, self.x_test, self.y_test))
            for i in range(0, len(y), 16384)
        ]
        self.opt = make_fast_optimizer(self.plist, tc, self.device)
        self.grad_filter = make_gradient_filter(tc.grokfast)
        self.norm = _PerSeedNorm(self.plist) if tc.norm_constraint else None
        self.runner = StepRunner(
            self.plist,
            self.opt,
            self._loss,
            tc,
            self.device,
            graphable=not graph_blockers(tc),
            after_backward=self._after_backward,
            after_step=self._after_step,
            before_capture=self.writer.flush,
        )
        self.ckpt_steps = set(
            checkpoint_schedule(tc.steps, tc.checkpoint_every, tc.checkpoint_log_steps)
        )
        self.step = 0
        self.wall = 0.0

    # ------------------------------------------------------------------ pieces
    def _load_masks(self, path: str) -> dict[str, torch.Tensor]:
        masks = {k: v.bool() for k, v in load_tensors(path).items()}
        unknown = sorted(set(masks) - set(self.params))
        if unknown:
            raise GrokinterpError(
                f"mask names parameters the model does not have: {', '.join(unknown)}"
            )
        for k, m in masks.items():
            if m.shape != self.params[k].shape[1:]:
                raise GrokinterpError(
                    f"mask {k} has shape {tuple(m.shape)}, parameter has "
                    f"{tuple(self.params[k].shape[1:])}"
                )
        return {k: m.to(self.device, self.dtype) for k, m in masks.items()}

    @torch.no_grad()
    def _apply_masks(self, weights: bool) -> None:
        for k, m in self.masks.items():
            p = self.params[k]
            if weights:
                p.mul_(m)
            elif p.grad is not None:
                p.grad.mul_(m)

    def _loss(self) -> torch.Tensor:
        return self.train_loss(self.params)

    def _after_backward(self) -> None:
        if self.masks:
            self._apply_masks(weights=False)
        if self.grad_filter:
            self.grad_filter(self.plist)

    def _after_step(self) -> None:
        if self.masks:
            self._apply_masks(weights=True)
        if self.norm:
            self.norm(self.plist)

    @torch.no_grad()
    def metrics(self) -> list[dict[str, Any]]:
        """One metrics row per seed (the eager trainer's keys), read back in one sync."""
        if self.device.type == "cuda":
            start = time.perf_counter()
            torch.cuda.synchronize(self.device)
            self.wall += time.perf_counter() - start
        sums = torch.zeros(2, 2, len(self.dirs), dtype=torch.float64, device=self.device)
        for inputs, y, split in self.eval_sets:
            with matmul_precision(self.tf32):
                logits = self.fast.logits(self.params, inputs)
            sums[split, 0] += (per_seed_loss(self.tc.loss, logits, y) * len(y)).double()
            sums[split, 1] += (logits.argmax(-1) == y).sum(1).double()
        l2, l1 = per_seed_norms(self.plist)
        vals = torch.cat([sums.flatten(0, 1), l2.double()[None], l1.double()[None]]).T.tolist()
        return [metrics_row(self, v) for v in vals]

    def _seed_state(self, i: int, opt_state: dict[str, Any], above: int) -> dict[str, Any]:
        """Seed ``i``'s resume state in the eager trainer's ``state/latest.pt`` format."""
        per_param = {}
        for j in range(len(self.plist)):
            st = opt_state["state"].get(j)
            if st is None:
                continue
            per_param[j] = {
                k: (v[i] if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
                for k, v in st.items()
            }
        gf = None
        if self.grad_filter is not None:
            gf = _slice_tree(self.grad_filter.state_dict(), i)
        model = {
            k: self.params[k][i] if k in self.params else self.buffers[i][k]
            for k in self.state_keys
        }
        return {
            "step": self.step,
            "model": model,
            "optimizer": eager_optimizer_state(
                {"state": per_param, "param_groups": opt_state["param_groups"]}, self.tc
            ),
            "grad_filter": gf,
            "norm_target": float(self.norm.target[i]) if self.norm else None,
            "torch_rng": self.rng_states[i],
            "data_rng": torch.Generator().manual_seed(self.configs[i].train.seed + 1).get_state(),
            "above_count": above,
            "merged": False,
            "wall": self.wall,
        }

    def checkpoint(self, seeds: list[int], above: list[int]) -> None:
        """Snapshot the given seeds now; their files are written on the background thread."""
        ckpt_dtype = torch.float16 if self.tc.checkpoint_dtype == "float16" else None
        opt_state = self.opt.state_dict()
        for i in seeds:
            weights = {
                k: self.params[k][i] if k in self.params else self.buffers[i][k]
                for k in self.state_keys
            }
            state = self._seed_state(i, opt_state, above[i])
            snap = snapshot(self.step, weights, state, ckpt_dtype)
            submit_snapshot(self.writer, self.dirs[i], snap)

    # ------------------------------------------------------------------ the loop
    def run(self, progress: bool) -> list[Run]:
        runs = [
            Run.create(
                d,
                c,
                {
                    "split_hash": split_hash(self.task),
                    "n_params": sum(p[0].numel() for p in self.plist),
                },
            )
            for c, d in zip(self.configs, self.dirs, strict=True)
        ]
        logs = [open(d / "metrics.jsonl", "w") for d in self.dirs]  # noqa: SIM115
        try:
            return self._loop(runs, logs, progress)
        finally:
            for f in logs:
                f.close()
            self.writer.flush()

    def _loop(self, runs: list[Run], logs: list, progress: bool) -> list[Run]:
        tc, n = self.tc, len(self.dirs)
        active = [True] * n
        stopped_early = [False] * n
        diverged: list[int] = []
        above = [0] * n
        final_step = [tc.steps] * n
        for i, m in enumerate(self.metrics()):
            logs[i].write(json.dumps(m) + "\n")
        self.checkpoint(list(range(n)), above)
        bar = tqdm(total=tc.steps, disable=not progress, desc=f"{self.configs[0].name} ×{n}")
        while self.step < tc.steps and any(active):
            start = time.perf_counter()
            self.runner.step(self.step)
            self.step += 1
            self.wall += time.perf_counter() - start
            is_ckpt = self.step in self.ckpt_steps
            stop_now: list[int] = []
            if self.step % tc.eval_every == 0 or is_ckpt or self.step == tc.steps:
                for i, m in enumerate(self.metrics()):
                    if not active[i]:
                        continue
                    logs[i].write(json.dumps(m) + "\n")
                    logs[i].flush()
                    if not math.isfinite(m["train_loss"]):
                        active[i], final_step[i] = False, self.step
                        diverged.append(i)
                        continue
                    if tc.early_stop_acc is not None:
                        above[i] = above[i] + 1 if m["test_acc"] >= tc.early_stop_acc else 0
                        if above[i] >= tc.early_stop_patience:
                            stop_now.append(i)
            to_write = [i for i in range(n) if active[i]] if is_ckpt else list(stop_now)
            if to_write:
                self.checkpoint(to_write, above)
            for i in stop_now:
                active[i], stopped_early[i], final_step[i] = False, True, self.step
            bar.update(1)
        bar.close()
        self.writer.flush()
        for i, run in enumerate(runs):
            if i in diverged:
                run.update_info(status="diverged", final_step=final_step[i])
                continue
            run.update_info(
                status="complete",
                final_step=min(final_step[i], self.step),
                wall_time_s=round(self.wall, 3),
                stopped_early=stopped_early[i],
            )
        if diverged:
            names = ", ".join(str(self.configs[i].train.seed) for i in diverged)
            raise GrokinterpError(
                f"training diverged for seed(s) {names} (train loss not finite); the other seeds "
                "completed. Lower train.lr or model.init_scale"
            )
        return [Run.open(d) for d in self.dirs]


def _slice_tree(tree: Any, i: int) -> Any:
    """Seed ``i``'s slice of every tensor in a (grad filter) state tree."""
    if isinstance(tree, torch.Tensor):
        return tree[i]
    if isinstance(tree, dict):
        return {k: _slice_tree(v, i) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_slice_tree(v, i) for v in tree)
    return tree


__all__ = ["batched_blockers", "parse_seeds", "seed_config", "seed_dir", "train_seeds"]
