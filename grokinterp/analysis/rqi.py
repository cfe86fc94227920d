"""Representation quality index (RQI) of a token embedding.

Liu, Kitouni, Nolte, Michaud, Tegmark, Williams 2022, "Towards Understanding Grokking: An
Effective Theory of Representation Learning" (NeurIPS 2022, arXiv 2205.10343), §3: a model
generalises on addition when its representation is *structured*: for every **parallelogram**
``(i, j, m, n)`` with ``i + j = m + n`` the embedding satisfies ``E_i + E_j ≈ E_m + E_n``.
RQI is the fraction of parallelograms that the representation realises, ``RQI = |Q| / |P_0|``;
it rises from ~0 (memorisation) to 1 (a linear representation ``E_k = a + k·b``).

Conventions, from the paper's code (``toy/train_add.py`` of github.com/ejmichaud/grokking-squared):

* **parallelograms**: every unordered couple of distinct unordered pairs ``{i, j} ≠ {m, n}``
  with ``i + j = m + n`` (their loop ``i < j ≤ m < n, i + n = j + m`` enumerates exactly these;
  repeated elements such as ``{3, 3}`` vs ``{2, 4}`` count);
* **normalisation**: each embedding dimension is standardised to zero mean and unit (unbiased)
  standard deviation over the tokens, so that RQI does not depend on scale;
* **test**: a parallelogram is realised when the *mean over dimensions* of the squared defect
  ``(E_i + E_j − E_m − E_n)²`` is below ``δ`` (strict ``<``, as the code), ``δ = 0.01``
  (:data:`DEFAULT_DELTA`, the code's ``threshold_P``).

That is :func:`linear_rqi`. **Modular addition** needs a different test, and this module says so
rather than using the linear one: if ``E_i + E_j = E_m + E_n`` held for every ``i + j ≡ m + n
(mod p)``, then ``f(i) = E_i − E_0`` would be a homomorphism ``Z_p → R^d``, i.e. ``f = 0`` — only
a constant embedding passes. The structured representation of ``Z_p`` is a **ring**
(Liu et al.'s transformer embeddings on modular addition form a circle in their first two
principal components; Nanda et al. 2023 find ``E_k ∝ (cos 2πfk/p, sin 2πfk/p)`` per key
frequency ``f``), on which addition is a *rotation*: with ``z_k = e^{iφ_k}`` the angle of token
``k`` in the ring, ``i + j ≡ m + n`` becomes ``z_i z_j = z_m z_n``. :func:`circular_rqi` is the
paper's index with that group law: the fraction of modular parallelograms with circular defect
``|z_i z_j − z_m z_n|² = 4 sin²(Δ/2) < δ`` (``Δ = φ_i + φ_j − φ_m − φ_n``; ``≈ Δ²`` in radians²,
so ``δ = 0.01`` accepts ``|Δ| < 0.1`` rad). The ring is the plane of the embedding's first two
principal components, whitened (the same per-dimension normalisation as the paper), and ``φ`` is
the angle there; a rotation or reflection of the plane leaves the index unchanged.

Known answers (tests/test_rqi.py): a planted ring ``E_k = (cos 2πfk/p, sin 2πfk/p)`` (in any
linear image, any frequency ``f``) has circular RQI 1; a linear ``E_k = a + k·b`` has linear RQI 1;
for i.i.d. random embeddings the circular RQI is about ``2·asin(√δ/2)/π`` (0.032 for δ = 0.01:
uniform, independent angles) and the linear one about ``P(χ²_d < d·δ/σ²)`` (σ² = 4 or 6 per
dimension: ~0 for d ≥ 4). Limitation: when two frequencies have nearly the same norm, the first
two principal components mix their rings and the circular RQI drops although the representation
is structured.

Registered as the ``rqi`` analysis (:func:`make_rqi`) for modular tasks whose operation is a group
law (``add``, ``sub``, ``mul``, ``div``: tokens are put in group order by
:func:`~grokinterp.analysis.groups.group_indexing`, so ``mul``/``div`` use discrete logarithms).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import grok_times, half_rise_step
from grokinterp.analysis.groups import group_indexing, is_prime
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "DEFAULT_DELTA",
    "batched_rqi",
    "circular_rqi",
    "linear_rqi",
    "make_rqi",
    "parallelograms",
    "random_circular_rqi",
    "ring_angles",
    "rqi_applies",
    "rqi_summary",
]

DEFAULT_DELTA = 0.01  # Liu et al. 2022's code: threshold_P = 0.01


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise GrokinterpError(f"the number of tokens must be an integer ≥ 2, got {n!r}")
    return n


@lru_cache(maxsize=8)
def _sum_classes(n: int, modular: bool) -> tuple[tuple[Tensor, Tensor], ...]:
    """The unordered pairs ``{a, b}`` (a ≤ b) of ``n`` tokens grouped by ``a + b`` (mod ``n``):
    one ``(a, b)`` pair of index tensors per class with at least two pairs."""
    a, b = torch.triu_indices(n, n)
    s = (a + b) % n if modular else a + b
    classes = []
    for value in torch.unique(s).tolist():
        idx = torch.nonzero(s == value).flatten()
        if len(idx) >= 2:
            classes.append((a[idx], b[idx]))
    return tuple(classes)


@lru_cache(maxsize=8)
def _parallelograms(n: int, modular: bool) -> Tensor:
    rows = []
    for a, b in _sum_classes(n, modular):
        u, v = torch.triu_indices(len(a), len(a), offset=1)  # couples of distinct pairs
        rows.append(torch.stack([a[u], b[u], a[v], b[v]], dim=1))
    return torch.cat(rows) if rows else torch.zeros((0, 4), dtype=torch.long)


def parallelograms(n: int, modular: bool = False) -> Tensor:
    """All parallelograms of ``n`` tokens, ``LongTensor[P, 4]`` of rows ``(i, j, m, n)`` with
    ``{i, j} ≠ {m, n}`` and ``i + j = m + n`` (``modular``: ``≡ (mod n)``), each unordered couple
    of unordered pairs once (Liu et al. 2022's ``P_0`` over all tokens)."""
    return _parallelograms(_check_n(n), bool(modular))


def _embeddings(E: Tensor) -> Tensor:
    """``E`` as float64 ``[C, n, d]`` (a single ``[n, d]`` gains C = 1), checked."""
    if not isinstance(E, Tensor) or E.ndim not in (2, 3):
        raise GrokinterpError("the embedding must be a tensor [n_tokens, d] (or [C, n_tokens, d])")
    if E.shape[-2] < 2 or E.shape[-1] < 1:
        raise GrokinterpError(
            f"the embedding needs ≥ 2 tokens and ≥ 1 dimension, got {tuple(E.shape)}"
        )
    if not E.is_floating_point():
        E = E.to(torch.float64)
    if not torch.isfinite(E).all():
        raise GrokinterpError("the embedding must be finite (no NaN or inf)")
    E = E.to(torch.float64)
    return E if E.ndim == 3 else E[None]


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < math.inf:
        raise GrokinterpError(f"delta must be a finite number > 0, got {delta!r}")
    return float(delta)


# Both indices are computed parallelogram by parallelogram, without a Python loop over the sum
# classes (113 modular + 221 integer ones at p = 113, several kernels each): gathers from
# per-checkpoint ``[n, n]`` tables laid out ``[n·n, C]`` (a gathered row holds the C checkpoints'
# values, contiguous), over slices of parallelograms whose float64 ``[slice, C]`` temporaries
# take about ``_SLICE_BYTES`` each — on a CPU about its L2 cache (16 MB slices ran 2× slower:
# page faults and cache spills), on a GPU one slice per chunk of 64. The same arithmetic as the
# former loop for the circular test (identical hit counts), the Gram identity for the linear one.
# Faster than the former loop on the CPU too (`benchmarks/bench_analysis.py --preset demo`:
# rqi 0.5 s → 0.14 s over 87 checkpoints), so one path for every device; on an H200 the ring's
# eigh replaced a 2.05 s batched SVD with 0.60 s (`--profile`, RESULTS.md §(e2)).
_SLICE_BYTES = {"cpu": 2 << 20, "cuda": 256 << 20}
_MIN_SLICE = 1024  # parallelograms per slice at least, however many checkpoints
# float64 [slice, C] temporaries alive at once in a slice (linear: cross, pair sums, a gather)
_TEMPORARIES = 3


@lru_cache(maxsize=16)
def _flat_parallelograms(n: int, modular: bool, device: str) -> tuple[Tensor, ...]:
    """The rows ``(i, j, m, k)`` of :func:`parallelograms` as flat positions in ``[n, n]``
    tables, on ``device``: ``(i·n+j, m·n+k, i·n+m, i·n+k, j·n+m, j·n+k)`` (the two pair sums,
    then the four cross terms)."""
    i, j, m, k = _parallelograms(n, modular).T.to(device)
    return (i * n + j, m * n + k, i * n + m, i * n + k, j * n + m, j * n + k)


def _slice_size(C: int, device: torch.device) -> int:
    """Parallelograms per slice for ``C`` checkpoints (each temporary within the budget)."""
    budget = _SLICE_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return max(_MIN_SLICE, budget // (8 * max(C, 1)))


def _table(x: Tensor) -> Tensor:
    """``x [C, n, n]`` as ``[n·n, C]`` (row ``a·n + b`` = entry ``(a, b)`` of every checkpoint)."""
    # contiguous: a plain reshape is a view whose rows are strided, and gathers them 3× slower
    return x.reshape(x.shape[0], -1).T.contiguous()


def _linear(E: Tensor, n_tokens: int, delta: float, modular: bool = False) -> Tensor:
    """Linear RQI of ``E [C, n, d]`` (float64): ``Tensor[C]``.

    The squared defect of parallelogram ``(i, j, m, k)``, ``|Z_i + Z_j − Z_m − Z_k|²``, from the
    token Gram ``H = Z Zᵀ`` of the standardised embedding: ``S_ij + S_mk − 2 (H_im + H_ik +
    H_jm + H_jk)`` with ``S_ab = |Z_a + Z_b|² = H_aa + H_bb + 2 H_ab`` — one batched matmul, then
    six gathers per parallelogram (no ``[P, d]`` gather: far less memory than the defects).
    """
    C, n = E.shape[0], n_tokens
    std = E.std(dim=1, keepdim=True)  # unbiased, as torch's default in the paper's code
    valid = (std > 0).to(E.dtype)  # a constant dimension carries nothing (and would divide by 0)
    Z = (E - E.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std)) * valid
    d_eff = valid.sum(dim=(1, 2))
    limit = delta * d_eff  # mean over dims < δ  ⇔  sum < δ·d_eff
    H = Z @ Z.mT
    diag = H.diagonal(dim1=1, dim2=2)
    S = _table(diag[:, :, None] + diag[:, None, :] + 2 * H)
    H = _table(H)
    ij, mk, im, ik, jm, jk = _flat_parallelograms(n, modular, str(E.device))
    hits = torch.zeros(C, dtype=torch.float64, device=E.device)
    step = _slice_size(C, E.device)
    for s in range(0, len(ij), step):
        sl = slice(s, s + step)
        cross = H.index_select(0, im[sl]).add_(H.index_select(0, ik[sl]))
        cross.add_(H.index_select(0, jm[sl])).add_(H.index_select(0, jk[sl]))
        dist = S.index_select(0, ij[sl]).add_(S.index_select(0, mk[sl])).sub_(cross.mul_(2))
        hits += (dist.clamp_(min=0) < limit).sum(0).to(torch.float64)
    if len(ij) == 0:
        return hits
    return torch.where(d_eff > 0, hits / len(ij), torch.zeros_like(hits))


def linear_rqi(E: Tensor, delta: float = DEFAULT_DELTA, modular: bool = False) -> float:
    """Liu et al. 2022's RQI of ``E [n_tokens, d]`` (row ``k`` = token ``k``): the fraction of
    parallelograms ``i + j = m + n`` whose standardised defect has mean square ``< delta``.

    ``modular=True`` uses ``i + j ≡ m + n (mod n_tokens)``; no non-constant embedding realises
    them all (see the module docstring) — use :func:`circular_rqi` for modular addition. An
    embedding whose every dimension is constant represents nothing: RQI 0.
    """
    E = _embeddings(E)
    return float(_linear(E, E.shape[1], _check_delta(delta), bool(modular))[0])


# A ring needs two non-zero principal components: the second Gram eigenvalue must exceed this
# share of the first. Gram eigenvalues carry an absolute error of ~n·eps64·λ₁ (≈ 3e-14·λ₁ at
# n = 113), so the test sits well above that noise: λ₂ ≤ 1e-10·λ₁, i.e. σ₂ ≤ 1e-5·σ₁.
_DEGENERATE = 1e-10


def ring_angles(E: Tensor) -> tuple[Tensor, Tensor]:
    """The ring of ``E [n, d]`` (or ``[C, n, d]``): ``(angles [.., n], plane_variance [..])``.

    Angles of the tokens in the plane of the first two principal components of the centred
    embedding, whitened (each component scaled to one variance: an ellipse becomes a circle), and
    the fraction of the embedding's variance in that plane. Float64.

    The two components come from a symmetric eigendecomposition
    (``torch.linalg.eigh``) of the smaller Gram matrix of the
    centred ``Ec`` (``Ec Ecᵀ [n, n]``: its eigenvectors are the whitened scores; or
    ``Ecᵀ Ec [d, d]``: the directions ``V``, scores ``Ec V / σ``) rather than a full SVD (one
    cuSOLVER call per checkpoint); the plane variance is ``(λ₁ + λ₂) / trace``. The angles equal
    the SVD's up to a rotation or reflection of the plane (the eigenvectors' signs, or any basis
    of the plane when ``σ₁ = σ₂``), to which the circular RQI is invariant. With fewer than two
    non-zero components (``λ₂ ≤ 1e-10·λ₁``, i.e. ``σ₂ ≤ 1e-5·σ₁``: well above the Gram's
    rounding noise ~n·eps·λ₁) there is no ring: plane variance 0 (angles meaningless).
    """
    single = isinstance(E, Tensor) and E.ndim == 2
    E = _embeddings(E)
    Ec = E - E.mean(dim=1, keepdim=True)
    n, d = Ec.shape[1:]
    total = Ec.pow(2).sum(dim=(1, 2))
    if min(n, d) < 2:  # one component at most: no plane
        angles = torch.zeros(E.shape[:2], dtype=torch.float64, device=E.device)
        plane = torch.zeros_like(total)
        return (angles[0], plane[0]) if single else (angles, plane)
    if n <= d:
        lam, U = torch.linalg.eigh(Ec @ Ec.mT)  # ascending: the last two are the first components
        lam, U = lam[:, [-1, -2]].clamp(min=0), U[..., [-1, -2]]
    else:
        lam, V = torch.linalg.eigh(Ec.mT @ Ec)
        lam = lam[:, [-1, -2]].clamp(min=0)
        U = Ec @ V[..., [-1, -2]] / lam.sqrt().clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    angles = torch.atan2(U[..., 1], U[..., 0])
    plane = lam.sum(-1) / total.clamp(min=torch.finfo(torch.float64).tiny)
    degenerate = lam[:, 1] <= _DEGENERATE * lam[:, 0]  # also λ₁ = 0 (a constant embedding)
    plane = torch.where(degenerate, torch.zeros_like(plane), plane.clamp(max=1))
    return (angles[0], plane[0]) if single else (angles, plane)


def _circular(E: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Circular RQI and plane variance of ``E [C, n, d]`` over the modular parallelograms: the
    table of pair angle sums ``t_ab = φ_a + φ_b`` and two gathers per parallelogram."""
    angles, plane = ring_angles(E)
    C, n = angles.shape
    T = _table(angles[:, :, None] + angles[:, None, :])
    ij, mk = _flat_parallelograms(n, True, str(E.device))[:2]
    hits = torch.zeros(C, dtype=torch.float64, device=E.device)
    step = _slice_size(C, E.device)
    for s in range(0, len(ij), step):
        diff = T.index_select(0, ij[s : s + step]).sub_(T.index_select(0, mk[s : s + step]))
        defect = diff.cos_().mul_(-2).add_(2)  # |z_i z_j − z_m z_k|² = |e^{iΔ} − 1|² = 2 − 2 cos Δ
        hits += (defect < delta).sum(0).to(torch.float64)
    rqi = hits / max(len(ij), 1)
    return torch.where(plane > 0, rqi, torch.zeros_like(rqi)), plane


def circular_rqi(E: Tensor, delta: float = DEFAULT_DELTA) -> float:
    """RQI of ``E [p, d]`` (row ``k`` = group element ``k`` of ``Z_p``) for modular addition: the
    fraction of parallelograms ``i + j ≡ m + n (mod p)`` with ``|z_i z_j − z_m z_n|² < delta``,
    ``z_k`` the unit complex number of token ``k``'s angle in the embedding's ring
    (:func:`ring_angles`). 1 for a planted ring; ~:func:`random_circular_rqi` for noise. An
    embedding with fewer than two non-constant directions has no ring: RQI 0."""
    E = _embeddings(E)
    if E.shape[-1] < 2:
        raise GrokinterpError("circular RQI needs an embedding with at least 2 dimensions")
    return float(_circular(E, _check_delta(delta))[0][0])


def random_circular_rqi(delta: float = DEFAULT_DELTA) -> float:
    """The circular RQI of independent, uniform angles: ``P(4 sin²(Δ/2) < δ)`` for uniform Δ,
    ``= 2·asin(√δ / 2)/π`` (0.0318 for δ = 0.01): the baseline of an unstructured embedding."""
    delta = _check_delta(delta)
    return 1.0 if delta >= 4 else 2 * math.asin(math.sqrt(delta) / 2) / math.pi


def batched_rqi(E: Tensor, delta: float = DEFAULT_DELTA, linear: bool = True) -> dict[str, Tensor]:
    """Circular (modular parallelograms) and, with ``linear``, linear (integer parallelograms)
    RQI of ``C`` embeddings ``E [C, n, d]`` at once, plus the ring plane's share of variance:
    ``{"circular", "linear", "plane_variance"}``, float64 ``Tensor[C]``."""
    E = _embeddings(E)
    delta = _check_delta(delta)
    n = E.shape[1]
    out: dict[str, Tensor] = {}
    if E.shape[-1] >= 2:
        out["circular"], out["plane_variance"] = _circular(E, delta)
    else:
        zero = torch.zeros(E.shape[0], dtype=torch.float64, device=E.device)
        out["circular"], out["plane_variance"] = zero, zero
    if linear:
        out["linear"] = _linear(E, n, delta)
    return out


# ---------------------------------------------------------------------------------------------
# The ``rqi`` analysis
# ---------------------------------------------------------------------------------------------

_MODELS = ("transformer", "embed_mlp")
_GROUP_OPS = ("add", "sub", "mul", "div")


def rqi_applies(run: Any) -> str | None:
    """None if ``rqi`` applies: a modular task whose operation is a group law (add, sub; mul
    and div with a prime p) and a token model (an embedding ``embed.W_E`` or ``W_A·W_B``)."""
    task, model = run.config.task.name, run.config.model.name
    op = task.removeprefix("mod_")
    if not task.startswith("mod_") or op not in _GROUP_OPS:
        return (
            f"rqi needs a modular task with a group operation (mod_add/sub/mul/div), not {task!r}"
        )
    if model not in _MODELS:
        return f"rqi needs a token model with an embedding ({', '.join(_MODELS)}), not {model!r}"
    p = run.config.task.params.get("p")
    if op in ("mul", "div") and isinstance(p, int) and not is_prime(p):
        return f"rqi on mod_{op} needs a prime p (discrete logarithms), got p = {p}"
    if not run.steps:
        return "the run has no checkpoint"
    return None


def rqi_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """The circular RQI at the first and last checkpoint and its maximum, the step at which it is
    half-way up (:func:`~grokinterp.analysis.curves.half_rise_step`), next to the step at which
    test accuracy reaches the grokking threshold (``generalize_step``); the final linear RQI (the
    paper's own, integer-sum parallelograms) and the ring's share of the embedding's variance;
    ``random_baseline``, the circular RQI of unstructured angles."""
    steps = [int(s) for s in results["steps"]] if "steps" in results else list(run.steps)
    circ = results["circular"].double()
    out: dict[str, Any] = {
        "circular_rqi_start": float(circ[0]),
        "circular_rqi_max": float(circ.max()),
        "circular_rqi_final": float(circ[-1]),
        "circular_rqi_half_way_step": half_rise_step(steps, circ) if len(circ) > 1 else None,
        "generalize_step": grok_times(run.metrics).generalize_step,
        "random_baseline": random_circular_rqi(),
    }
    if "linear" in results:
        out["linear_rqi_final"] = float(results["linear"][-1])
    if "plane_variance" in results:
        out["ring_variance_final"] = float(results["plane_variance"][-1])
    return out


@register_analysis("rqi", applies=rqi_applies, summarize=rqi_summary)
def make_rqi(run: Any, delta: float = DEFAULT_DELTA, linear: bool = True) -> Measure:
    """Representation quality index (Liu et al. 2022) of the token embedding at every checkpoint.

    The embedding rows of the group elements ``0 .. n−1`` (tokens in group order,
    :func:`~grokinterp.analysis.groups.group_indexing`; the ``=`` token left out). Keys:
    ``circular`` (modular parallelograms, ring test: :func:`circular_rqi`), ``linear`` (the
    paper's integer-sum parallelograms: :func:`linear_rqi`) and ``plane_variance`` (the share of
    the embedding's variance in the ring's plane). ``delta``: the paper's threshold (0.01).
    """
    # lazy: grokinterp.models imports TransformerLens (see grokinterp.analysis.batch.class_logits)
    from grokinterp.models import effective_embedding

    delta = _check_delta(delta)
    task = run.task()
    if task.p is None:
        raise GrokinterpError("rqi needs a modular task with p")
    indexing = group_indexing(task.name, int(task.p))
    tokens = indexing.a_tokens

    def compute(E: Tensor) -> dict[str, Tensor]:
        return batched_rqi(E[..., tokens.to(E.device), :], delta, linear)

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        return {k: v[0] for k, v in compute(effective_embedding(state)[None]).items()}

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        # W_A @ W_B broadcasts over the stacked checkpoint axis: [C, d_vocab, d]
        return compute(effective_embedding(batch.params))

    return Measure(
        at_step=at_step,
        at_steps=at_steps,
        key={"n": indexing.n, "op": indexing.operation},
        bytes_per_checkpoint=_bytes_per_checkpoint(indexing.n, _embedding_width(run)),
    )


def _embedding_width(run: Any) -> int:
    model = run.config.model
    return int(model.d_embed if model.name == "embed_mlp" else model.d_model)


def _bytes_per_checkpoint(n: int, d: int) -> int:
    """Working memory of one checkpoint in a batch, float64: the embedding a few times over
    (its rows, centred, standardised), the Gram and its eigenvectors, the token Gram and the
    pair tables (``[n, n]`` each), and its share of a minimal slice of parallelograms
    (:data:`_MIN_SLICE`). ≈ 1.1 MB at p = 113, d = 128 — the slices' own budget
    (:data:`_SLICE_BYTES`) is shared by the whole batch."""
    g = min(n, d)
    return 8 * (4 * n * d + 2 * g * g + 4 * n * n + _TEMPORARIES * _MIN_SLICE)
