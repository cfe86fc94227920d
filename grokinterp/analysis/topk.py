"""The smallest top-k subnetwork that reproduces a model (Merrill, Tsilivis, Shukla 2023).

Merrill et al.'s sparse subnetwork of an MLP layer is the smallest set of top-k neurons (by the
norm of their incoming weights) whose subnetwork — the other neurons of the layer ablated —
reproduces the full model's train accuracy. :func:`grokinterp.analysis.norms.smallest_reproducing_topk`
searches ``k`` for one model (the reference); :func:`batched_topk` does the same search for a chunk of checkpoints
at once, several candidate ``k`` per forward pass, and returns the reference's ``k`` exactly.

A model at chance has no sparse subnetwork to speak of: every subnetwork, the empty one included,
"reproduces" chance accuracy; ``k`` is then ``CHANCE_K = -1`` (undefined).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import vmap

from grokinterp.analysis.batch import class_logits, last_position_only, map_checkpoints
from grokinterp.config import GrokinterpError

__all__ = [
    "CHANCE_K",
    "ablated_accuracy",
    "batched_topk",
    "chance_accuracy",
]

CHANCE_K = -1  # the smallest reproducing top-k of a model at chance: undefined
CHANCE_SE = 3.0  # standard errors above the best constant prediction still counted as chance


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=-1) == y).to(torch.float64).mean())


def chance_accuracy(y: Tensor, n_se: float = CHANCE_SE) -> float:
    """The highest accuracy on labels ``y`` that is still *at chance*: that of the best constant
    prediction (the most common label's frequency ``c``, what a model that ignores its input
    reaches) plus ``n_se`` binomial standard errors ``√(c(1−c)/n)`` — an accuracy within that
    margin is not evidence that the model uses its input."""
    if not isinstance(y, Tensor) or y.ndim != 1 or len(y) == 0:
        raise GrokinterpError("y must be a non-empty 1-D tensor of labels")
    c = int(torch.unique(y.cpu(), return_counts=True)[1].max()) / len(y)
    return c + n_se * math.sqrt(c * (1 - c) / len(y))


def ablated_accuracy(model: nn.Module, x: Tensor, y: Tensor, layer: int, keep: Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)`` with the neurons of MLP ``layer`` outside ``keep``
    removed (their activation zeroed at ``blocks.{layer}.mlp.hook_post``, which removes their
    outgoing contribution)."""
    name = f"blocks.{layer}.mlp.hook_post"
    if name not in dict(model.named_modules()):
        raise GrokinterpError(f"model has no hook point {name!r}")
    p = next(model.parameters())
    keep_f = keep.to(device=p.device, dtype=p.dtype)

    def ablate(act: Tensor, hook=None) -> Tensor:
        return act * keep_f

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = class_logits(model, x, fwd_hooks=[(name, ablate)])
    finally:
        model.train(was_training)
    return _accuracy(logits, y.to(logits.device))


# ---------------------------------------------------------------------------------------------
# Batched top-k search: many checkpoints, several candidate k per forward pass
# ---------------------------------------------------------------------------------------------

# Levels of the binary search evaluated per forward pass, by device: 2**levels − 1 candidate k
# at once (plus the full and the empty subnetwork in the first pass). More levels mean fewer
# passes (each recomputes the model up to the ablated layer) but twice the masked work per extra
# level. Measured on the demo run (2-core CPU: one pass ≈ 2.5 masked evaluations, 2 levels the
# fastest) and nanda2023 (H200: 418 checkpoints in 0.94 s with 3 levels, 1.13 s with 4 or 5).
LEVELS = {"cpu": 2, "cuda": 3}
# Bytes of masked activations ([checkpoints, candidates, points, d_mlp]) per forward pass.
_MEMORY = {"cpu": 256 << 20, "cuda": 8 << 30}


def _subtree(lo: int, hi: int, levels: int) -> list[int]:
    """The midpoints the binary search of :func:`smallest_reproducing_topk` may probe in its next
    ``levels`` steps from the interval ``(lo, hi)``, whatever the outcomes."""
    out, frontier = [], [(lo, hi)]
    for _ in range(levels):
        nxt = []
        for a, b in frontier:
            if b - a > 1:
                mid = (a + b) // 2
                out.append(mid)
                nxt += [(a, mid), (mid, b)]
        frontier = nxt
    return out


class _Search:
    """The search of :func:`smallest_reproducing_topk` for one checkpoint, replayed on a table of
    accuracies ``acc[k]``; :meth:`needs` says which k to evaluate next ([] once ``k`` is known)."""

    def __init__(self, d: int, search: str, tol: float, chance: float, levels: int):
        # chance: the highest full accuracy still at chance (chance_accuracy)
        self.d, self.search, self.tol, self.chance, self.levels = d, search, tol, chance, levels
        self.acc: dict[int, float] = {}
        self.k: int | None = None

    def _ahead(self, start: int) -> list[int]:
        return list(range(start, min(start + 2**self.levels - 1, self.d + 1)))

    def needs(self) -> list[int]:
        d, acc = self.d, self.acc
        if d not in acc or 0 not in acc:
            first = _subtree(0, d, self.levels) if self.search == "binary" else self._ahead(0)
            return [d, 0, *(k for k in first if k not in (0, d))]
        full = acc[d]
        if full <= self.chance:
            self.k = CHANCE_K
            return []
        target = full - self.tol - 1e-12
        if self.search == "scan":
            for k in range(d + 1):
                if k not in acc:
                    return self._ahead(k)
                if acc[k] >= target:
                    self.k = k
                    return []
        lo, hi = 0, d
        if acc[0] >= target:
            hi = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if mid not in acc:
                return _subtree(lo, hi, self.levels)
            if acc[mid] >= target:
                hi = mid
            else:
                lo = mid
        self.k = hi
        return []

    @property
    def accuracy(self) -> float:
        """Accuracy of the kept subnetwork (the empty one when ``k`` is undefined)."""
        return self.acc[max(self.k, 0)]


def _ranks(scores: Tensor) -> Tensor:
    """``ranks[..., j]``: position of neuron j when ``scores`` are sorted descending, ties by
    index (the stable order of :func:`smallest_reproducing_topk`): top-k = ``ranks < k``."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ar = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ar)


def batched_topk(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    layer: int,
    scores: Tensor,
    tol: float = 0.0,
    search: str = "binary",
    levels: int | None = None,
) -> dict[str, Tensor]:
    """:func:`smallest_reproducing_topk` for ``C`` checkpoints at once (stacked ``params``
    ``Tensor[C, ...]``, ``scores`` ``[C, d_mlp]``), same k (same search, same ties).

    Each forward pass evaluates, for every checkpoint still searching, the candidate k of the next
    ``levels`` levels of its binary search (or the next ``2**levels − 1`` k of the scan; default:
    :data:`LEVELS` of the device), and the full and empty subnetworks in the first pass: a
    ``vmap`` over checkpoints of a ``vmap`` over candidate masks at
    ``blocks.{layer}.mlp.hook_post``, so the model up to that hook runs once per pass. The
    search is then replayed on those accuracies exactly as the reference runs it, so the k is the
    reference's even where accuracy is not monotone in k. Returns ``k`` ``[C]`` (int64,
    ``CHANCE_K`` when at chance), ``accuracy`` and ``full_accuracy`` ``[C]`` (float64), ``keep``
    ``[C, d_mlp]`` (bool, on the CPU).
    """
    if search not in ("binary", "scan"):
        raise GrokinterpError(f"search must be 'binary' or 'scan', got {search!r}")
    if not (0 <= tol <= 1):
        raise GrokinterpError(f"tol must be in [0, 1], got {tol!r}")
    hook = f"blocks.{layer}.mlp.hook_post"
    if hook not in dict(model.named_modules()):
        raise GrokinterpError(f"model has no hook point {hook!r}")
    C, d = scores.shape
    dev = scores.device
    if levels is None:
        levels = LEVELS.get(dev.type, LEVELS["cpu"])
    if not isinstance(levels, int) or levels < 1:
        raise GrokinterpError(f"levels must be an integer ≥ 1, got {levels!r}")
    dtype = params[f"blocks.{layer}.mlp.W_in"].dtype
    n = len(y)
    x, y = x.to(dev), y.to(dev)
    ranks = _ranks(scores)
    chance = chance_accuracy(y)
    states = [_Search(d, search, tol, chance, levels) for _ in range(C)]
    budget = _MEMORY.get(dev.type, _MEMORY["cpu"])

    def correct(m: nn.Module, masks: Tensor) -> Tensor:  # masks [M, d] → correct counts [M]
        def one(mask: Tensor) -> Tensor:
            logits = class_logits(m, x, fwd_hooks=[(hook, lambda act, hook=None: act * mask)])
            return (logits.argmax(dim=-1) == y).sum()

        return vmap(one)(masks)

    with last_position_only(model):
        while True:
            needs = [s.needs() for s in states]
            active = [c for c, ks in enumerate(needs) if ks]
            if not active:
                break
            M = max(len(needs[c]) for c in active)
            per = max(1, budget // max(1, M * n * d * dtype.itemsize))
            for lo in range(0, len(active), per):
                part = active[lo : lo + per]
                ks = torch.tensor([needs[c] + [d] * (M - len(needs[c])) for c in part])
                idx = torch.tensor(part, device=dev)
                masks = (ranks[idx][:, None, :] < ks.to(dev)[:, :, None]).to(dtype)  # [A, M, d]
                sub = params if len(part) == C else {k: v[idx] for k, v in params.items()}
                counts = (
                    map_checkpoints(model, sub, correct, masks, batched_args=True).cpu().tolist()
                )
                for row, c in zip(counts, part, strict=True):
                    for k, cnt in zip(needs[c], row, strict=False):
                        states[c].acc[k] = cnt / n
    k = torch.tensor([s.k for s in states], dtype=torch.long)
    return {
        "k": k,
        "accuracy": torch.tensor([s.accuracy for s in states], dtype=torch.float64),
        "full_accuracy": torch.tensor([s.acc[d] for s in states], dtype=torch.float64),
        "keep": ranks.cpu() < k.clamp(min=0)[:, None],
    }
