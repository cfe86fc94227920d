"""Training engines: strategies that supply the forward/loss and the step (see
:mod:`grokinterp.training.engines.base`). ``train.engine`` = ``"eager"`` (the hooked module's
forward, the reference), ``"fast"`` (functional seed-batched forward, fused optimizer, CUDA graph)
or ``"auto"`` (fast on CUDA, eager on CPU, where runs are the bit-exact reference)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from grokinterp.config import GrokinterpError, RunConfig, TrainConfig
from grokinterp.training.engines.base import Engine, EngineUnavailable, TrainData
from grokinterp.training.engines.eager import EagerEngine
from grokinterp.training.engines.fast import FastEngine

ENGINES = ("auto", "eager", "fast")


class EngineFallbackWarning(UserWarning):
    """The fast engine could not train a model and the eager engine did (the reason is given)."""


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a device (``auto``: CUDA when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GrokinterpError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def resolve_engine(config: RunConfig) -> str:
    """``"eager"`` or ``"fast"`` for ``config.train.engine`` (``auto``: fast on CUDA)."""
    engine = config.train.engine
    if engine not in ENGINES:
        raise GrokinterpError(
            f"train.engine={engine!r} is not valid; allowed: {', '.join(ENGINES)}"
        )
    if engine == "auto":
        return "fast" if resolve_device(config.train.device).type == "cuda" else "eager"
    return engine


def warn_fallback(reason: str, stacklevel: int = 2) -> None:
    warnings.warn(
        f"the fast engine cannot train this model ({reason}); training with the eager engine "
        "(the same training, slower)",
        EngineFallbackWarning,
        stacklevel=stacklevel + 1,
    )


def build_engine(name: str, models: list[nn.Module], data: TrainData, tc: TrainConfig) -> Engine:
    """The engine ``name`` ("eager" | "fast") over ``models`` (one per seed). A fast engine that
    cannot train the model warns with the reason and gives the eager engine for one seed; for
    several seeds :class:`EngineUnavailable` is raised (the caller trains them one at a time)."""
    if name == "fast":
        try:
            return FastEngine(models, data, tc)
        except EngineUnavailable as e:
            if len(models) > 1:
                raise
            warn_fallback(str(e), stacklevel=2)
    return EagerEngine(models, data, tc)


__all__ = [
    "ENGINES",
    "EagerEngine",
    "Engine",
    "EngineFallbackWarning",
    "EngineUnavailable",
    "FastEngine",
    "TrainData",
    "build_engine",
    "resolve_device",
    "resolve_engine",
]
