"""The eager engine: the hooked module's own forward (``train.engine = "eager"``).

The reference computation: the model of :func:`grokinterp.models.build_model` with
``last_position_only = True`` (the loss reads only the last position), the config's loss on its
logits, the ``foreach`` optimizer, checkpoint files written synchronously. One seed (``S = 1``);
many seeds are trained one after another (:func:`grokinterp.training.train_seeds`).
"""

from __future__ import annotations

import torch
from torch import nn

from grokinterp.config import TrainConfig
from grokinterp.models import class_logits
from grokinterp.training.engines.base import Engine, TrainData
from grokinterp.training.numerics import loss_fn


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, models: list[nn.Module], data: TrainData, tc: TrainConfig) -> None:
        super().__init__(models, data, tc)
        if len(models) != 1:
            raise ValueError("the eager engine trains one seed at a time")
        self.model = models[0]
        if hasattr(self.model, "last_position_only"):
            self.model.last_position_only = True  # the loss reads only the last position
        self.model.train()
        self._collect()

    def _collect(self) -> None:
        self.params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}

    def loss(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            x, y = self.data.x_train, self.data.y_train
        return loss_fn(self.tc.loss, class_logits(self.model, x), y)

    def eval_logits(self, prepared: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        try:
            return class_logits(self.model, prepared).unsqueeze(0)
        finally:
            self.model.train()

    def weights(self, i: int) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_weights(self, i: int, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    def merge_embedding(self) -> None:
        self.model.embed.merge()
        self._collect()
