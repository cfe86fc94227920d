"""The analysis registry and ``over_training``: map analyses over a run's checkpoints, batched,
on the GPU when there is one, cached per checkpoint.

One analysis = one module that registers a factory::

    @register_analysis("fourier", applies=fourier_applies, summarize=fourier_summary)
    def make_fourier(run: Run, **params) -> Measure:
        ...  # one-off preparation (bases, inputs, key frequencies) here
        return Measure(at_step=..., at_steps=..., key={...})

* ``Measure.at_step(step, state, model) -> {key: Tensor}`` is the per-checkpoint **reference**;
* ``Measure.at_steps(batch) -> {key: Tensor[C, ...]}`` (optional) computes a whole
  :class:`~grokinterp.analysis.batch.CheckpointBatch` of ``C`` checkpoints at once;
* ``Measure.key`` holds what the results depend on beyond the user's parameters (e.g. the key
  frequencies read from the last checkpoint), so the cache knows when it is stale;
* ``summarize(run, results) -> dict`` gives the analysis's headline numbers (plain data; the CLI
  and the report format them).

Cache (:mod:`grokinterp.analysis.cache`): ``<run>/analysis/<name>.safetensors`` holds one row per
checkpoint step, with the parameters, the key and the steps in its metadata. Only checkpoints
missing from it are computed, it is
rewritten (atomically) after every chunk — an interrupted analysis keeps what was done — and a run
that is still training can be analysed as it goes. A changed parameter or key recomputes that
analysis only.

One ``over_training`` call with several analyses reads each checkpoint from disk once and copies
it to the device once (``_SharedWeights``); the analyses share the stacked weights read-only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from grokinterp.analysis.batch import CheckpointBatch, resolve_device, stack_states
from grokinterp.analysis.cache import (
    cache_info,
    cache_path,
    canonical_json,
    concat_rows,
    load_cached,
    merge_rows,
    read_cache,
    write_cache,
)
from grokinterp.config import GrokinterpError
from grokinterp.store import Run

# Checkpoints per batch when neither the caller nor the analysis says: small on a CPU (the
# per-checkpoint work is already large enough to use the cores), large on a GPU (fills it).
DEFAULT_CHUNK = {"cpu": 8, "cuda": 64}
# Most checkpoints per batch for an analysis that states its bytes per checkpoint: on a GPU the
# memory budget below bounds it, so a weight-only analysis (kilobytes per checkpoint) takes a
# whole run in a few batches instead of paying the per-batch launch overhead 7× over; on a CPU
# larger batches only spill out of the caches, so the default stays (fourier on the demo, 2
# cores, `benchmarks/bench_analysis.py --run RUN --only fourier --chunk-sizes 4,8,14,16`: 2.1,
# 2.2, 2.9 and 3.1 s).
MAX_CHUNK = {"cpu": 8, "cuda": 1024}
# Memory a chunk may take, for analyses that state their bytes per checkpoint: on a CPU about
# its caches' size (bigger chunks only spill); on a GPU a share of its free memory.
CPU_CHUNK_BYTES = 256 << 20
CUDA_CHUNK_BYTES = 16 << 30
# The cache is rewritten at most this often while computing (and always at the end): an
# interrupted analysis keeps what was done, without one rewrite of the whole file per chunk.
CACHE_WRITE_SECONDS = 2.0
# Within one ``over_training`` call the analyses share one stack of the checkpoints' weights on
# the device (``_SharedWeights``) when it fits: on a CPU this much, on a GPU min(this, an eighth
# of the free memory), the rest being left to the analyses' batches.
CPU_SHARED_BYTES = 512 << 20
CUDA_SHARED_BYTES = 4 << 30

StepFn = Callable[[int, dict[str, Tensor], nn.Module], dict[str, Tensor]]
BatchFn = Callable[[CheckpointBatch], dict[str, Tensor]]
Summarize = Callable[[Run, Mapping[str, Tensor]], dict[str, Any]]

__all__ = [
    "ANALYSES",
    "Analysis",
    "Measure",
    "Results",
    "applicable",
    "cache_info",
    "cache_path",
    "load_cached",
    "over_training",
    "register_analysis",
]


@dataclass
class Measure:
    """What an analysis factory returns (see the module docstring)."""

    at_step: StepFn
    at_steps: BatchFn | None = None
    key: Mapping[str, Any] = field(default_factory=dict)
    chunk: int | None = None  # most checkpoints per batch, None = the driver's default
    # memory one checkpoint of a batch takes (activations): the driver sizes chunks to the device
    bytes_per_checkpoint: int | None = None


@dataclass(frozen=True)
class Analysis:
    name: str
    factory: Callable[..., Measure | StepFn]
    applies: Callable[[Run], str | None]
    summarize: Summarize | None = None
    description: str = ""
    labels: Mapping[str, str] | None = None  # display names of summarize's keys


class _Registry(dict):
    """``name → Analysis``. Its first read imports every analysis module
    (:func:`grokinterp.analysis.load_analyses`), so that code reading it sees every analysis
    while ``import grokinterp.analysis`` itself stays light; writes (registrations) load nothing."""

    # "empty" -> "loading" (a read during the imports sees what is registered so far) -> "loaded"
    _state = "empty"

    def _load(self) -> None:
        if self._state != "empty":
            return
        self._state = "loading"
        try:
            from grokinterp.analysis import load_analyses

            load_analyses()
        except BaseException:
            self._state = "empty"  # a failed import is raised again on the next read
            raise
        self._state = "loaded"

    def __getitem__(self, name: str) -> Analysis:
        self._load()
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, name: str, default: Any = None) -> Any:
        self._load()
        return super().get(name, default)

    def keys(self):
        self._load()
        return super().keys()

    def values(self):
        self._load()
        return super().values()

    def items(self):
        self._load()
        return super().items()


ANALYSES: dict[str, Analysis] = _Registry()


def register_analysis(
    name: str,
    applies: Callable[[Run], str | None] | None = None,
    summarize: Summarize | None = None,
    labels: Mapping[str, str] | None = None,
) -> Callable:
    """Decorator registering ``factory(run, **params) -> Measure`` as analysis ``name``;
    ``summarize(run, results) -> dict`` gives its headline numbers, ``labels`` their display
    names (default: the key with spaces)."""

    def deco(factory: Callable[..., Measure]) -> Callable[..., Measure]:
        doc = (factory.__doc__ or "").strip().splitlines()
        ANALYSES[name] = Analysis(
            name,
            factory,
            applies or (lambda run: None),
            summarize,
            doc[0] if doc else "",
            labels,
        )
        return factory

    return deco


def applicable(run: Run) -> dict[str, str | None]:
    """For every registered analysis: None if it applies to ``run``, else the reason it does not."""
    return {name: a.applies(run) for name, a in ANALYSES.items()}


class Results(dict):
    """The flat result of :func:`over_training`: ``"steps"`` plus ``"<analysis>/<key>"`` tensors
    whose first axis runs over the steps. Also carries ``steps`` (list), ``params`` (per analysis),
    ``seconds`` (compute time per analysis) and ``computed`` (checkpoints computed, not read from
    the cache, per analysis)."""

    steps: list[int]
    params: dict[str, dict[str, Any]]
    seconds: dict[str, float]
    computed: dict[str, int]

    def of(self, name: str) -> dict[str, Tensor]:
        """One analysis's tensors without the ``"<name>/"`` prefix."""
        return {k[len(name) + 1 :]: v for k, v in self.items() if k.startswith(name + "/")}


def _chunk_size(measure: Measure, device: torch.device) -> int:
    """Checkpoints per batch, capped by the analysis's own limit (``measure.chunk``).

    Without ``bytes_per_checkpoint`` the device's default (:data:`DEFAULT_CHUNK`). With it, the
    memory budget decides, up to :data:`MAX_CHUNK`: a weight-only analysis takes hundreds of
    checkpoints per batch on a GPU, an activation-heavy one as many as fit."""
    if measure.bytes_per_checkpoint:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = min(CUDA_CHUNK_BYTES, free // 4)
        else:
            budget = CPU_CHUNK_BYTES
        size = min(MAX_CHUNK.get(device.type, 64), budget // max(measure.bytes_per_checkpoint, 1))
    else:
        size = DEFAULT_CHUNK.get(device.type, 8)
    return max(1, min(size, measure.chunk or 1 << 30))


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _specs(analyses: Sequence[str] | Mapping[str, Mapping[str, Any]] | str) -> dict[str, dict]:
    if isinstance(analyses, str):
        analyses = [analyses]
    if isinstance(analyses, Mapping):
        specs = {k: dict(v or {}) for k, v in analyses.items()}
    else:
        specs = {a: {} for a in analyses}
    unknown = [a for a in specs if a not in ANALYSES]
    if unknown:
        raise GrokinterpError(
            f"unknown analysis {', '.join(map(str, unknown))}; available: {', '.join(sorted(ANALYSES))}"
        )
    return specs


def _as_measure(obj: Measure | StepFn) -> Measure:
    return obj if isinstance(obj, Measure) else Measure(at_step=obj)


def _nbytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _chunks(run: Run, steps: list[int], size: int) -> Iterator[tuple[list[int], list[dict]]]:
    """``(steps, states)`` chunks of at most ``size`` checkpoints sharing one parameter layout
    (a GrokTransfer run changes layout when its factorised embedding is merged)."""
    cur_steps: list[int] = []
    cur_states: list[dict[str, Tensor]] = []
    for step in steps:
        state = run.load_state(step)
        if cur_states and (len(cur_steps) >= size or state.keys() != cur_states[0].keys()):
            yield cur_steps, cur_states
            cur_steps, cur_states = [], []
        cur_steps.append(step)
        cur_states.append(state)
    if cur_steps:
        yield cur_steps, cur_states


class _SharedWeights:
    """The weights of the checkpoints that one ``over_training`` call computes, read from disk
    and stacked onto the device once, then shared read-only by all its analyses (before, each
    analysis re-read, re-stacked and re-copied every checkpoint: ~0.3 s per analysis at 418
    checkpoints, on a GPU a large share of the whole).

    Built for the first analysis that computes anything, over the steps it computes (every
    checkpoint of a fresh run; the new ones when following a run), if they fit ``budget`` and
    share one parameter layout; otherwise the analyses read checkpoints chunk by chunk as
    before. An analysis's chunk is a view of it (consecutive steps) or a gather. An analysis
    that wrote into it (torch's version counter moved) gets it dropped: later analyses read the
    disk again rather than see changed weights.
    """

    def __init__(self, run: Run, device: torch.device, budget: int) -> None:
        self.run, self.device, self.budget = run, device, budget
        self.params: dict[str, Tensor] | None = None
        self.rows: dict[int, int] = {}
        self._tried = False
        self._versions: dict[str, int] = {}

    def build(self, steps: list[int]) -> None:
        if self._tried or not steps:
            return
        self._tried = True
        first = self.run.load_state(steps[0])
        if _nbytes(first) * len(steps) > self.budget:
            return
        states = [first]
        for step in steps[1:]:
            state = self.run.load_state(step)
            if state.keys() != first.keys():
                return  # two layouts (a merged GrokTransfer run): chunk by chunk
            states.append(state)
        self.params = {k: v.to(self.device) for k, v in stack_states(states).items()}
        self._versions = {k: v._version for k, v in self.params.items()}
        self.rows = {step: i for i, step in enumerate(steps)}

    def holds(self, steps: list[int]) -> bool:
        return self.params is not None and all(s in self.rows for s in steps)

    def chunk(self, steps: list[int]) -> dict[str, Tensor]:
        """The stacked weights of ``steps`` (all held): views when they are consecutive rows."""
        assert self.params is not None
        idx = [self.rows[s] for s in steps]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return {k: v[idx[0] : idx[0] + len(idx)] for k, v in self.params.items()}
        rows = torch.tensor(idx, device=self.device)
        return {k: v.index_select(0, rows) for k, v in self.params.items()}

    def check_unchanged(self) -> None:
        if self.params is not None and any(
            v._version != self._versions[k] for k, v in self.params.items()
        ):
            self.params, self.rows = None, {}


def _shared_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(CUDA_SHARED_BYTES, free // 8)
    return CPU_SHARED_BYTES


def _stack_rows(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    out = {}
    for k in rows[0]:
        try:
            out[k] = torch.stack([torch.as_tensor(r[k]) for r in rows])
        except RuntimeError:
            raise GrokinterpError(
                f"analysis output {k!r} changes shape across checkpoints; pad it to a fixed shape"
            ) from None
    return out


class _Models:
    """One template model per parameter layout, on the analysis device."""

    def __init__(self, run: Run, device: torch.device):
        self.run, self.device = run, device
        self._by_layout: dict[tuple[str, ...], nn.Module] = {}

    def for_state(self, step: int, state: Mapping[str, Tensor]) -> nn.Module:
        layout = tuple(state)
        if layout not in self._by_layout:
            self._by_layout[layout] = self.run.model(step).to(self.device)
        return self._by_layout[layout]


def _compute(
    measure: Measure,
    run: Run,
    steps: list[int],
    models: _Models,
    device: torch.device,
    chunk: int,
    reference: bool,
    shared: _SharedWeights,
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Yield ``(steps, rows)`` chunk by chunk (rows on the CPU, stacked over the chunk)."""
    batched = not reference and measure.at_steps is not None
    if batched:
        shared.build(steps)
        while steps and shared.holds(steps[:chunk]):
            chunk_steps, steps = steps[:chunk], steps[chunk:]
            model = models.for_state(chunk_steps[0], shared.params)
            batch = CheckpointBatch(chunk_steps, shared.chunk(chunk_steps), model, device)
            try:
                out = measure.at_steps(batch)
            finally:
                shared.check_unchanged()
            yield chunk_steps, _batch_rows(out, chunk_steps)
    # what the shared stack does not hold (or the per-checkpoint path): read chunk by chunk
    for chunk_steps, states in _chunks(run, steps, chunk):
        model = models.for_state(chunk_steps[0], states[0])
        if batched:
            params = {k: v.to(device, non_blocking=True) for k, v in stack_states(states).items()}
            out = measure.at_steps(CheckpointBatch(chunk_steps, params, model, device))
            yield chunk_steps, _batch_rows(out, chunk_steps)
            continue
        rows = []
        for step, state in zip(chunk_steps, states, strict=True):
            state = {k: v.to(device) for k, v in state.items()}
            model.load_state_dict(state)
            with torch.no_grad():
                out = measure.at_step(step, state, model)
            rows.append({k: torch.as_tensor(v).detach().cpu() for k, v in out.items()})
        yield chunk_steps, _stack_rows(rows)


def _batch_rows(out: Mapping[str, Tensor], steps: list[int]) -> dict[str, Tensor]:
    bad = [k for k, v in out.items() if v.shape[:1] != (len(steps),)]
    if bad:
        raise GrokinterpError(f"batched analysis outputs {bad} lack the checkpoint axis")
    return {k: v.detach().cpu() for k, v in out.items()}


def over_training(
    run: Run,
    analyses: Sequence[str] | Mapping[str, Mapping[str, Any]] | str,
    steps: Sequence[int] | None = None,
    *,
    device: str | torch.device | None = "auto",
    progress: bool = True,
    force: bool = False,
    reference: bool = False,
    chunk_size: int | None = None,
) -> Results:
    """Compute ``analyses`` at every checkpoint of ``run`` (or at ``steps``), batched and cached.

    Args:
        run: an open :class:`~grokinterp.store.Run` (it may still be training).
        analyses: names, or a mapping name → parameters of the analysis's factory.
        steps: checkpoint steps to return (default: all of the run's).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        progress: a progress bar per analysis, counting checkpoints.
        force: recompute even what is cached.
        reference: use each analysis's per-checkpoint reference path instead of its batched one
            (for testing; slow).
        chunk_size: checkpoints per batch (default: sized by the analysis's memory per
            checkpoint when it states it, else 8 on a CPU and 64 on a GPU; at most the
            analysis's own limit). Checkpoints are read from disk once for all ``analyses``.

    Returns:
        :class:`Results`: ``"steps"`` and ``"<name>/<key>"`` tensors whose first axis runs over the
        steps, plus per-analysis ``seconds`` and ``computed`` counts.
    """
    specs = _specs(analyses)
    for name in specs:
        reason = ANALYSES[name].applies(run)
        if reason:
            raise GrokinterpError(f"analysis {name!r} does not apply to {run.path}: {reason}")
    all_steps = run.steps
    if not all_steps:
        raise GrokinterpError(f"run {run.path} has no checkpoints")
    steps = list(all_steps if steps is None else steps)
    missing = sorted(set(steps) - set(all_steps))
    if missing:
        raise GrokinterpError(f"run {run.path} has no checkpoint at step(s) {missing[:5]}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise GrokinterpError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
    dev = resolve_device(device)
    models = _Models(run, dev)
    shared = _SharedWeights(run, dev, _shared_budget(dev))
    last = all_steps[-1]

    out = Results(steps=torch.tensor(steps))
    out.steps, out.params, out.seconds, out.computed = steps, {}, {}, {}
    for name, params in specs.items():
        t0 = time.perf_counter()
        out.params[name] = params
        cached = None if force else read_cache(run, name)
        if cached is not None and canonical_json(cached.meta["params"]) != canonical_json(params):
            cached = None
        # Fast path: everything asked for is cached and the run has not moved on since.
        if cached is not None and cached.meta["last_step"] == last:
            rows = cached.rows()
            if all(s in rows for s in steps):
                idx = torch.tensor([rows[s] for s in steps], dtype=torch.long)
                out.update({f"{name}/{k}": v[idx] for k, v in cached.tensors.items()})
                out.seconds[name], out.computed[name] = time.perf_counter() - t0, 0
                continue
        measure = _as_measure(ANALYSES[name].factory(run, **params))
        key = json.loads(canonical_json(dict(measure.key)))
        if cached is not None and canonical_json(cached.meta["key"]) != canonical_json(key):
            cached = None  # e.g. new key frequencies: every row changes
        meta = {"params": params, "key": key, "last_step": last}
        have = set(cached.steps) if cached is not None else set()
        todo = [s for s in steps if s not in have]
        size = chunk_size or _chunk_size(measure, dev)
        with tqdm(
            total=len(todo), desc=f"analyze {name}", unit="ckpt", disable=not progress or not todo
        ) as bar:
            pending: list[tuple[list[int], dict[str, Tensor]]] = []
            written = time.perf_counter()
            try:
                for chunk_steps, rows in _compute(
                    measure, run, todo, models, dev, size, reference, shared
                ):
                    pending.append((chunk_steps, rows))
                    bar.update(len(chunk_steps))
                    if time.perf_counter() - written >= CACHE_WRITE_SECONDS:
                        cached = merge_rows(cached, *concat_rows(pending), meta)
                        write_cache(run, name, cached)  # even a kill keeps what was done
                        pending, written = [], time.perf_counter()
            finally:  # also on Ctrl-C or an error in a later chunk: keep the finished chunks
                if pending:
                    cached = merge_rows(cached, *concat_rows(pending), meta)
                    write_cache(run, name, cached)
        if cached is None:  # nothing to compute and nothing cached: cannot happen with steps
            raise GrokinterpError(f"no checkpoints to analyse in {run.path}")
        if not todo:  # all rows were cached; record that they are valid for this last step
            cached.meta = meta
            write_cache(run, name, cached)
        rows_of = cached.rows()
        idx = torch.tensor([rows_of[s] for s in steps], dtype=torch.long)
        out.update({f"{name}/{k}": v[idx] for k, v in cached.tensors.items()})
        out.seconds[name], out.computed[name] = time.perf_counter() - t0, len(todo)
    return out
