"""The analysis registry and ``over_training``: map per-checkpoint analyses over a run, cached.

An analysis is registered as a *factory*::

    @register_analysis("fourier", applies=lambda run: None if ... else "needs a modular task")
    def make_fourier(run: Run, **params) -> Callable[[int, dict[str, Tensor], nn.Module], dict[str, Tensor]]:
        ...  # one-off preparation (bases, inputs) here
        def at_step(step, state, model):
            return {"gini": ..., "spectrum": ...}
        return at_step

The driver loads each checkpoint once into one model instance, calls every requested analysis,
stacks the results along a new first axis and caches each analysis in
``<run>/analysis/<name>.safetensors``; the cache records the parameters and steps, so a second
call is instant and a changed parameter recomputes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from grokinterp.config import GrokinterpError
from grokinterp.store import Run, load_tensors, save_tensors

CACHE_VERSION = 1

StepFn = Callable[[int, dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Analysis:
    name: str
    factory: Callable[..., StepFn]
    applies: Callable[[Run], str | None]
    description: str


ANALYSES: dict[str, Analysis] = {}


def register_analysis(name: str, applies: Callable[[Run], str | None] | None = None) -> Callable:
    """Decorator registering ``factory(run, **params) -> per-checkpoint function`` as ``name``."""

    def deco(factory: Callable[..., StepFn]) -> Callable[..., StepFn]:
        doc = (factory.__doc__ or "").strip().splitlines()
        ANALYSES[name] = Analysis(
            name, factory, applies or (lambda run: None), doc[0] if doc else ""
        )
        return factory

    return deco


def applicable(run: Run) -> dict[str, str | None]:
    """For every registered analysis: None if it applies to ``run``, else the reason it does not."""
    return {name: a.applies(run) for name, a in ANALYSES.items()}


def cache_path(run: Run, name: str):
    return run.analysis_dir / f"{name}.safetensors"


def load_cached(
    run: Run, name: str, params: Mapping[str, Any] | None = None, steps: Sequence[int] | None = None
) -> dict[str, torch.Tensor] | None:
    """The cached result of ``name`` (None if absent, stale or unreadable).

    With ``params``/``steps`` given, the cache must have been computed with exactly those.
    """
    path = cache_path(run, name)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_tensors(path)
    except Exception:  # a corrupt cache is recomputed, never fatal
        return None
    if meta.get("cache_version") != str(CACHE_VERSION):
        return None
    if params is not None and meta.get("params") != json.dumps(
        dict(params), sort_keys=True, default=str
    ):
        return None
    if steps is not None and meta.get("steps") != json.dumps(list(steps)):
        return None
    return tensors


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = rows[0].keys()
    out = {}
    for k in keys:
        vals = [torch.as_tensor(r[k]) for r in rows]
        try:
            out[k] = torch.stack(vals)
        except RuntimeError:
            raise GrokinterpError(
                f"analysis output {k!r} changes shape across checkpoints; pad it to a fixed shape"
            ) from None
    return out


def over_training(
    run: Run,
    analyses: Sequence[str] | Mapping[str, Mapping[str, Any]],
    steps: Sequence[int] | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, torch.Tensor]:
    """Compute ``analyses`` at every checkpoint of ``run`` (or at ``steps``), cached.

    ``analyses`` is a list of names or a mapping name → parameters. Returns a flat dict with
    ``"steps"`` and ``"<name>/<key>"`` tensors whose first axis runs over the steps.
    """
    if isinstance(analyses, str):
        analyses = [analyses]
    specs = (
        {a: {} for a in analyses}
        if not isinstance(analyses, Mapping)
        else {k: dict(v or {}) for k, v in analyses.items()}
    )
    unknown = [a for a in specs if a not in ANALYSES]
    if unknown:
        raise GrokinterpError(
            f"unknown analysis {', '.join(unknown)}; available: {', '.join(sorted(ANALYSES))}"
        )
    for name in specs:
        reason = ANALYSES[name].applies(run)
        if reason:
            raise GrokinterpError(f"analysis {name!r} does not apply to {run.path}: {reason}")
    all_steps = run.steps
    steps = list(all_steps if steps is None else steps)
    missing = sorted(set(steps) - set(all_steps))
    if missing:
        raise GrokinterpError(f"run {run.path} has no checkpoint at step(s) {missing[:5]}")

    results: dict[str, dict[str, torch.Tensor]] = {}
    todo = {}
    for name, params in specs.items():
        cached = None if force else load_cached(run, name, params, steps)
        if cached is not None:
            results[name] = cached
        else:
            todo[name] = ANALYSES[name].factory(run, **params)

    if todo:
        rows: dict[str, list[dict[str, torch.Tensor]]] = {n: [] for n in todo}
        model, model_keys = None, None
        for step in tqdm(
            steps, desc=f"analyze {', '.join(todo)}", disable=not progress, leave=False
        ):
            state = run.load_state(step)
            if model is None or state.keys() != model_keys:  # a new layout (embedding merge)
                model = run.model(step)
                model_keys = model.state_dict().keys()
            else:
                model.load_state_dict(state)
            with torch.no_grad():
                for name, fn in todo.items():
                    rows[name].append(
                        {k: v.detach().cpu() for k, v in fn(step, state, model).items()}
                    )
        for name in todo:
            results[name] = _stack(rows[name])
            meta = {
                "cache_version": str(CACHE_VERSION),
                "params": json.dumps(specs[name], sort_keys=True, default=str),
                "steps": json.dumps(steps),
            }
            save_tensors(cache_path(run, name), results[name], metadata=meta)

    out: dict[str, torch.Tensor] = {"steps": torch.tensor(steps)}
    for name, tensors in results.items():
        out.update({f"{name}/{k}": v for k, v in tensors.items()})
    return out
