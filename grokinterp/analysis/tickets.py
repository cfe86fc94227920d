"""Grokking tickets: magnitude masks, mask similarity, random and norm-matched controls.

Minegishi, Iwasawa & Matsuo, "Bridging Lottery Ticket and Grokking" (arXiv 2310.19470): the
*grokking ticket* is the one-shot magnitude-pruning mask of a network taken after it has
generalized, with one global threshold over all weight matrices (embedding and unembedding
included, biases excluded); training the rewound sparse network θ₀⊙m generalizes much sooner than
the dense network, while a dense θ₀ rescaled to the ticket's L1 or L2 norm does not.

Conventions used throughout this module (they make masks exact and reproducible):

* A *mask* is a ``dict[str, BoolTensor]`` with one entry per **prunable** tensor, same shape as
  the tensor, ``True`` = kept. Tensors not in the mask are never pruned.
* ``sparsity`` is the fraction of prunable entries **removed**. Over a pool of ``n`` entries,
  exactly ``n_removed = floor(sparsity·n + 1/2)`` are removed, the product evaluated exactly on
  the shortest decimal form of ``sparsity`` (``repr``: 0.7·35 = 24.5 → 25 removed, whatever
  binary rounding would say), so ``n − n_removed`` are kept. With
  ``scope="global"`` the pool is all prunable entries together (one threshold, as in the
  paper); with ``scope="layerwise"`` each tensor is its own pool.
* Default prunable set: every floating-point tensor with ``ndim ≥ 2`` whose last name component
  is not a bias (``b_*`` in TransformerLens naming, or ``bias``). This includes the embedding
  (``embed.W_E``, or ``embed.W_A`` and ``embed.W_B`` when factorized), ``pos_embed.W_pos``,
  attention and MLP matrices and the unembedding ``unembed.W_U``; it excludes biases,
  LayerNorm weights and integer/bool buffers.
* Ties: entries are ranked by score, largest first, with a *stable* sort over a canonical
  order — tensors by sorted name, then row-major flat index — so among equal scores the entry
  that comes first in that order is kept. The result never depends on dict insertion order.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.analysis.registry import Measure, cache_info, register_analysis
from grokinterp.config import GrokinterpError
from grokinterp.store import Run, load_tensors, save_tensors

Include = None | str | Iterable[str] | Callable[[str, Tensor], bool]

# fmt: off
__all__ = [
    "is_prunable", "prunable_names", "n_removed", "mask_from_scores", "magnitude_mask",
    "random_mask", "random_mask_like", "mask_sparsity", "mask_jaccard", "apply_mask",
    "masked_norm", "norm_ratio", "rescale_to_norm", "resolve_step", "ticket_path",
    "extract_ticket", "load_mask", "save_mask", "pack_mask", "jaccard_matrix", "keep_top",
    "magnitude_masks", "tickets_summary", "SUMMARY_LABELS",
]
# fmt: on


# ----------------------------------------------------------------------------- prunable set


def is_prunable(name: str, tensor: Tensor) -> bool:
    """Default rule: a floating tensor with ``ndim ≥ 2`` that is not a bias (see module doc)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("b_") or leaf == "bias":
        return False
    return tensor.is_floating_point() and tensor.ndim >= 2


def prunable_names(params: Mapping[str, Tensor], include: Include = None) -> list[str]:
    """Sorted names of the tensors of ``params`` a mask covers.

    ``include``: ``None`` → the default rule (:func:`is_prunable`); a string or iterable of
    strings → ``fnmatch`` patterns on names (e.g. ``"blocks.*.mlp.W_in"``; an exact name matches
    itself), floating tensors only; a callable ``(name, tensor) -> bool``.
    """
    if not isinstance(params, Mapping) or not params:
        raise GrokinterpError("params must be a non-empty mapping of name -> tensor")
    for k, v in params.items():
        if not isinstance(v, Tensor):
            raise GrokinterpError(f"params[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
    if include is None:
        names = [k for k, v in params.items() if is_prunable(k, v)]
    elif callable(include):
        names = [k for k, v in params.items() if include(k, v)]
    else:
        patterns = [include] if isinstance(include, str) else list(include)
        if not all(isinstance(p, str) for p in patterns):
            raise GrokinterpError(
                "include must be None, a pattern string, a list of them, or a callable"
            )
        names = [
            k
            for k, v in params.items()
            if v.is_floating_point() and any(fnmatch.fnmatchcase(k, p) for p in patterns)
        ]
    if not names:
        raise GrokinterpError(f"include={include!r} selects no prunable tensor of params")
    return sorted(names)


def _ALL(name: str, tensor: Tensor) -> bool:
    """``include`` that keeps every tensor given (the caller already selected them)."""
    return True


def _check_sparsity(sparsity: float) -> Fraction:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise GrokinterpError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if not (0.0 <= float(sparsity) <= 1.0):
        raise GrokinterpError(f"sparsity must be in [0, 1] (fraction removed), got {sparsity}")
    # Shortest decimal representation = the number the user typed (0.7, not 0.69999...).
    return Fraction(repr(float(sparsity)))


def n_removed(sparsity: float, n: int) -> int:
    """Exact number of entries removed from a pool of ``n``: ``floor(sparsity·n + 1/2)``.

    Evaluated in rational arithmetic on ``repr(sparsity)``, e.g. ``n_removed(0.7, 35) == 25``.
    """
    s = _check_sparsity(sparsity)
    return math.floor(s * n + Fraction(1, 2))


def _check_scope(scope: str) -> None:
    if scope not in ("global", "layerwise"):
        raise GrokinterpError(f"scope={scope!r} is not valid; allowed: global, layerwise")


# ----------------------------------------------------------------------------- masks


def _top_k_flat(flat: Tensor, n_keep: int) -> Tensor:
    """Bool vector keeping the ``n_keep`` largest entries (stable: earlier index wins ties)."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:n_keep]] = True
    return keep


def mask_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    include: Include = None,
) -> dict[str, Tensor]:
    """Keep the highest-scoring entries: the top-k machinery shared by every pruning criterion.

    Args:
        scores: importance per entry (larger = more important), keyed like the parameters.
            ``±inf`` is allowed (``-inf`` = never keep unless forced by the count); NaN is not.
        sparsity: fraction removed, in [0, 1]; exact counts (module doc).
        scope: ``"global"`` (one ranking over all selected tensors) or ``"layerwise"``.
        include: which tensors the mask covers (:func:`prunable_names`).

    Returns:
        ``{name: BoolTensor}`` for the selected tensors, on each score tensor's device.
    """
    _check_sparsity(sparsity)
    _check_scope(scope)
    names = prunable_names(scores, include)
    flats = []
    for k in names:
        f = scores[k].detach().reshape(-1).to("cpu", torch.float64)
        if torch.isnan(f).any():
            raise GrokinterpError(f"scores[{k!r}] contains NaN")
        flats.append(f)
    if scope == "global":
        flat = torch.cat(flats)
        keep = _top_k_flat(flat, flat.numel() - n_removed(sparsity, flat.numel()))
        parts = torch.split(keep, [f.numel() for f in flats])
    else:
        parts = [_top_k_flat(f, f.numel() - n_removed(sparsity, f.numel())) for f in flats]
    return {
        k: part.reshape(scores[k].shape).to(scores[k].device)
        for k, part in zip(names, parts, strict=True)
    }


def magnitude_mask(
    params: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    include: Include = None,
) -> dict[str, Tensor]:
    """One-shot magnitude pruning: keep the entries with the largest ``|θ|``.

    Minegishi et al. (arXiv 2310.19470), "grokking ticket": scores ``|θ_t|`` at a checkpoint,
    one global threshold (``scope="global"``) over all weight matrices including the embedding
    and unembedding; ``sparsity`` is the paper's k, the fraction removed (their default 0.6).
    Exact counts and tie-breaking as in the module docstring.
    """
    _check_sparsity(sparsity)
    _check_scope(scope)
    names = prunable_names(params, include)
    return mask_from_scores({k: params[k].detach().abs() for k in names}, sparsity, scope, _ALL)


def random_mask(
    params: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    include: Include = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Random mask with exactly the counts of :func:`magnitude_mask` (random-score pruning).

    Scores are i.i.d. uniform draws from a ``torch.Generator`` seeded with ``seed``, drawn per
    tensor in sorted-name order, so the mask depends only on (shapes, sparsity, scope, seed).
    """
    _check_sparsity(sparsity)
    _check_scope(scope)
    names = prunable_names(params, include)
    gen = torch.Generator().manual_seed(int(seed))
    scores = {
        k: torch.rand(params[k].shape, generator=gen, dtype=torch.float64).to(params[k].device)
        for k in names
    }
    return mask_from_scores(scores, sparsity, scope, _ALL)


def random_mask_like(mask: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """A uniformly random mask with exactly the same number of kept entries *per tensor*."""
    _check_mask(mask)
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for k in sorted(mask):
        m = mask[k]
        perm = torch.randperm(m.numel(), generator=gen)
        out[k] = m.reshape(-1).cpu()[perm].reshape(m.shape).to(m.device)
    return out


def _check_mask(mask: Mapping[str, Tensor]) -> None:
    if not isinstance(mask, Mapping) or not mask:
        raise GrokinterpError("mask must be a non-empty mapping of name -> bool tensor")
    for k, v in mask.items():
        if not isinstance(v, Tensor) or v.dtype != torch.bool:
            raise GrokinterpError(f"mask[{k!r}] must be a bool tensor (True = kept)")


def mask_sparsity(mask: Mapping[str, Tensor]) -> float:
    """Fraction of masked entries removed, over all tensors of the mask."""
    _check_mask(mask)
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total


def mask_jaccard(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of the kept sets of two masks (1.0 if both empty).

    Both masks must cover the same tensors with the same shapes.
    """
    _check_mask(a)
    _check_mask(b)
    if set(a) != set(b):
        raise GrokinterpError(
            f"masks cover different tensors: {sorted(set(a) ^ set(b))} are in only one"
        )
    inter = union = 0
    for k in a:
        if a[k].shape != b[k].shape:
            raise GrokinterpError(
                f"mask[{k!r}] shapes differ: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
            )
        x, y = a[k].cpu(), b[k].cpu()
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return 1.0 if union == 0 else inter / union


# ----------------------------------------------------------------------------- norms


def _check_cover(params: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> None:
    _check_mask(mask)
    for k, m in mask.items():
        if k not in params:
            raise GrokinterpError(f"mask has {k!r} but params does not")
        if params[k].shape != m.shape:
            raise GrokinterpError(
                f"mask[{k!r}] has shape {tuple(m.shape)} but the parameter has {tuple(params[k].shape)}"
            )


def apply_mask(params: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """θ⊙m: a copy of ``params`` with the pruned entries set to exactly 0 (others unchanged)."""
    _check_cover(params, mask)
    out = {}
    for k, v in params.items():
        v = v.detach().clone()
        if k in mask:
            v = torch.where(
                mask[k].to(v.device), v, torch.zeros((), dtype=v.dtype, device=v.device)
            )
        out[k] = v
    return out


def _check_p(p: float) -> float:
    if p not in (1, 2, 1.0, 2.0):
        raise GrokinterpError(f"p={p!r} is not valid; allowed: 1, 2")
    return float(p)


def masked_norm(
    params: Mapping[str, Tensor], mask: Mapping[str, Tensor] | None = None, p: float = 2
) -> float:
    """‖θ⊙m‖_p over the tensors covered by ``mask`` (all tensors of ``params`` if None), float64."""
    p = _check_p(p)
    if mask is None:
        vals = [v.detach().reshape(-1) for v in params.values() if v.is_floating_point()]
    else:
        _check_cover(params, mask)
        vals = [params[k].detach()[mask[k].to(params[k].device)] for k in sorted(mask)]
    flat = torch.cat([v.to("cpu", torch.float64).reshape(-1) for v in vals])
    return float(flat.abs().sum()) if p == 1.0 else float(flat.pow(2).sum().sqrt())


def norm_ratio(params: Mapping[str, Tensor], mask: Mapping[str, Tensor], p: float = 2) -> float:
    """Minegishi et al.'s norm-matching factor r_p = ‖θ⊙m‖_p / ‖θ‖_p.

    Both norms are taken over the tensors the mask covers (the prunable set: by default every
    weight matrix, embedding and unembedding included), entrywise, in float64; tensors outside
    the mask (biases) enter neither norm.
    """
    p = _check_p(p)
    _check_cover(params, mask)
    full = {k: torch.ones_like(m) for k, m in mask.items()}
    dense = masked_norm(params, full, p)
    if dense == 0.0:
        raise GrokinterpError("params restricted to the mask's tensors have zero norm")
    return masked_norm(params, mask, p) / dense


def rescale_to_norm(
    params: Mapping[str, Tensor], mask: Mapping[str, Tensor], p: float = 2
) -> dict[str, Tensor]:
    """Dense norm-matched control: every tensor covered by ``mask`` multiplied by r_p.

    Minegishi et al. (arXiv 2310.19470) compare the ticket θ₀⊙m with the *dense* θ₀ scaled by one
    global factor r_p = ‖θ₀⊙m‖_p / ‖θ₀‖_p (computed by :func:`norm_ratio`, p = 1 or 2), so that
    ‖r_p·θ₀‖_p = ‖θ₀⊙m‖_p exactly (up to rounding) on the mask's tensors. Tensors outside the
    mask (biases) are returned unchanged. The mask itself is *not* applied: the result is dense.
    """
    r = norm_ratio(params, mask, p)
    out = {}
    for k, v in params.items():
        v = v.detach()
        if k in mask:
            # Scale in float64, then round once, so the matched norm is as exact as the dtype allows.
            out[k] = (v.to(torch.float64) * r).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


# ----------------------------------------------------------------------------- runs


def resolve_step(run: Run, step: int | str) -> int:
    """A checkpoint step of ``run``: an int present in ``run.steps``, or ``"final"`` / ``"init"``."""
    steps = run.steps
    if not steps:
        raise GrokinterpError(f"run {run.path} has no checkpoints")
    if isinstance(step, str):
        if step == "final":
            return steps[-1]
        if step == "init":
            return steps[0]
        if not step.isdigit():
            raise GrokinterpError(
                f"step={step!r} is not valid; allowed: a checkpoint step, 'final', 'init'"
            )
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step not in steps:
        near = sorted(steps, key=lambda s: abs(s - step) if isinstance(step, int) else 0)[:3]
        raise GrokinterpError(
            f"run {run.path} has no checkpoint at step {step!r}; nearest: {sorted(near)}"
        )
    return step


def ticket_path(run: Run, step: int, sparsity: float, scope: str = "global") -> Path:
    """Where :func:`extract_ticket` saves a ticket: ``<run>/analysis/ticket_masks/…``."""
    return run.analysis_dir / "ticket_masks" / f"step{step:08d}-s{sparsity:g}-{scope}.safetensors"


def model_parameters(run: Run, step: int) -> dict[str, Tensor]:
    """The trainable parameters (no buffers) of ``run`` at ``step``, by name."""
    model = run.model(step)
    return {k: v.detach() for k, v in model.named_parameters()}


def extract_ticket(
    run: Run,
    step: int | str = "final",
    sparsity: float = 0.6,
    scope: str = "global",
    include: Include = None,
    save: bool = True,
) -> dict[str, Tensor]:
    """The grokking ticket of ``run`` at a checkpoint: :func:`magnitude_mask` of its weights.

    Minegishi et al. (arXiv 2310.19470) take the mask after generalization; extracting it at a
    memorization or transition checkpoint gives the "non-grokked" tickets they compare with.
    ``step`` may be ``"final"``. The mask covers the model's *parameters* (buffers never).
    With ``save`` (and the default ``include``) it is written to
    ``<run>/analysis/ticket_masks/step<step>-s<sparsity>-<scope>.safetensors`` (see
    :func:`ticket_path`), the format ``TrainConfig.mask`` reads; load it with :func:`load_mask`.
    """
    step = resolve_step(run, step)
    mask = magnitude_mask(model_parameters(run, step), sparsity, scope, include)
    if save and include is None:
        kept = sum(int(m.sum()) for m in mask.values())
        meta = dict(step=step, sparsity=repr(float(sparsity)), scope=scope, criterion="magnitude")
        meta = {k: str(v) for k, v in (meta | {"run": run.path, "kept": kept}).items()}
        save_tensors(ticket_path(run, step, sparsity, scope), mask, metadata=meta)
    return mask


def load_mask(path: str | Path) -> dict[str, Tensor]:
    """Read a saved mask (safetensors of bool tensors)."""
    mask = load_tensors(path)
    return {k: v.bool() for k, v in mask.items()}


def save_mask(
    path: str | Path, mask: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write a mask atomically as safetensors of bool tensors (what ``TrainConfig.mask`` reads)."""
    _check_mask(mask)
    save_tensors(path, dict(mask), metadata=metadata)
    return Path(path)


def pack_mask(mask: Mapping[str, Tensor]) -> Tensor:
    """All entries of ``mask`` (sorted names, row-major) as a packed uint8 bit vector."""
    flat = torch.cat([mask[k].reshape(-1).cpu() for k in sorted(mask)]).numpy()
    return torch.from_numpy(np.packbits(flat))


def jaccard_matrix(bits: Tensor, n_entries: int) -> Tensor:
    """Pairwise Jaccard similarity ``[n, n]`` of ``n`` masks given as packed bit rows ``[n, B]``
    (from :func:`pack_mask`; ``n_entries`` = number of mask entries, to drop the padding)."""
    if bits.ndim != 2 or bits.dtype != torch.uint8:
        raise GrokinterpError("bits must be a uint8 tensor [n_masks, n_bytes] from pack_mask")
    a = torch.from_numpy(np.unpackbits(bits.numpy(), axis=1, count=int(n_entries))).to(
        torch.float64
    )
    inter = a @ a.T
    size = a.sum(1)
    union = size[:, None] + size[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


# ----------------------------------------------------------------------------- batched path


def keep_top(scores: Tensor, n_keep: int) -> Tensor:
    """Bool ``[C, n]``: the ``n_keep`` largest of each row of ``scores``, earlier index first
    among ties — :func:`_top_k_flat` per row, by selection (``kthvalue``) instead of a sort."""
    C, n = scores.shape
    if n_keep <= 0 or n_keep >= n:
        return torch.full((C, n), n_keep > 0, dtype=torch.bool, device=scores.device)
    thr = scores.kthvalue(n - n_keep + 1, dim=1, keepdim=True).values  # the n_keep-th largest
    keep = scores >= thr
    if bool((keep.sum(1) == n_keep).all()):  # no tie to break at the threshold (the usual case)
        return keep
    above = scores > thr
    tie = keep & ~above
    return above | (tie & (tie.cumsum(1) <= n_keep - above.sum(1, keepdim=True)))


def magnitude_masks(
    params: Mapping[str, Tensor], names: Sequence[str], sparsity: float, scope: str = "global"
) -> Tensor:
    """:func:`magnitude_mask` of stacked weights ``params[name]: [C, ...]``, same counts and ties,
    flat: bool ``[C, N]``, the tensors ``names`` (which stacked shapes cannot tell) in sorted order
    and row-major, as :func:`pack_mask` lays them out."""
    _check_scope(scope)  # (n_removed checks the sparsity)
    C, names = params[names[0]].shape[0], sorted(names)
    # |θ| in its own dtype: widening to float64 (mask_from_scores) is exact, the ranking the same
    scores = torch.cat([params[k].detach().reshape(C, -1) for k in names], 1).abs()
    if bool(scores.isnan().any()):
        raise GrokinterpError("scores contain NaN")
    parts = (
        [scores] if scope == "global" else scores.split([params[k][0].numel() for k in names], 1)
    )
    keep = [keep_top(f, f.shape[1] - n_removed(sparsity, f.shape[1])) for f in parts]
    return keep[0] if len(keep) == 1 else torch.cat(keep, 1)


SETTLE_LEVEL = 0.9  # not the paper's: the ticket "settles" once J(m_t, m_ref) stays above it
# fmt: off
SUMMARY_LABELS = {  # display names of tickets_summary's keys
    "ref_step": "reference ticket at step", "fit_step": "train accuracy reaches 95% (step)",
    "generalize_step": "test accuracy reaches 95% (step)",
    "jaccard_ref_init": "Jaccard(step-0 mask, reference)",
    "jaccard_ref_at_fit": "Jaccard(mask, reference) at fit", "jaccard_chance": "Jaccard by chance",
    "jaccard_ref_at_generalize": "Jaccard(mask, reference) at generalization",
    "settle_step": "Jaccard(mask, reference) ≥ 0.9 from step",
}
# fmt: on


def tickets_summary(run: Run, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """Headline numbers of a ``tickets`` result (keys with or without ``tickets/``): reference
    step, :func:`~grokinterp.analysis.curves.grok_times`, J with the reference ticket at step 0
    and at the first checkpoints ≥ ``fit_step`` / ``generalize_step``, where it settles."""
    r = {k.removeprefix("tickets/"): v for k, v in results.items()}
    steps = [int(s) for s in r.get("steps", run.steps)]
    jr = [float(v) for v in r["jaccard_ref"]]
    times = grok_times(run.metrics, DEFAULT_THRESHOLD)

    def at(step: int | None) -> float | None:
        i = len(steps) if step is None else bisect.bisect_left(steps, step)
        return jr[i] if i < len(steps) else None

    settle = max((i + 1 for i, v in enumerate(jr) if v < SETTLE_LEVEL), default=0)
    return {
        "ref_step": ((cache_info(run, "tickets") or {}).get("key") or {}).get("ref_step"),
        "fit_step": times.fit_step,
        "generalize_step": times.generalize_step,
        "jaccard_ref_init": jr[0],
        "jaccard_ref_at_fit": at(times.fit_step),
        "jaccard_ref_at_generalize": at(times.generalize_step),
        "settle_step": steps[settle] if settle < len(steps) else None,
        "jaccard_chance": float(r["jaccard_random"][0]),
    }


@register_analysis("tickets", summarize=tickets_summary, labels=SUMMARY_LABELS)
def make_tickets_analysis(
    run: Run, sparsity: float = 0.6, scope: str = "global", ref_step: int | str = "final"
) -> Measure:
    """Magnitude-mask (grokking ticket) similarity over training (Minegishi et al. 2310.19470).

    Per checkpoint t, with m_t = magnitude_mask(θ_t, sparsity, scope):
    ``jaccard_ref`` = J(m_t, m_ref) (ref = the final checkpoint by default),
    ``jaccard_init`` = J(m_t, m_0), ``jaccard_random`` = the chance level d²/(2d − d²) of two
    independent masks of density d (constant, for reference), ``kept_fraction`` per tensor
    (in sorted parameter-name order, the keys of the mask), ``bits`` = m_t packed
    (:func:`pack_mask`) and ``n_entries``; ``jaccard_matrix(out["tickets/bits"],
    int(out["tickets/n_entries"][0]))`` gives the Jaccard similarity of all pairs of checkpoints.
    Batched: :func:`magnitude_masks`; cache key: the reference and step-0 steps, a ticket digest.
    """
    _check_sparsity(sparsity)
    _check_scope(scope)
    ref_at, init_at = resolve_step(run, ref_step), resolve_step(run, "init")
    ref = magnitude_mask(model_parameters(run, ref_at), sparsity, scope)
    init = magnitude_mask(model_parameters(run, init_at), sparsity, scope)
    names = sorted(ref)
    sizes = torch.tensor([ref[k].numel() for k in names])
    ticket_columns = [torch.cat([x[k].reshape(-1) for k in names]) for x in (ref, init)]
    tensor_columns = torch.eye(len(names)).repeat_interleave(sizes, 0)  # [N, tensors] indicators
    columns = torch.cat([torch.stack(ticket_columns, 1), tensor_columns], 1).double()
    d = 1.0 - mask_sparsity(ref)
    chance = d * d / (2 * d - d * d) if d > 0 else 1.0

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        params = {k: v.detach() for k, v in model.named_parameters()}
        m = magnitude_mask(params, sparsity, scope)
        return {
            "jaccard_ref": torch.tensor(mask_jaccard(m, ref)),
            "jaccard_init": torch.tensor(mask_jaccard(m, init)),
            "jaccard_random": torch.tensor(chance),
            "kept_fraction": torch.tensor([float(m[k].float().mean()) for k in names]),
            "bits": pack_mask(m),
            "n_entries": torch.tensor(sum(m[k].numel() for k in names)),
        }

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        if prunable_names(dict(batch.model.named_parameters())) != names:  # as mask_jaccard
            raise GrokinterpError(f"masks cover different tensors: not {names} at {batch.steps}")
        flat = magnitude_masks(batch.params, names, sparsity, scope)  # [C, N]
        # One product gives |m ∩ ref|, |m ∩ init| and the kept count per tensor (exact: float64)
        C, counts = len(flat), flat.double() @ columns.to(flat.device)
        inter = counts[:, :2]  # union = |m| + |ticket| - |m ∩ ticket|
        union = counts[:, 2:].sum(1, keepdim=True) + columns[:, :2].sum(0).to(flat.device) - inter
        jaccard = torch.where(union > 0, inter / union.clamp_min(1), 1.0).float()
        return {
            "jaccard_ref": jaccard[:, 0],
            "jaccard_init": jaccard[:, 1],
            "jaccard_random": torch.full((C,), chance, dtype=torch.float32),
            "kept_fraction": (counts[:, 2:].cpu() / sizes).float(),
            "bits": torch.from_numpy(np.packbits(flat.cpu().numpy(), axis=1)),  # as pack_mask
            "n_entries": torch.full((C,), flat.shape[1], dtype=torch.int64),
        }

    digest = hashlib.sha256(pack_mask(ref).numpy().tobytes()).hexdigest()[:16]
    key = {"ref_step": ref_at, "init_step": init_at, "ref_digest": digest}
    return Measure(at_step=at_step, at_steps=at_steps, key=key)
