"""The training step, run eagerly or (CUDA) replayed as one captured CUDA graph.

:class:`StepRunner` does one optimisation step: learning-rate warm-up, ``zero_grad``, the
engine's loss and its backward, the loop's ``after_backward`` (masks, Grokfast), the optimizer,
the loop's ``after_step`` (masks, norm constraint). The fast engine on CUDA asks for a graph:
once the warm-up is over the whole step is captured and then replayed (one launch per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grokinterp.config import TrainConfig
from grokinterp.models.functional import matmul_precision
from grokinterp.training.optim import warmup_factor


def graph_blockers(tc: TrainConfig) -> list[str]:
    """Features whose per-step Python work or host syncs keep the step out of a CUDA graph."""
    out = []
    if tc.batch_size is not None:
        out.append("train.batch_size (minibatches are drawn on the host)")
    if tc.norm_constraint:
        out.append("train.norm_constraint (reads the norm on the host)")
    if tc.grokfast and tc.grokfast.get("kind") == "ma":
        out.append("train.grokfast kind 'ma' (a Python queue of gradients)")
    return out


class StepRunner:
    """Runs training steps: eagerly, or (``graphable`` on CUDA, once warm-up is over) by
    replaying one CUDA graph of the whole step. ``loss()`` returns the scalar to differentiate;
    ``after_backward`` and ``after_step`` hold masks, gradient filters and constraints; ``tf32``
    runs the uncaptured steps (and so the capture) with TF32 matmuls on CUDA."""

    EAGER_BEFORE_CAPTURE = 3  # CUDA graphs need a few warm-up iterations on a side stream

    def __init__(
        self,
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
        loss: Callable[[], torch.Tensor],
        cfg: TrainConfig,
        device: torch.device,
        graphable: bool,
        tf32: bool = False,
        after_backward: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
        before_capture: Callable[[], None] | None = None,
    ):
        self.params, self.opt, self.loss, self.cfg = params, opt, loss, cfg
        self.after_backward, self.after_step = after_backward, after_step
        self.before_capture = before_capture
        self.use_graph = graphable and device.type == "cuda"
        self.tf32 = tf32 and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(device) if self.use_graph else None
        self.eager_steps = 0

    def _body(self) -> None:
        self.loss().backward()
        if self.after_backward:
            self.after_backward()
        self.opt.step()
        if self.after_step:
            self.after_step()

    def _eager(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * warmup_factor(step, self.cfg.warmup_steps)
        self.opt.zero_grad(set_to_none=False)
        self._body()

    def step(self, step: int) -> None:
        """Do training step number ``step`` (0-based: the update that makes it ``step + 1``)."""
        if self.graph is not None:
            self.graph.replay()
            return
        with matmul_precision(self.tf32):
            self._step_uncaptured(step)

    def _step_uncaptured(self, step: int) -> None:
        warm = warmup_factor(step, self.cfg.warmup_steps) == 1.0
        if self.use_graph and warm and self.eager_steps >= self.EAGER_BEFORE_CAPTURE:
            self._capture(step)
            self.graph.replay()
            return
        if self.stream is not None:  # eager steps before capture run on the side stream
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._eager(step)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            self._eager(step)
        self.eager_steps += 1

    def _capture(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * warmup_factor(step, self.cfg.warmup_steps)
        if self.before_capture:  # e.g. let the checkpoint writer finish its CUDA calls
            self.before_capture()
        torch.cuda.synchronize()
        # Gradients allocated during capture live in the graph's pool and are overwritten
        # (not accumulated) by each replay, so no zero_grad is needed inside the graph.
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
            self._body()

    def release(self) -> None:
        """Drop the graph (parameters are about to change shape, e.g. an embedding merge)."""
        if self.graph is not None:
            torch.cuda.synchronize()
            self.graph = None
            self.opt.zero_grad(set_to_none=True)


__all__ = ["StepRunner", "graph_blockers"]
