"""What a training engine is: a strategy that supplies the forward/loss and the step.

The loop (:mod:`grokinterp.training.loop`, :class:`~grokinterp.training.group.SeedGroup`) owns
everything else, written once: the optimizer and its learning-rate warm-up, masks, Grokfast, the
norm constraint, metrics, checkpoints, the resume state, early stopping and divergence. An engine
holds the trainable parameters of ``S`` seeds (``S = 1``: a plain run) and answers:

- :attr:`params` — the tensors the optimizer updates, by parameter name; with a leading seed
  dimension when :attr:`stacked` (else one run's module parameters);
- :meth:`loss` — the scalar to differentiate: the sum over seeds of each seed's mean loss;
- :meth:`prepare_eval` / :meth:`eval_logits` — logits ``[S, n, C]`` of a fixed input chunk;
- :meth:`weights` / :meth:`load_weights` — one seed's ``state_dict`` (checkpoints, resume);
- :meth:`merge_embedding` — GrokTransfer's fold of ``W_A·W_B`` into ``W_E`` (new parameters);
- how the step runs: :attr:`graphable` (a CUDA graph may hold it), :attr:`tf32`,
  :attr:`fused_on` (fused optimizer kernels), :attr:`background_writes` (checkpoint files
  written by a background thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grokinterp.config import ModelConfig, TrainConfig
from grokinterp.tasks import Task


class EngineUnavailable(Exception):
    """This engine cannot train this model; the message says why (the loop then warns and uses
    the eager engine)."""


@dataclass
class TrainData:
    """The task's splits on the training device (vector inputs already in the model's dtype)."""

    model: ModelConfig
    task: Task
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    device: torch.device
    dtype: torch.dtype


class Engine:
    """Base of the engines (see the module docstring); subclasses fill in the methods."""

    name: str = "?"
    stacked: bool = False
    graphable: bool = False
    tf32: bool = False
    fused_on: torch.device | None = None
    background_writes: bool = False
    params: dict[str, nn.Parameter]

    def __init__(self, models: list[nn.Module], data: TrainData, tc: TrainConfig) -> None:
        self.data, self.tc = data, tc
        self.n_seeds = len(models)

    def loss(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """Σ over seeds of the mean training loss on ``(x, y)`` (None: the whole training set)."""
        raise NotImplementedError

    def prepare_eval(self, x: torch.Tensor) -> Any:
        """Whatever :meth:`eval_logits` needs for the fixed inputs ``x``."""
        return x

    def eval_logits(self, prepared: Any) -> torch.Tensor:
        """Logits ``[S, n, C]`` (called under ``torch.no_grad``)."""
        raise NotImplementedError

    def weights(self, i: int) -> dict[str, torch.Tensor]:
        """Seed ``i``'s ``state_dict`` (live tensors: snapshot them before they change)."""
        raise NotImplementedError

    def load_weights(self, i: int, weights: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def merge_embedding(self) -> None:
        raise NotImplementedError
