"""Models (DESIGN §3). Every model is a ``transformer_lens.HookedRootModule`` whose parameter
and hook names follow TransformerLens, so ``run_with_cache`` (which returns TransformerLens's
``ActivationCache``) and ``run_with_hooks`` work; the logits follow TransformerLens's
``[batch, pos, d_vocab_out]`` convention (:mod:`grokinterp.models.hooked`), and
:func:`class_logits` reads the ``[batch, n_classes]`` class logits of any of them.

``build_model(cfg, task)`` is the single entry point.
"""

from __future__ import annotations

import torch
from torch import nn

from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models.components import (
    ACTIVATION_TYPES,
    Embed,
    InputEmbed,
    effective_embedding,
    first_layer_weight,
)
from grokinterp.models.hooked import HookedConfig, class_logits
from grokinterp.models.interop import from_transformer_bridge, to_transformer_bridge
from grokinterp.models.mlp import MLP, EmbedMLP
from grokinterp.models.transformer import Transformer
from grokinterp.tasks import Task

MODELS = {"transformer": Transformer, "embed_mlp": EmbedMLP, "mlp": MLP}


def build_model(cfg: ModelConfig, task: Task) -> nn.Module:
    """Build and initialise the model ``cfg.name`` for ``task``.

    Initial parameters are multiplied by ``cfg.init_scale`` (Omnigrok's α); call under
    ``torch.manual_seed`` for a reproducible initialisation.
    """
    if cfg.name not in MODELS:
        raise GrokinterpError(f"unknown model {cfg.name!r}; available: {', '.join(MODELS)}")
    token_model = cfg.name in ("transformer", "embed_mlp")
    if token_model and task.input_kind != "tokens":
        raise GrokinterpError(
            f"model {cfg.name!r} needs a token task; {task.name!r} has vector inputs (use model.name = 'mlp')"
        )
    if not token_model and task.input_kind != "vector":
        raise GrokinterpError(
            f"model 'mlp' needs vector inputs; {task.name!r} has tokens (use 'transformer' or 'embed_mlp')"
        )
    model = MODELS[cfg.name](cfg, task)
    if cfg.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(cfg.init_scale)
    return model


__all__ = [
    "ACTIVATION_TYPES",
    "Embed",
    "EmbedMLP",
    "HookedConfig",
    "InputEmbed",
    "MLP",
    "MODELS",
    "Transformer",
    "build_model",
    "class_logits",
    "effective_embedding",
    "first_layer_weight",
    "from_transformer_bridge",
    "to_transformer_bridge",
]
