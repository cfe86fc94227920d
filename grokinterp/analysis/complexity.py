"""Local complexity of a network's input-space partition.

Humayun, Balestriero, Baraniuk 2024, "Deep Networks Always Grok and Here is Why" (ICML 2024).

A piecewise-linear network (ReLU, leaky ReLU, ...) partitions its input space into linear regions;
each neuron contributes the hyperplane-like set where its pre-activation is zero. The *local
complexity* (LC) at a point ``x`` counts how many of those neuron boundaries pass through a small
neighbourhood of ``x``. Following the paper, the neighbourhood is the cross-polytope with the
``2P`` vertices ``x ± r·v_j`` for a random orthonormal frame ``v_1..v_P``; a neuron counts when
the sign of its pre-activation is not the same at all ``2P`` vertices; counts are summed over
layers (per-layer counts are also available). The paper tracks the average LC over training
points, test points and random points of the input domain: it descends, ascends until the training
set is fitted, then descends a second time ("region migration") while the network groks.

The pre-activations are read with forward-pre hooks on every activation module (any instance of
:data:`ACTIVATION_TYPES`), so this works on any ``nn.Module`` built from activation modules —
not only on grokinterp models.

Registered as the ``complexity`` analysis (:func:`make_complexity`). Over many checkpoints,
:func:`crossing_counts` (vectorisable with ``torch.func.vmap``) counts the crossings of a chunk of
samples; its forward pass stops at the last activation, since nothing after it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import complexity_phases
from grokinterp.analysis.inputs import domain_points, model_inputs, sample_split
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "ACTIVATION_TYPES",
    "SETS",
    "activation_calls",
    "activation_modules",
    "complexity_applies",
    "complexity_summary",
    "crossing_counts",
    "dead_counts",
    "dead_neurons",
    "local_complexity",
    "local_complexity_per_layer",
    "make_complexity",
    "orthonormal_frame",
    "preactivation_hooks",
]

# torch's activation classes, so that any nn.Module built from activation modules (not only
# grokinterp's models) is understood. They include every class of grokinterp.models.ACTIVATIONS
# (tests/test_fast_start.py checks it); that module is not imported here because it imports
# TransformerLens, which a report read from the cache must not wait for.
_TORCH_ACTIVATIONS = "ReLU ReLU6 LeakyReLU PReLU RReLU GELU SiLU Mish ELU CELU SELU Softplus Tanh"
_TORCH_ACTIVATIONS += " Sigmoid Hardtanh Hardswish Hardsigmoid"
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, n) for n in _TORCH_ACTIVATIONS.split()
)

# Vertex rows per forward pass when chunk_size is None (measured fastest on CPU: 1-4k rows).
AUTO_ROWS = 2048
SETS = ("train", "test", "random")


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every activation module of ``model``, in registration order.

    Raises :class:`GrokinterpError` if there is none (local complexity would be meaningless).
    """
    if not isinstance(model, nn.Module):
        raise GrokinterpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    if not mods:
        raise GrokinterpError(
            "model has no activation module (nn.ReLU, nn.GELU, ...); local complexity and layer "
            "features need nonlinearities written as modules"
        )
    return mods


@contextmanager
def preactivation_hooks(model: nn.Module, fn: Callable[[str, Tensor], None]):
    """Call ``fn(name, pre_activation)`` on the input of every activation module during forward.

    A module called several times in one forward pass (a shared ``nn.ReLU``) reports each call
    under ``name``, ``name#1``, ``name#2``, ... so that every call is its own layer. The context
    yields the per-name call counter; clear it between forward passes.
    """
    calls: dict[str, int] = {}
    handles = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            k = calls.get(name, 0)
            calls[name] = k + 1
            fn(name if k == 0 else f"{name}#{k}", args[0])

        return hook

    try:
        for name, mod in activation_modules(model):
            handles.append(mod.register_forward_pre_hook(make(name)))
        yield calls
    finally:
        for h in handles:
            h.remove()


def orthonormal_frame(
    dim: int, n_directions: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """A random orthonormal frame: ``Tensor[P, dim]`` whose rows are orthonormal.

    ``P = n_directions`` (``dim`` if None). The frame is Haar-distributed (QR of a Gaussian matrix
    with the signs of R's diagonal folded into Q) and depends only on ``(dim, P, seed)``.
    """
    if not isinstance(dim, int) or dim < 1:
        raise GrokinterpError(f"dim must be an integer ≥ 1, got {dim!r}")
    p = dim if n_directions is None else n_directions
    if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= dim:
        raise GrokinterpError(
            f"n_directions must be an integer in [1, {dim}] (the input dimension) or None, got {p!r}"
        )
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(dim, p, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)  # q: [dim, P]
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).T.contiguous().to(dtype)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _find_hook_point(model: nn.Module, name: str) -> nn.Module | None:
    return dict(model.named_modules()).get(name)


def _check_radius(radius: float) -> float:
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise GrokinterpError(f"radius must be a positive number, got {radius!r}") from None
    if not (r > 0 and r < float("inf")):
        raise GrokinterpError(f"radius must be a positive finite number, got {radius!r}")
    return r


def local_complexity_per_layer(
    model: nn.Module,
    x: Tensor,
    radius: float,
    n_directions: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    embed_hook: str = "hook_embed",
) -> dict[str, Tensor]:
    """Per-layer local complexity: ``{activation module name: LongTensor[n]}``.

    Definition (Humayun, Balestriero, Baraniuk 2024, §3): for each sample ``x_i`` and the ``2P``
    vertices ``x_i ± radius·v_j`` of the cross-polytope spanned by a random orthonormal frame
    ``v_1..v_P`` (:func:`orthonormal_frame`, the same frame for every sample), count the neurons
    of the layer whose pre-activation ``z`` has a non-constant sign over the vertices, i.e. some
    vertex has ``z > 0`` and some has ``z ≤ 0``. All ``n·2P`` vertices go through the model in
    batched forward passes — never one pass per vertex — of ``chunk_size`` samples each (all
    their vertices together; default: as many samples as make about ``AUTO_ROWS`` = 2048 vertex
    rows, which keeps activations in cache and is ~2x faster on CPU than one giant pass; pass
    ``chunk_size=len(x)`` for a single forward pass), in
    evaluation mode and without gradients; counts are reduced inside the hooks so the activations
    are never stored.

    Inputs:
      * vector models: ``x`` is a float ``Tensor[n, D]`` (or ``[n, ...]``, flattened to D) and the
        neighbourhood lives in input space; ``P ≤ D``, default ``P = D``.
      * token models (integer ``x``, e.g. ``[n, 3]`` modular-arithmetic tokens): the neighbourhood
        lives in **embedding space**. The output of the TransformerLens hook point
        ``embed_hook`` (default ``hook_embed``, shape ``[batch, T, d]``) is perturbed, all
        positions concatenated into one vector of dimension ``D = T·d``; ``P ≤ T·d``, default
        ``P = T·d``. The model must have that hook point (any ``HookedRootModule`` from
        :mod:`grokinterp.models` does).

    A neuron appearing in several positions (transformer MLPs) counts once per position.
    """
    r = _check_radius(radius)
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise GrokinterpError("x must be a tensor [n, D] with n ≥ 1 samples")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise GrokinterpError(f"chunk_size must be an integer ≥ 1 or None, got {chunk_size!r}")
    tokens = not x.is_floating_point()
    dtype = _float_dtype(model)
    n = x.shape[0]

    if tokens:
        hook_point = _find_hook_point(model, embed_hook)
        if hook_point is None:
            raise GrokinterpError(
                f"integer (token) input needs the model to have hook point {embed_hook!r}; "
                "pass float inputs for vector models"
            )
        frame_holder: dict[str, Tensor] = {}
    else:
        if not torch.isfinite(x).all():
            raise GrokinterpError("x must be finite")
        dim = int(x[0].numel())
        frame = orthonormal_frame(dim, n_directions, seed, dtype=torch.float64)
        n_vert = 2 * frame.shape[0]
        offsets = (torch.cat([frame, -frame]) * r).to(dtype=dtype, device=x.device)  # [2P, D]

    results: dict[str, list[Tensor]] = {}

    def count(name: str, pre: Tensor) -> None:
        b = pre.shape[0]
        if b % n_vert:
            raise GrokinterpError(
                f"activation {name!r} got a batch of {b} rows, not a multiple of the {n_vert} "
                "vertices: its input must be batch-first"
            )
        z = pre.detach().reshape(b // n_vert, n_vert, -1)
        # Some vertex has z > 0 and some has z ≤ 0 (separate amax/amin: fastest on CPU).
        crossed = (z.amax(dim=1) > 0) & (z.amin(dim=1) <= 0)  # [samples, neurons]
        results.setdefault(name, []).append(crossed.sum(dim=-1))

    def perturb_embedding(out: Tensor) -> Tensor:
        b = out.shape[0]
        flat = out.reshape(b // n_vert, n_vert, -1)
        key = "offsets"
        if key not in frame_holder or frame_holder[key].shape[-1] != flat.shape[-1]:
            fr = orthonormal_frame(flat.shape[-1], n_directions, seed, dtype=torch.float64)
            frame_holder[key] = (torch.cat([fr, -fr]) * r).to(dtype=out.dtype, device=out.device)
        return (flat + frame_holder[key]).reshape(out.shape)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if tokens:
                # The embedding width is only known from the model: one probe forward (before the
                # counting hooks exist) reads it.
                probe: dict[str, int] = {}
                h = hook_point.register_forward_hook(
                    lambda mod, args, out: probe.__setitem__("dim", int(out[0].numel()))
                )
                try:
                    model(x[:1])
                finally:
                    h.remove()
                if "dim" not in probe:
                    raise GrokinterpError(f"hook point {embed_hook!r} was not called by forward")
                n_vert = 2 * orthonormal_frame(probe["dim"], n_directions, seed).shape[0]
                chunk = chunk_size or max(1, AUTO_ROWS // n_vert)
                handle = hook_point.register_forward_hook(
                    lambda mod, args, out: perturb_embedding(out)
                )
                try:
                    with preactivation_hooks(model, count) as calls:
                        for start in range(0, n, chunk):
                            calls.clear()  # each chunk's forward numbers its layers afresh
                            model(x[start : start + chunk].repeat_interleave(n_vert, dim=0))
                finally:
                    handle.remove()
            else:
                flat_x = x.reshape(n, -1).to(dtype)
                chunk = chunk_size or max(1, AUTO_ROWS // n_vert)
                with preactivation_hooks(model, count) as calls:
                    for start in range(0, n, chunk):
                        calls.clear()  # each chunk's forward numbers its layers afresh
                        verts = flat_x[start : start + chunk, None, :] + offsets[None]  # [c, 2P, D]
                        model(verts.reshape(-1, *x.shape[1:]))
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in results.items()}


def local_complexity(
    model: nn.Module,
    x: Tensor,
    radius: float,
    n_directions: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """Local complexity per sample, summed over all layers: ``LongTensor[n]``.

    Humayun, Balestriero, Baraniuk 2024: the number of neurons (inputs of the model's activation
    modules, all layers) whose pre-activation changes sign over the ``2·P`` vertices
    ``x ± radius·v_j`` of a random orthonormal cross-polytope. See
    :func:`local_complexity_per_layer` for the exact definition, token models (the neighbourhood
    is then in embedding space, around the output of ``hook_embed``) and ``chunk_size``.
    """
    per_layer = local_complexity_per_layer(model, x, radius, n_directions, seed, chunk_size)
    return torch.stack(list(per_layer.values())).sum(dim=0)


def dead_neurons(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per activation module, the number of neurons whose pre-activation is ≤ 0 on every sample
    of ``x`` (and every position, for sequence models): dead ReLUs, which draw no region boundary
    through the data. A diagnostic for a collapse of local complexity."""
    out: dict[str, Tensor] = {}

    def grab(name: str, pre: Tensor) -> None:
        alive = (pre.detach().reshape(-1, pre.shape[-1]) > 0).any(dim=0)
        out[name] = (~alive).sum()

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), preactivation_hooks(model, grab):
            model(x)
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# Many checkpoints at once: vectorisable counts, stopped at the last activation
# ---------------------------------------------------------------------------------------------


class _PastLastActivation(Exception):
    """Raised by the hook of the last activation call: the rest of the forward is never read."""


def activation_calls(model: nn.Module, x: Tensor) -> list[str]:
    """The pre-activation calls of one forward pass of ``x`` (a probe: one sample is enough),
    in order, named as :func:`preactivation_hooks` names them."""
    names: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), preactivation_hooks(model, lambda name, pre: names.append(name)):
            model(x)
    finally:
        model.train(was_training)
    return names


def _until_last_activation(
    model: nn.Module, x: Tensor, fn: Callable[[str, Tensor], None], n_calls: int
) -> None:
    """``model(x)`` with ``fn(name, pre_activation)`` at every activation call, cut short by an
    exception right after the ``n_calls``-th (the last one, :func:`activation_calls`): the layers
    after it — output projections, unembedding — are not computed. The exception is raised and
    caught inside this function, so it also works under ``torch.func.vmap``."""
    seen = 0

    def visit(name: str, pre: Tensor) -> None:
        nonlocal seen
        fn(name, pre)
        seen += 1
        if seen == n_calls:
            raise _PastLastActivation

    try:
        with preactivation_hooks(model, visit):
            model(x)
    except _PastLastActivation:
        return
    raise GrokinterpError(f"the forward pass made {seen} activation calls, not {n_calls}")


def crossing_counts(
    model: nn.Module, x: Tensor, offsets: Tensor, n_calls: int, embed_hook: str = "hook_embed"
) -> Tensor:
    """Per sample and activation call, the number of neurons whose pre-activation changes sign
    over the vertices of the sample's cross-polytope: ``LongTensor[n, n_calls]``.

    The same count as :func:`local_complexity_per_layer` (columns in its key order), for the
    vertices ``x_i + offsets_k`` with ``offsets [2P, D]`` (``± radius·v_j``) added to the flattened
    input (float ``x``) or to the flattened output of ``embed_hook`` (token ``x``). One forward pass
    of all ``n·2P`` vertices, stopped after the last of the ``n_calls`` activation calls; no
    data-dependent shapes, so it runs under ``torch.func.vmap`` (many checkpoints at once).
    The model should be in eval mode, under ``no_grad``.
    """
    n_vert = offsets.shape[0]
    counts: list[Tensor] = []

    def count(name: str, pre: Tensor) -> None:
        z = pre.reshape(pre.shape[0] // n_vert, n_vert, -1)
        counts.append(((z.amax(dim=1) > 0) & (z.amin(dim=1) <= 0)).sum(dim=-1))

    if x.is_floating_point():
        verts = x.reshape(len(x), 1, -1) + offsets  # [n, 2P, D]
        _until_last_activation(model, verts.reshape(-1, *x.shape[1:]), count, n_calls)
    else:
        hook_point = dict(model.named_modules())[embed_hook]

        def perturb(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            return (out.reshape(len(x), n_vert, -1) + offsets).reshape(out.shape)

        handle = hook_point.register_forward_hook(perturb)
        try:
            _until_last_activation(model, x.repeat_interleave(n_vert, dim=0), count, n_calls)
        finally:
            handle.remove()
    return torch.stack(counts, dim=-1)


def dead_counts(model: nn.Module, x: Tensor, n_calls: int) -> Tensor:
    """:func:`dead_neurons` as ``LongTensor[n_calls]`` (same order), stopped at the last
    activation call; runs under ``torch.func.vmap``."""
    dead: list[Tensor] = []

    def grab(name: str, pre: Tensor) -> None:
        dead.append((pre.reshape(-1, pre.shape[-1]) > 0).any(dim=0).logical_not().sum())

    _until_last_activation(model, x, grab, n_calls)
    return torch.stack(dead)


# ---------------------------------------------------------------------------------------------
# The ``complexity`` analysis
# ---------------------------------------------------------------------------------------------

# Vertex rows per forward pass when chunk_size is None, over all checkpoints of a batch, on a GPU:
# one vmapped forward (larger batches measured no faster on an H200, and cost memory).
GPU_ROWS = 1 << 18


def complexity_applies(run: Any) -> str | None:
    """None if ``complexity`` applies: a checkpoint and hidden layers (every grokinterp model has
    activation modules, and its token models a ``hook_embed``, where the neighbourhood lives; a
    model without them fails with a clear error when analysed). Decided from the config: instant."""
    if not run.steps:
        return "the run has no checkpoint"
    if run.config.model.n_layers < 1:
        return "the model has no hidden layer, hence no activation module"
    return None


def _step0_embedding(run: Any, x: Tensor) -> Tensor:
    """Output of ``hook_embed`` at step 0 for tokens ``x``, flattened to ``[n, T·d]``."""
    model = run.model(run.steps[0])
    hook_point = dict(model.named_modules()).get("hook_embed")
    if hook_point is None:
        raise GrokinterpError(
            "token model without a hook_embed hook point (the neighbourhood lives there)"
        )
    captured = {}
    hook = hook_point.register_forward_hook(lambda m, a, o: captured.__setitem__("e", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return captured["e"].reshape(len(x), -1)


def _neighbourhood_dim(run: Any, task: Any) -> int:
    if task.input_kind == "vector":
        return int(task.x_train[0].numel())
    return int(_step0_embedding(run, task.x_train[:1]).shape[1])


def _default_radius(run: Any, x: Tensor, rel: float) -> float:
    """``rel`` × the median L2 norm of the (step-0 embedded, for tokens) training points."""
    flat = x.reshape(len(x), -1) if x.is_floating_point() else _step0_embedding(run, x)
    return float(rel * flat.norm(dim=1).median())


def complexity_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """Per set (``sets``, in :data:`SETS` order) the phases of its mean local complexity
    (:func:`~grokinterp.analysis.curves.complexity_phases`): ``<name>`` lists such as
    ``peak_step`` or ``second_descent`` with one entry per set."""
    sets = [s for s in SETS if f"{s}/mean" in results]
    phases = [complexity_phases(run.steps, results[f"{s}/mean"]) for s in sets]
    out: dict[str, Any] = {"sets": sets}
    for key in phases[0] if phases else ():
        out[key] = [ph[key] for ph in phases]
    return out


@register_analysis("complexity", applies=complexity_applies, summarize=complexity_summary)
def make_complexity(
    run: Any,
    radius: float | None = None,
    relative_radius: float = 0.05,
    n_directions: int | None = 25,
    n_samples: int | None = 128,
    sets: Sequence[str] = SETS,
    seed: int = 0,
    chunk_size: int | None = None,
) -> Measure:
    """Local complexity (Humayun et al. 2024) on train, test and random domain points.

    At every checkpoint, :func:`~grokinterp.analysis.complexity.local_complexity_per_layer` with a
    cross-polytope of ``n_directions`` (paper: 25; capped at the input dimension) random
    orthonormal directions and ``radius`` (default: ``relative_radius`` × the median norm of the
    training inputs — for token models of their step-0 embeddings, since the neighbourhood then
    lives in embedding space), on fixed seeded samples of ``n_samples`` points per set (the
    paper averages over 1000 points; 128 keep the standard error of the mean LC under 1 on the
    demo run, whose descent is ~31 and ascent ~4-5, while the 50 vertices of 384 points per
    checkpoint fit the CPU budget). Keys, per
    set ``s`` in ``sets``: ``s/mean`` (average over samples of the sum over layers), ``s/per_layer``
    ``[n_layers]`` (layer order of the activation modules), ``s/per_sample`` ``[n]``,
    ``s/dead_per_layer`` ``[n_layers]`` (neurons inactive on every point of the set: dead ReLUs
    draw no boundary, so a collapse of LC everywhere — random points included — that comes with
    them is neuron death, not region migration); and ``radius``. ``chunk_size``: samples per
    forward pass (default: automatic).
    """
    task = run.task()
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise GrokinterpError(f"sets must be a non-empty subset of {SETS}, got {list(sets)!r}")
    inputs = {}
    for s in sets:
        if s == "random":
            n = n_samples if n_samples is not None else len(task.y_test)
            inputs[s] = domain_points(task, n, seed + 1)
        else:
            inputs[s] = sample_split(task, s, n_samples, seed)[0]
    r = radius if radius is not None else _default_radius(run, task.x_train, relative_radius)
    # P is capped at the dimension of the neighbourhood: the input, or for token models the
    # concatenated embedding (known only from the model).
    dim = _neighbourhood_dim(run, task)
    n_directions = dim if n_directions is None else min(n_directions, dim)

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        out = {"radius": torch.tensor(float(r))}
        for s, x in inputs.items():
            per = local_complexity_per_layer(
                model, model_inputs(x, model), r, n_directions, seed, chunk_size=chunk_size
            )
            stacked = torch.stack(list(per.values()), dim=1).to(torch.float64)  # [n, L]
            out[f"{s}/mean"] = stacked.sum(dim=1).mean()
            out[f"{s}/per_layer"] = stacked.mean(dim=0)
            out[f"{s}/per_sample"] = stacked.sum(dim=1).to(torch.int32)
            dead = dead_neurons(model, model_inputs(x, model))
            out[f"{s}/dead_per_layer"] = torch.stack(list(dead.values()))
        return out

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        model = batch.model
        x_all = model_inputs(torch.cat(list(inputs.values())), model)  # every set's samples
        n_calls = len(activation_calls(model, x_all[:1]))
        frame = orthonormal_frame(dim, n_directions, seed, dtype=torch.float64)
        # the reference's vertices, bit for bit: ±radius·v_j in float64, then in the model's dtype
        offsets = (torch.cat([frame, -frame]) * _check_radius(r)).to(
            dtype=_float_dtype(model), device=batch.device
        )
        # On a GPU, vmap over the checkpoints. On a CPU this forward-bound measure gains nothing
        # from vmap (measured: the time of a loop at equal rows per checkpoint, and slower once
        # the batch leaves the cache), so checkpoints are looped with AUTO_ROWS rows per forward.
        vectorize = batch.device.type != "cpu"
        rows = GPU_ROWS // len(batch) if vectorize else AUTO_ROWS
        per_call = chunk_size or max(1, rows // len(offsets))
        count = partial(crossing_counts, offsets=offsets, n_calls=n_calls)
        counts = torch.cat(  # [C, samples of all sets, L]
            [
                batch.apply(count, x_all[i : i + per_call], vectorize=vectorize)
                for i in range(0, len(x_all), per_call)
            ],
            dim=1,
        )
        out = {"radius": torch.full((len(batch),), float(r))}
        start = 0
        for s, x in inputs.items():
            c = counts[:, start : start + len(x)].to(torch.float64)  # [C, n, L]
            start += len(x)
            out[f"{s}/mean"] = c.sum(dim=2).mean(dim=1)
            out[f"{s}/per_layer"] = c.mean(dim=1)
            out[f"{s}/per_sample"] = c.sum(dim=2).to(torch.int32)
            xs = model_inputs(x, model)
            dead = partial(dead_counts, n_calls=n_calls)
            out[f"{s}/dead_per_layer"] = batch.apply(dead, xs, vectorize=vectorize)
        return out

    key = {
        "radius": float(r),
        "n_directions": n_directions,
        "n_points": [len(x) for x in inputs.values()],
    }
    return Measure(at_step=at_step, at_steps=at_steps, key=key)
