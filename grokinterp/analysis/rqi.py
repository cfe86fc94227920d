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


def _linear(E: Tensor, n_tokens: int, delta: float, modular: bool = False) -> Tensor:
    """Linear RQI of ``E [C, n, d]`` (float64): ``Tensor[C]``.

    Within one sum class every couple of pairs is a parallelogram, and its squared defect is
    the squared distance between the two pair sums: one Gram matrix per class instead of a
    gather per parallelogram (the same count as :func:`parallelograms`, far less memory).
    """
    C = E.shape[0]
    std = E.std(dim=1, keepdim=True)  # unbiased, as torch's default in the paper's code
    valid = (std > 0).to(E.dtype)  # a constant dimension carries nothing (and would divide by 0)
    Z = (E - E.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std)) * valid
    d_eff = valid.sum(dim=(1, 2))
    limit = (delta * d_eff)[:, None, None]  # mean over dims < δ  ⇔  sum < δ·d_eff
    hits = torch.zeros(C, dtype=torch.float64, device=E.device)
    total = 0
    for a, b in _sum_classes(n_tokens, modular):
        q = Z[:, a.to(E.device)] + Z[:, b.to(E.device)]  # pair sums [C, k, d]
        sq = q.pow(2).sum(-1)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * q @ q.mT).clamp(min=0)
        k = q.shape[1]
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=E.device), diagonal=1)
        hits += ((dist < limit) & upper).sum(dim=(1, 2)).to(torch.float64)
        total += k * (k - 1) // 2
    if total == 0:
        return hits
    return torch.where(d_eff > 0, hits / total, torch.zeros_like(hits))


def linear_rqi(E: Tensor, delta: float = DEFAULT_DELTA, modular: bool = False) -> float:
    """Liu et al. 2022's RQI of ``E [n_tokens, d]`` (row ``k`` = token ``k``): the fraction of
    parallelograms ``i + j = m + n`` whose standardised defect has mean square ``< delta``.

    ``modular=True`` uses ``i + j ≡ m + n (mod n_tokens)``; no non-constant embedding realises
    them all (see the module docstring) — use :func:`circular_rqi` for modular addition. An
    embedding whose every dimension is constant represents nothing: RQI 0.
    """
    E = _embeddings(E)
    return float(_linear(E, E.shape[1], _check_delta(delta), bool(modular))[0])


def ring_angles(E: Tensor) -> tuple[Tensor, Tensor]:
    """The ring of ``E [n, d]`` (or ``[C, n, d]``): ``(angles [.., n], plane_variance [..])``.

    Angles of the tokens in the plane of the first two principal components of the centred
    embedding, whitened (each component scaled to one variance: an ellipse becomes a circle), and
    the fraction of the embedding's variance in that plane. Float64.
    """
    single = isinstance(E, Tensor) and E.ndim == 2
    E = _embeddings(E)
    Ec = E - E.mean(dim=1, keepdim=True)
    # U's columns are the principal-component scores divided by their norms: whitened coordinates
    U, S, _ = torch.linalg.svd(Ec, full_matrices=False)
    if U.shape[-1] < 2:
        angles = torch.zeros(E.shape[:2], dtype=torch.float64, device=E.device)
    else:
        angles = torch.atan2(U[..., 1], U[..., 0])
    total = S.pow(2).sum(-1)
    plane = S[..., :2].pow(2).sum(-1) / total.clamp(min=torch.finfo(torch.float64).tiny)
    # fewer than two non-zero components: no plane, hence no ring (angles are meaningless)
    degenerate = (S.shape[-1] < 2) | (S[..., min(1, S.shape[-1] - 1)] <= S[..., 0] * 1e-12)
    plane = torch.where(degenerate, torch.zeros_like(plane), plane)
    return (angles[0], plane[0]) if single else (angles, plane)


def _circular(E: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Circular RQI and plane variance of ``E [C, n, d]`` over the modular parallelograms (per
    sum class: all couples of its pairs, as in :func:`_linear`)."""
    angles, plane = ring_angles(E)
    hits = torch.zeros(E.shape[0], dtype=torch.float64, device=E.device)
    total = 0
    for a, b in _sum_classes(E.shape[1], True):
        t = angles[:, a.to(E.device)] + angles[:, b.to(E.device)]  # pair angle sums [C, k]
        k = t.shape[1]
        u, v = torch.triu_indices(k, k, offset=1, device=E.device)
        defect = 2 - 2 * torch.cos(t[:, u] - t[:, v])  # |z_i z_j − z_m z_n|² = |e^{iΔ} − 1|²
        hits += (defect < delta).sum(-1).to(torch.float64)
        total += len(u)
    rqi = hits / max(total, 1)
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
        at_step=at_step, at_steps=at_steps, key={"n": indexing.n, "op": indexing.operation}
    )
