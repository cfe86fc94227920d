"""A seed group: ``S`` runs of one config that differ only in ``train.seed``, trained together
by one engine. ``S = 1`` is a plain run.

Everything a training does besides the forward/loss and the step is written here once, for any
engine (:mod:`grokinterp.training.engines`): the initial models, the optimizer and its warm-up,
fixed masks, the Grokfast filter, Omnigrok's norm constraint (per seed), minibatches, the metrics
row, checkpoint snapshots and the resume state of each seed (in one format whichever engine wrote
it), and loading it back. Seeds never interact: the loss is the sum of each seed's mean loss, and
the optimizer, filters and masks act elementwise, so one optimizer over stacked tensors is ``S``
independent ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokinterp.config import GrokinterpError, RunConfig
from grokinterp.models import build_model
from grokinterp.store import load_tensors
from grokinterp.store.writer import AsyncWriter, Snapshot, snapshot, submit_snapshot
from grokinterp.tasks import Task, make_task
from grokinterp.training.cuda_graph import StepRunner
from grokinterp.training.engines import TrainData, build_engine, resolve_device
from grokinterp.training.numerics import per_sample_loss, seed_norms
from grokinterp.training.optim import (
    FixedMask,
    NormConstraint,
    adopt_fused_state,
    make_gradient_filter,
    make_optimizer,
    portable_optimizer_state,
    seed_view,
)
from grokinterp.training.schedule import checkpoint_schedule

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Evaluation chunk (samples): bounds memory, and keeps each chunk's loss sum a one-thread
# reduction (< 32 768 elements), so metrics are the same on every thread count.
EVAL_CHUNK = 8192
# What a resume state holds; one without these is not one of ours.
STATE_KEYS = frozenset(
    {"step", "model", "optimizer", "grad_filter", "norm_target", "torch_rng", "data_rng"}
    | {"above_count", "merged", "wall"}
)


def initial_model(config: RunConfig, task: Task) -> nn.Module:
    """The model of ``config`` at initialisation (``train.seed``), with ``train.init_state``."""
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


def _tree(tree: Any, leaf) -> Any:
    if isinstance(tree, torch.Tensor):
        return leaf(tree)
    if isinstance(tree, dict):
        return {k: _tree(v, leaf) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree(v, leaf) for v in tree)
    return tree


def _stack(trees: list[Any]) -> Any:
    """Stack the tensors of per-seed trees of one structure into ``[S, ...]``."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(trees)
    if isinstance(first, dict):
        return {k: _stack([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_stack(list(vs)) for vs in zip(*trees, strict=True))
    return first


class SeedGroup:
    """``configs`` (one per seed, equal but for ``train.seed``) trained by engine ``engine``."""

    def __init__(self, configs: list[RunConfig], engine: str):
        base = configs[0]
        tc = self.tc = base.train
        self.configs, self.n = configs, len(configs)
        device, dtype = resolve_device(tc.device), DTYPES[tc.dtype]
        task = make_task(base.task.name, **base.task.params)
        models, self.torch_rng = [], []
        for c in configs:
            models.append(initial_model(c, task).to(device, dtype))
            self.torch_rng.append(torch.get_rng_state())  # the global RNG after building

        def put(t: torch.Tensor) -> torch.Tensor:  # vector inputs in the model's dtype
            return t.to(device, dtype) if task.input_kind == "vector" else t.to(device)

        y_train, y_test = task.y_train.to(device), task.y_test.to(device)
        x_train, x_test = put(task.x_train), put(task.x_test)
        self.data = TrainData(base.model, task, x_train, y_train, x_test, y_test, device, dtype)
        self.full_batch = tc.batch_size is None or tc.batch_size >= len(task.y_train)
        if not self.full_batch and self.n > 1:
            raise ValueError("minibatches are drawn per seed: train such seeds one at a time")
        self.engine = build_engine(engine, models, self.data, tc)
        self.masks = None
        if tc.mask:
            masks = {k: v.bool() for k, v in load_tensors(tc.mask).items()}
            self.masks = FixedMask(masks, self.engine.params, self.engine.stacked)
            self.masks.apply_to_weights(self.engine.params)
        self.data_gens = [torch.Generator().manual_seed(c.train.seed + 1) for c in configs]
        self.writer = AsyncWriter(background=self.engine.background_writes)
        self.ckpt_steps = set(
            checkpoint_schedule(tc.steps, tc.checkpoint_every, tc.checkpoint_log_steps)
        )
        self.step, self.wall, self.merged = 0, 0.0, False
        self.above = [0] * self.n  # consecutive evaluations at or above train.early_stop_acc
        self.host_seconds = {"metrics": 0.0, "checkpoint": 0.0}  # training-thread time spent
        self._prefetched: dict[int, Snapshot] = {}
        self._setup_optimization()
        d = self.data
        self.eval_sets = [
            (self.engine.prepare_eval(x[i : i + EVAL_CHUNK]), y[i : i + EVAL_CHUNK], split)
            for split, x, y in ((0, d.x_train, d.y_train), (1, d.x_test, d.y_test))
            for i in range(0, len(y), EVAL_CHUNK)
        ]

    @property
    def params(self) -> dict[str, nn.Parameter]:
        return self.engine.params

    # ------------------------------------------------------------------ the step
    def _setup_optimization(self, previous: torch.optim.Optimizer | None = None) -> None:
        """Optimizer, gradient filter, norm constraint and step runner for the current
        parameters; ``previous``'s per-parameter moments carry over (GrokTransfer's merge)."""
        tc, plist = self.tc, list(self.params.values())
        self.opt = make_optimizer(plist, tc, fused_on=self.engine.fused_on)
        if previous is not None:
            for p in plist:
                if p in previous.state:
                    self.opt.state[p] = previous.state[p]
        self.grad_filter = make_gradient_filter(tc.grokfast)
        # the norm constraint holds the norm the parameters have now (after a merge: the merged
        # parameters' norm, the same function; not θ₀'s)
        self.norm = (
            NormConstraint(plist, stacked=self.engine.stacked) if tc.norm_constraint else None
        )
        self.runner = StepRunner(
            plist,
            self.opt,
            self._loss,
            tc,
            self.data.device,
            graphable=self.engine.graphable,
            tf32=self.engine.tf32,
            after_backward=self._after_backward,
            after_step=self._after_step,
            before_capture=self.writer.flush,
        )

    def _loss(self) -> torch.Tensor:
        if self.full_batch:
            return self.engine.loss(None, None)
        d = self.data
        idx = torch.randint(
            0, len(d.y_train), (self.tc.batch_size,), generator=self.data_gens[0]
        ).to(d.device)
        return self.engine.loss(d.x_train[idx], d.y_train[idx])

    def _after_backward(self) -> None:
        if self.masks:
            self.masks.apply_to_grads(self.params)
        if self.grad_filter:
            self.grad_filter(list(self.params.values()))

    def _after_step(self) -> None:
        if self.masks:
            self.masks.apply_to_weights(self.params)
        if self.norm:
            self.norm(list(self.params.values()))

    def train_step(self) -> None:
        """One update of every seed (then GrokTransfer's merge if it is due)."""
        self.runner.step(self.step)
        self.step += 1
        if self.tc.merge_embedding_at is not None and self.step == self.tc.merge_embedding_at:
            self.merge_embedding()

    def merge_embedding(self) -> None:
        self.runner.release()
        previous = self.opt
        self.engine.merge_embedding()
        self.merged = True
        self._setup_optimization(previous)

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def _metric_values(self) -> torch.Tensor:
        """``[S, 6]`` float64 on the device: summed train loss, train correct, summed test
        loss, test correct, L2 and L1 norm of each seed (queued, not read back)."""
        sums = torch.zeros(2, 2, self.n, dtype=torch.float64, device=self.data.device)
        for prepared, y, split in self.eval_sets:
            logits = self.engine.eval_logits(prepared)
            sums[split, 0] += per_sample_loss(self.tc.loss, logits, y).double().sum(1)
            sums[split, 1] += (logits.argmax(-1) == y).sum(1).double()
        l2, l1 = seed_norms(seed_view(p, self.engine.stacked) for p in self.params.values())
        return torch.cat([sums.flatten(0, 1), l2.double()[None], l1.double()[None]]).T

    def evaluate(self, snapshot_seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """One metrics row per seed. On CUDA the host runs ahead of the GPU by many queued
        steps: everything this step needs from the host (the evaluation's kernels and, given
        ``snapshot_seeds``, their checkpoint snapshots) is queued *before* the one wait."""
        start = time.perf_counter()
        steps_done = None
        if self.data.device.type == "cuda":
            steps_done = torch.cuda.Event()
            steps_done.record()
        if snapshot_seeds:
            self._prefetched = self.snapshots(snapshot_seeds)
        values = self._metric_values()
        if steps_done is not None:  # the queued steps' GPU time is training time
            wait = time.perf_counter()
            steps_done.synchronize()
            waited = time.perf_counter() - wait
            self.wall += waited
            start += waited
        n_tr, n_te = len(self.data.y_train), len(self.data.y_test)
        lr = self.opt.param_groups[0]["lr"]
        rows = [
            {
                "step": self.step,
                "train_loss": v[0] / n_tr,
                "train_acc": round(v[1]) / n_tr,
                "test_loss": v[2] / n_te,
                "test_acc": round(v[3]) / n_te,
                "weight_norm_l2": v[4],
                "weight_norm_l1": v[5],
                "lr": lr,
                "wall_time": round(self.wall, 4),
            }
            for v in values.tolist()
        ]
        self.host_seconds["metrics"] += time.perf_counter() - start
        return rows

    # ------------------------------------------------------------------ state
    def _slice(self, tree: Any, i: int) -> Any:
        return _tree(tree, lambda t: t[i]) if self.engine.stacked else tree

    def seed_state(self, i: int, opt_state: dict, filter_state: dict | None) -> dict[str, Any]:
        """Seed ``i``'s resume state (live tensors) from the (portable) optimizer state and the
        gradient filter's state of the whole group."""
        per_param = {
            j: {k: v if k == "step" else self._slice(v, i) for k, v in st.items()}
            for j, st in opt_state["state"].items()
        }
        return {
            "step": self.step,
            "model": self.engine.weights(i),
            "optimizer": {"state": per_param, "param_groups": opt_state["param_groups"]},
            "grad_filter": self._slice(filter_state, i) if filter_state else None,
            "norm_target": float(self.norm.target[i]) if self.norm else None,
            "torch_rng": self.torch_rng[i],
            "data_rng": self.data_gens[i].get_state(),
            "above_count": self.above[i],
            "merged": self.merged,
            "wall": self.wall,
        }

    def load_states(self, states: list[dict[str, Any]]) -> None:
        """Continue from one resume state per seed (as :meth:`seed_state` wrote them)."""
        first, device = states[0], self.data.device
        if first["merged"] and not self.merged:
            self.runner.release()
            self.engine.merge_embedding()
            self.merged = True
            self._setup_optimization()
        for i, st in enumerate(states):
            self.engine.load_weights(i, st["model"])
        opt = first["optimizer"]
        if self.engine.stacked:
            per = [st["optimizer"]["state"] for st in states]
            opt = {
                "state": {
                    j: {
                        k: v if k == "step" else _stack([p[j][k] for p in per])
                        for k, v in st.items()
                    }
                    for j, st in per[0].items()
                },
                "param_groups": opt["param_groups"],
            }
        self.opt.load_state_dict(opt)
        if self.engine.fused_on is not None:
            adopt_fused_state(self.opt, device)
        if self.grad_filter and first["grad_filter"]:
            filt = [st["grad_filter"] for st in states]
            filt = _stack(filt) if self.engine.stacked else filt[0]
            self.grad_filter.load_state_dict(_tree(filt, lambda t: t.to(device)))
        if self.norm:
            self.norm.target = torch.tensor(
                [st["norm_target"] for st in states], dtype=torch.float64, device=device
            )
        self.torch_rng = [st["torch_rng"] for st in states]
        if self.n == 1:
            torch.set_rng_state(first["torch_rng"])
        for gen, st in zip(self.data_gens, states, strict=True):
            gen.set_state(st["data_rng"])
        self.step, self.wall = first["step"], first["wall"]
        self.above = [st["above_count"] for st in states]

    # ------------------------------------------------------------------ checkpoints
    def snapshots(self, seeds: list[int]) -> dict[int, Snapshot]:
        """Host copies of the given seeds' weights and resume states, taken now."""
        dtype = torch.float16 if self.tc.checkpoint_dtype == "float16" else None
        opt_state = portable_optimizer_state(self.opt.state_dict(), self.tc)
        filt = self.grad_filter.state_dict() if self.grad_filter else None
        return {
            i: snapshot(
                self.step, self.engine.weights(i), self.seed_state(i, opt_state, filt), dtype
            )
            for i in seeds
        }

    def checkpoint(self, seeds: list[int], dirs: list[Path]) -> None:
        """Write the given seeds' checkpoints (the snapshots :meth:`evaluate` took at this step,
        with the host-side values decided since, or new ones) through the writer."""
        start = time.perf_counter()
        snaps, self._prefetched = self._prefetched, {}
        missing = [i for i in seeds if i not in snaps or snaps[i].step != self.step]
        snaps.update(self.snapshots(missing) if missing else {})
        for i in seeds:
            snaps[i].state.update(above_count=self.above[i], wall=self.wall)
            submit_snapshot(self.writer, dirs[i], snaps[i])
        self.host_seconds["checkpoint"] += time.perf_counter() - start

    def close(self, quiet: bool = False) -> None:
        """Wait for the pending checkpoint writes (``quiet``: while another error propagates,
        do not raise the writer's)."""
        try:
            self.writer.flush()
        except Exception:
            if not quiet:
                raise


__all__ = ["DTYPES", "EVAL_CHUNK", "STATE_KEYS", "SeedGroup", "initial_model"]
