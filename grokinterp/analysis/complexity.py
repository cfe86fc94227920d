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
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from grokinterp.config import GrokinterpError

# Fallback set of nonlinearity modules; grokinterp.models.ACTIVATION_TYPES is added to it so that
# any activation class the models gain later is found as well.
_BASE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
)


def _activation_types() -> tuple[type[nn.Module], ...]:
    try:
        from grokinterp.models import ACTIVATION_TYPES
    except ImportError:  # models layer not importable: the torch classes are enough
        return _BASE_ACTIVATIONS
    return tuple(dict.fromkeys((*ACTIVATION_TYPES, *_BASE_ACTIVATIONS)))


ACTIVATION_TYPES: tuple[type[nn.Module], ...] = _activation_types()

# Vertex rows per forward pass when chunk_size is None (measured fastest on CPU: 1-4k rows).
AUTO_ROWS = 2048


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
