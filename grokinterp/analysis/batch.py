"""Many checkpoints at once: stacked weights and ``vmap``-ed forward passes.

A :class:`CheckpointBatch` holds the weights of ``C`` checkpoints of one run stacked along a new
leading axis (``params[name]: Tensor[C, ...]``), on one device, and a template model of the run's
architecture. :meth:`CheckpointBatch.apply` evaluates any function ``fn(model, *args)`` for all
``C`` checkpoints in one vectorised call: ``torch.func.vmap`` over the stacked weights of
``torch.func.functional_call``. Hooks (TransformerLens hook points, forward-pre hooks on activation
modules) fire as usual inside ``fn``; whatever ``fn`` returns gains the leading ``C`` axis.

Why vmap rather than a loop over ``load_state_dict``: the per-checkpoint matrix products become one
batched product each (``bmm``), which is what keeps a GPU busy and what amortises per-call
overhead on a CPU (measured in ``benchmarks/bench_analysis.py``). The loop stays available
(``vectorize=False``) as the reference, and for functions vmap cannot trace (data-dependent
shapes, ``.item()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from grokinterp.config import GrokinterpError

__all__ = [
    "CheckpointBatch",
    "class_logits",
    "last_position_only",
    "map_checkpoints",
    "resolve_device",
    "stack_states",
]


def class_logits(model: nn.Module, x: Tensor, fwd_hooks: Sequence[tuple[Any, Any]] = ()) -> Tensor:
    """:func:`grokinterp.models.class_logits`, imported on the first call: ``grokinterp.models``
    imports TransformerLens (seconds), which the analysis modules must not do at import time —
    a report read from the cache loads them all and builds no model (issue 16)."""
    from grokinterp.models import class_logits as _class_logits

    return _class_logits(model, x, fwd_hooks)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Asking for CUDA on a machine without it is a clear error, not a deep torch traceback."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GrokinterpError(
            f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GrokinterpError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return dev


@contextmanager
def last_position_only(model: nn.Module, on: bool = True) -> Iterator[None]:
    """With ``on``, a grokinterp transformer computes its last block at the last position only
    (the model's ``last_position_only`` switch, which the trainer uses too): logits, and the last
    block's activations at that position, are unchanged for a third of the work on Nanda et al.'s
    3-token inputs. Other models are left as they are; the model's own setting is restored."""
    if not on or not hasattr(type(model), "last_position_only"):
        yield
        return
    before = model.__dict__.get("last_position_only")
    model.last_position_only = True
    try:
        yield
    finally:
        if before is None:
            del model.last_position_only
        else:
            model.last_position_only = before


def stack_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack per-checkpoint state dicts (same keys and shapes) along a new first axis."""
    if not states:
        raise GrokinterpError("no checkpoints to stack")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise GrokinterpError("checkpoints with different parameter names cannot be stacked")
    return {k: torch.stack([s[k] for s in states]) for k in keys}


def _stack_outputs(outs: list[Any]) -> Any:
    """Stack a list of equally structured outputs (tensor, tuple/list or dict of them)."""
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.stack(outs)
    if isinstance(first, Mapping):
        return {k: _stack_outputs([o[k] for o in outs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_stack_outputs(list(parts)) for parts in zip(*outs, strict=True))
    raise GrokinterpError(f"cannot stack analysis outputs of type {type(first).__name__}")


class _Call(nn.Module):
    """Makes ``fn(model, *args)`` the ``forward`` of a module, so ``functional_call`` can swap the
    model's weights for one checkpoint's while ``fn`` runs."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.model, *args)


def map_checkpoints(
    model: nn.Module,
    params: Mapping[str, Tensor],
    fn: Callable[..., Any],
    *args: Any,
    batched_args: bool = False,
) -> Any:
    """``fn(model, *args)`` for every checkpoint of the stacked ``params`` (``Tensor[C, ...]``),
    vectorised with ``vmap`` over ``functional_call``; outputs gain a leading ``C`` axis. With
    ``batched_args`` every tensor of ``args`` has a leading ``C`` axis too (one argument per
    checkpoint); otherwise ``args`` are shared by all checkpoints."""
    wrapper = _Call(model, fn)
    p = {f"model.{k}": v for k, v in params.items()}
    in_dims = (0, *([0 if batched_args else None] * len(args)))
    with torch.no_grad():
        return vmap(lambda p_, *a: functional_call(wrapper, p_, a), in_dims=in_dims)(p, *args)


@dataclass
class CheckpointBatch:
    """The weights of ``C`` checkpoints of one run, stacked, on ``device``.

    Attributes:
        steps: the ``C`` checkpoint steps, in order.
        params: ``{name: Tensor[C, ...]}``, the run's state dicts stacked along axis 0.
        model: a model of the run's architecture on ``device`` in eval mode; its own weights are
            never used by :meth:`apply` (each checkpoint's replace them).
        device: where ``params`` and ``model`` live.
    """

    steps: list[int]
    params: dict[str, Tensor]
    model: nn.Module
    device: torch.device

    def __len__(self) -> int:
        return len(self.steps)

    def state(self, i: int) -> dict[str, Tensor]:
        """Checkpoint ``i``'s state dict (views into :attr:`params`)."""
        return {k: v[i] for k, v in self.params.items()}

    def apply(self, fn: Callable[..., Any], *args: Any, vectorize: bool = True) -> Any:
        """``fn(model, *args)`` evaluated at every checkpoint, results stacked along a new axis 0.

        ``fn`` sees the template model carrying one checkpoint's weights; its outputs (a tensor,
        or a tuple/dict of tensors) come back with a leading ``C`` axis. ``args`` are shared by all
        checkpoints. With ``vectorize=False`` the checkpoints are loaded one by one (the reference
        path; also for functions that ``vmap`` cannot trace).
        """
        if vectorize:
            return map_checkpoints(self.model, self.params, fn, *args)
        wrapper = _Call(self.model, fn)
        params = {f"model.{k}": v for k, v in self.params.items()}
        with torch.no_grad():
            outs = [
                functional_call(wrapper, {k: v[i] for k, v in params.items()}, args)
                for i in range(len(self))
            ]
        return _stack_outputs(outs)

    def forward(
        self, x: Tensor, hooks: Sequence[str] = (), *, vectorize: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Class logits ``[C, N, n_classes]`` (:func:`~grokinterp.models.class_logits`) of every
        checkpoint on inputs ``x`` and the activations at the TransformerLens hook points
        ``hooks`` (``{name: Tensor[C, ...]}``), in one call."""
        names = list(hooks)

        def run(model: nn.Module, inputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            acts: dict[str, Tensor] = {}

            def keep(t: Tensor, hook: Any) -> None:
                acts[hook.name] = t

            logits = class_logits(model, inputs, fwd_hooks=[(n, keep) for n in names])
            return logits, {n: acts[n] for n in names}

        return self.apply(run, x, vectorize=vectorize)
