"""Pruning-at-initialization scores: random, SNIP, GraSP, SynFlow.

Every ``*_scores`` function returns ``{parameter name: Tensor}`` (one score per entry of every
floating parameter of the model, keyed as in ``model.named_parameters()``) with the convention
**larger = more important = kept**, so that one top-k routine,
:func:`grokinterp.analysis.tickets.mask_from_scores`, turns any of them into a mask with exact
counts and deterministic ties (default prunable set: weight matrices incl. embedding and
unembedding; biases excluded). :func:`pruning_mask` does both steps.

Minegishi et al. (arXiv 2310.19470) use these as baselines against the grokking ticket (random
scores, SNIP, GraSP, SynFlow, one global threshold) and find all of them worse than the dense
model.

None of these functions modifies the model passed in: gradients are taken with
``torch.autograd.grad`` (``.grad`` fields are untouched) and SynFlow works on a float64 copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grokinterp.analysis.batch import class_logits
from grokinterp.analysis.tickets import (
    Include,
    magnitude_mask,
    mask_from_scores,
    n_removed,
    prunable_names,
)
from grokinterp.config import GrokinterpError

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "random",
    "snip",
    "grasp",
    "synflow",
    "random_scores",
    "snip_scores",
    "grasp_scores",
    "synflow_scores",
    "pruning_mask",
    "METHODS",
]

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")


def _params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    if not isinstance(model, nn.Module):
        raise GrokinterpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ps = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not ps:
        raise GrokinterpError("model has no floating-point parameters to score")
    return ps


def _loss(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn | None, temperature: float = 1.0):
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y) or len(x) == 0:
        raise GrokinterpError("x and y must be non-empty tensors with the same first dimension")
    logits = class_logits(model, x) / temperature
    return (loss_fn or F.cross_entropy)(logits, y)


def random_scores(model: nn.Module | Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """I.i.d. uniform [0, 1) scores (random pruning), seeded, drawn in sorted-name order."""
    items = (
        sorted((k, v) for k, v in model.items() if v.is_floating_point())
        if isinstance(model, Mapping)
        else sorted(_params(model), key=lambda t: t[0])
    )
    gen = torch.Generator().manual_seed(int(seed))
    return {
        k: torch.rand(v.shape, generator=gen, dtype=torch.float64).to(v.device) for k, v in items
    }


def snip_scores(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn | None = None
) -> dict[str, Tensor]:
    """SNIP connection sensitivity |∂L/∂θ ⊙ θ| (Lee, Ajanthan & Torr 2019, "SNIP: Single-shot
    Network Pruning based on Connection Sensitivity").

    The paper's sensitivity is |∂L(c⊙θ)/∂c| at c = 1, which equals |g⊙θ| with g = ∂L/∂θ on the
    batch (x, y); the paper divides by the sum over all weights, which does not change the
    ranking and is omitted here. ``loss_fn(logits, y)`` defaults to cross-entropy.
    """
    ps = _params(model)
    loss = _loss(model, x, y, loss_fn)
    grads = torch.autograd.grad(loss, [p for _, p in ps], allow_unused=True)
    return {
        n: (torch.zeros_like(p) if g is None else (g * p).abs()).detach()
        for (n, p), g in zip(ps, grads, strict=True)
    }


def grasp_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn | None = None,
    temperature: float = 1.0,
    paper_sign: bool = False,
) -> dict[str, Tensor]:
    """GraSP, gradient-signal preservation (Wang, Zhang & Grosse 2020, "Picking Winning Tickets
    Before Training by Preserving Gradient Flow").

    With g = ∇L and H the Hessian of the loss on (x, y), the paper scores each weight by
    S(−θ) = −θ ⊙ Hg: the gradient flow is ΔL(θ) = gᵀg, removing weight q is the perturbation
    δ = −θ_q·e_q, and ΔL(θ + δ) − ΔL(θ) = 2δᵀHg + O(‖δ‖²) (the factor 2 dropped). A large S
    means removing the weight reduces gradient flow least, so the paper **removes the weights
    with the largest S** (Algorithm 1 keeps S(−θ) below a percentile; the authors' code keeps
    ``score <= threshold``).
    To fit the "larger = kept" convention of this module the default return value is the
    negation, θ ⊙ Hg; ``paper_sign=True`` returns the paper's S(−θ) = −θ ⊙ Hg instead (then
    *smaller* = kept; do not pass those to ``mask_from_scores``).

    Hg is the Hessian-gradient product ∂(gᵀ·∇L)/∂θ with g held constant (double backward).
    ``temperature`` divides the logits before the loss; the paper's formula has none (1.0), the
    authors' code uses 200 for CIFAR/ImageNet.
    """
    if temperature <= 0:
        raise GrokinterpError(f"temperature must be > 0, got {temperature}")
    ps = _params(model)
    tensors = [p for _, p in ps]
    loss = _loss(model, x, y, loss_fn, temperature)
    g = torch.autograd.grad(loss, tensors, allow_unused=True)
    g = [
        torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(tensors, g, strict=True)
    ]
    loss = _loss(model, x, y, loss_fn, temperature)
    grad_f = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    z = sum((gi * gf).sum() for gi, gf in zip(g, grad_f, strict=True) if gf is not None)
    if not isinstance(z, Tensor) or not z.requires_grad:
        hg = [torch.zeros_like(p) for p in tensors]
    else:
        hg = torch.autograd.grad(z, tensors, allow_unused=True)
        hg = [torch.zeros_like(p) if h is None else h for p, h in zip(tensors, hg, strict=True)]
    sign = -1.0 if paper_sign else 1.0
    return {n: (sign * p * h).detach() for (n, p), h in zip(ps, hg, strict=True)}


def _synflow_input(model: nn.Module, x: Tensor) -> tuple[Tensor, list]:
    """The all-ones input of SynFlow, plus forward hooks for token models (see synflow_scores)."""
    if not isinstance(x, Tensor) or x.ndim < 1 or len(x) == 0:
        raise GrokinterpError("x must be a non-empty example batch (only its shape is used)")
    if x.is_floating_point():
        return torch.ones_like(x[:1], dtype=torch.float64), []
    embed = getattr(model, "embed", None)
    has_table = embed is not None and (hasattr(embed, "weight") or hasattr(embed, "W_E"))
    if not has_table or "hook_embed" not in getattr(model, "hook_dict", {}):
        raise GrokinterpError(
            "token input needs a model with an `embed` module (W_E) and a `hook_embed` hook point"
        )

    def all_ones_embedding(act: Tensor, hook) -> Tensor:
        # One-hot token → all-ones vocabulary vector: each position's embedding is 1ᵀ|W_E|.
        # `embed.weight` is A·B for a factorized embedding, so both factors get gradients.
        w_e = embed.weight if hasattr(embed, "weight") else embed.W_E
        row = torch.ones(w_e.shape[0], dtype=w_e.dtype, device=w_e.device) @ w_e
        return row.expand(act.shape)

    return x[:1].clone(), [("hook_embed", all_ones_embedding)]


def synflow_scores(
    model: nn.Module,
    x: Tensor,
    sparsity: float,
    rounds: int = 100,
    scope: str = "global",
    include: Include = None,
) -> dict[str, Tensor]:
    """Iterative SynFlow (Tanaka, Kunin, Yamins & Ganguli 2020, "Pruning neural networks without
    any data by iteratively conserving synaptic flow").

    Data-free. On a float64 copy of the model every parameter is replaced by its absolute value
    |θ| ("linearization"), the network is evaluated on a single all-ones input, and
    R = Σ (all outputs); the score of a weight is |θ ⊙ ∂R/∂θ|. This is repeated for ``rounds``
    rounds with the exponential schedule of the paper: after round k = 1..n the kept fraction
    is (1 − sparsity)^(k/n), and weights pruned so far are zeroed for the next round.

    Token models (integer ``x``): a one-hot token becomes the all-ones vector over the
    vocabulary, i.e. the output of ``hook_embed`` at **every** position is replaced by
    1ᵀ|W_E| (the sum of all rows of |W_E|, including the ``=`` token's row; for a factorized
    embedding 1ᵀ|A||B|). Positional embeddings, if any, keep their normal per-position rows
    (|W_pos|). Vector models get ``torch.ones`` of one input row. Only ``x``'s shape is used.

    Returns the scores of the last round, with the weights pruned in earlier rounds set to
    ``-inf``, so that ``mask_from_scores(scores, sparsity, scope, include)`` reproduces the
    iterative mask exactly. ``rounds=1`` is single-shot SynFlow (no ``-inf``). Parameters outside
    the prunable set are never masked but are linearized like the rest.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise GrokinterpError(f"rounds must be an integer ≥ 1, got {rounds!r}")
    density = 1.0 - float(sparsity)
    n_removed(sparsity, 1)  # validates sparsity
    net = copy.deepcopy(model).to(torch.float64)
    net.eval()
    ps = _params(net)
    names = [n for n, _ in ps]
    prunable = set(prunable_names(dict(ps), include))

    def in_prunable(name: str, _t: Tensor) -> bool:
        return name in prunable

    with torch.no_grad():
        abs0 = {n: p.abs().clone() for n, p in ps}
    mask = {n: torch.ones_like(abs0[n], dtype=torch.bool) for n in prunable}
    inp, hooks = _synflow_input(net, x)
    scores: dict[str, Tensor] = {}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n, p in ps:
                p.copy_(abs0[n] * mask[n] if n in mask else abs0[n])
        out = class_logits(net, inp, fwd_hooks=hooks)
        r = out.sum()
        grads = torch.autograd.grad(r, [p for _, p in ps], allow_unused=True)
        scores = {}
        for (n, p), g in zip(ps, grads, strict=True):
            s = torch.zeros_like(p) if g is None else (g * p).abs().detach()
            if n in mask:
                s = torch.where(mask[n], s, torch.full_like(s, float("-inf")))
            scores[n] = s
        target = 1.0 - density ** (k / rounds) if k < rounds else float(sparsity)
        mask = mask_from_scores(scores, target, scope, include=in_prunable)
    dev = {n: p.device for n, p in model.named_parameters()}
    return {n: scores[n].to(dev[n]) for n in names}


def pruning_mask(
    method: str,
    model: nn.Module,
    x: Tensor | None = None,
    y: Tensor | None = None,
    sparsity: float = 0.6,
    scope: str = "global",
    include: Include = None,
    seed: int = 0,
    rounds: int = 100,
    loss_fn: LossFn | None = None,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Mask of a pruning-at-initialization criterion: scores, then the shared top-k.

    ``method``: ``"magnitude"`` (|θ| of the model's current weights), ``"random"``, ``"snip"``,
    ``"grasp"``, ``"synflow"``. SNIP and GraSP need (x, y); SynFlow needs x for its shape.
    """
    if method not in METHODS:
        raise GrokinterpError(f"method={method!r} is not valid; allowed: {', '.join(METHODS)}")
    if method == "magnitude":
        return magnitude_mask(dict(model.named_parameters()), sparsity, scope, include)
    if method == "random":
        scores = random_scores(model, seed)
    elif method == "synflow":
        if x is None:
            raise GrokinterpError("method 'synflow' needs x (an example input batch)")
        scores = synflow_scores(model, x, sparsity, rounds, scope, include)
    else:
        if x is None or y is None:
            raise GrokinterpError(f"method {method!r} needs x and y (a batch of training data)")
        if method == "snip":
            scores = snip_scores(model, x, y, loss_fn)
        else:
            scores = grasp_scores(model, x, y, loss_fn, temperature)
    return mask_from_scores(scores, sparsity, scope, include)


# Short names of DESIGN §5 ("analysis.pruning: random, snip, grasp, synflow scores").
random = random_scores
snip = snip_scores
grasp = grasp_scores
synflow = synflow_scores
