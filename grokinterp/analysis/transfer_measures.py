"""Pure tensor measures behind the ``transfer`` analysis (:mod:`grokinterp.analysis.transfer`).

Functions of embeddings only (no runs, no checkpoints), each checked against a known answer:

- **Fourier spectra** of a token embedding in cyclic-group order (Nanda, Chan, Lieberum, Smith,
  Steinhardt 2023, "Progress measures for grokking via mechanistic interpretability"),
  the share of its energy in a set of frequencies, and the **overlap** ``|K_T ∩ K_W| / |K_T|`` of
  two key-frequency sets with its permutation / exact hypergeometric baseline (Xu, Ni, Wang, Hu
  2025, "Let Me Grok for You: Accelerating Grokking via Embedding Transfer from a Weaker Model").
- **Subspaces**: orthonormal bases, principal angles (Björck & Golub 1973), the fraction of one
  matrix's energy in another's column space, linear CKA (Kornblith, Norouzi, Lee, Hinton 2019,
  "Similarity of Neural Network Representations Revisited"), and the share of a first layer's
  energy on the XOR-cluster signal coordinates.
- **Batched forms** over ``C`` stacked checkpoints (:func:`key_frequency_masks`,
  :func:`subspace_measures`); the per-checkpoint functions are their reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from grokinterp.analysis import fourier as F
from grokinterp.config import GrokinterpError

# fmt: off
__all__ = [
    "task_indexing", "group_rows", "embedding_spectrum", "energy_fraction", "overlap_score",
    "overlap_test", "orthonormal_basis", "principal_angles", "subspace_energy", "linear_cka",
    "signal_energy", "key_frequency_masks", "subspace_measures",
]
# fmt: on


# ---------------------------------------------------------------------------------------------
# Spectra and overlaps (pure functions)
# ---------------------------------------------------------------------------------------------


def task_indexing(task_name: str, p: int) -> F.GroupIndexing:
    """The :func:`~grokinterp.analysis.fourier.group_indexing` of a ``mod_*`` task (``other`` when
    the operation has no cyclic structure, or for ``mul``/``div`` with composite ``p``)."""
    op = task_name.removeprefix("mod_")
    if op in ("mul", "div") and not F.is_prime(p):
        op = "other"
    return F.group_indexing(op if op in ("add", "sub", "mul", "div") else "other", p)


def group_rows(E: Tensor, task_name: str, p: int) -> Tensor:
    """The token rows of ``E [d_vocab, d]`` (``=`` dropped) in cyclic-group order ``[n, d]``.

    ``mod_mul``/``mod_div`` use discrete-log order (n = p − 1, zero left out) so that their
    Fourier structure shows (see :func:`grokinterp.analysis.fourier.group_indexing`).
    """
    if E.ndim != 2 or E.shape[0] < p:
        raise GrokinterpError(f"E must have shape [d_vocab >= p, d], got {tuple(E.shape)}")
    return E[task_indexing(task_name, p).a_tokens].double()


def embedding_spectrum(E: Tensor, task_name: str = "mod_add", p: int | None = None) -> Tensor:
    """Per-frequency norm of a token embedding (Nanda et al. 2023): ``frequency_norms`` of the
    group-ordered rows; ``p`` defaults to ``d_vocab − 1`` (the ``=`` token last). Shape ``[n//2]``."""
    p = E.shape[0] - 1 if p is None else int(p)
    return F.frequency_norms(group_rows(E, task_name, p))


def energy_fraction(spectrum: Tensor, freqs: Sequence[int]) -> float:
    """Fraction of the (non-constant) Fourier energy ``Σ_k s_k²`` that lies in ``freqs`` (1-based)."""
    s2 = torch.as_tensor(spectrum, dtype=torch.float64).pow(2)
    total = float(s2.sum())
    if total == 0:
        return 0.0
    idx = [int(k) - 1 for k in freqs]
    if any(i < 0 or i >= len(s2) for i in idx):
        raise GrokinterpError(f"freqs must lie in 1..{len(s2)}, got {list(freqs)}")
    return float(s2[idx].sum()) / total


def overlap_score(target: Sequence[int], weak: Sequence[int]) -> float:
    """``|K_T ∩ K_W| / |K_T|``: the share of the target's key frequencies present in E_W's."""
    t, w = set(map(int, target)), set(map(int, weak))
    if not t:
        raise GrokinterpError("target key frequencies must not be empty")
    return len(t & w) / len(t)


def overlap_test(
    target: Sequence[int],
    weak: Sequence[int],
    n_freqs: int,
    n_perm: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Overlap score with a permutation baseline.

    The frequency labels 1..K are permuted uniformly at random ``n_perm`` times and applied to
    ``weak``; ``baseline`` is the mean permuted score, ``p_value = (1 + #{perm ≥ observed}) /
    (1 + n_perm)``. ``expected`` = ``|K_W| / K`` is the exact mean (hypergeometric) and
    ``p_exact`` the exact tail probability ``P(|K_T ∩ R| ≥ observed)`` for a uniformly random
    ``R`` of size ``|K_W|``.
    """
    K = int(n_freqs)
    t, w = sorted(set(map(int, target))), sorted(set(map(int, weak)))
    if K < 1 or any(not 1 <= k <= K for k in t + w):
        raise GrokinterpError(f"frequencies must lie in 1..n_freqs={K}")
    if n_perm < 1:
        raise GrokinterpError(f"n_perm={n_perm} must be >= 1")
    score = overlap_score(t, w)
    g = torch.Generator().manual_seed(seed)
    perms = torch.argsort(torch.rand(n_perm, K, generator=g), dim=1) + 1  # relabel k -> perm[k]
    in_t = torch.zeros(K + 1, dtype=torch.bool)
    in_t[t] = True
    hits = in_t[perms[:, [k - 1 for k in w]]].sum(1).double() if w else torch.zeros(n_perm)
    perm_scores = hits / len(t)
    obs_hits = round(score * len(t))
    p_exact = sum(
        math.comb(len(w), j) * math.comb(K - len(w), len(t) - j)
        for j in range(obs_hits, min(len(w), len(t)) + 1)
    ) / math.comb(K, len(t))
    return {
        "score": score,
        "baseline": float(perm_scores.mean()),
        "p_value": (1 + int((perm_scores >= score - 1e-12).sum())) / (1 + n_perm),
        "expected": len(w) / K,
        "p_exact": float(p_exact),
        "n_target": len(t),
        "n_weak": len(w),
        "n_freqs": K,
    }


# ---------------------------------------------------------------------------------------------
# Subspaces
# ---------------------------------------------------------------------------------------------


def _centered(X: Tensor, center: bool) -> Tensor:
    X = torch.as_tensor(X).double()
    if X.ndim != 2:
        raise GrokinterpError(f"expected a matrix [n, d], got shape {tuple(X.shape)}")
    return X - X.mean(0, keepdim=True) if center else X


def orthonormal_basis(X: Tensor, r: int | None = None, center: bool = False) -> Tensor:
    """``[n, r]`` orthonormal basis of the top-r left-singular subspace of ``X [n, d]``
    (``r`` = rank-revealing default: singular values above ``max(n, d)·eps·σ_max``)."""
    X = _centered(X, center)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    if r is None:
        tol = max(X.shape) * torch.finfo(X.dtype).eps * (float(S[0]) if len(S) else 0.0)
        r = int((S > tol).sum())
    if not 1 <= r <= U.shape[1]:
        raise GrokinterpError(f"r={r} must be in 1..{U.shape[1]}")
    return U[:, :r]


def principal_angles(X: Tensor, Y: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``X [n, a]`` and
    ``Y [n, b]``, ``min(a, b)`` of them (Björck & Golub 1973, "Numerical methods for computing
    angles between linear subspaces"). Columns are orthonormalised first (QR); small angles come
    from the sines and large ones from the cosines, so both ends are accurate."""
    X, Y = _centered(X, False), _centered(Y, False)
    if X.shape[0] != Y.shape[0]:
        raise GrokinterpError(f"X and Y need the same rows, got {X.shape[0]} and {Y.shape[0]}")
    Qx, _ = torch.linalg.qr(X)
    Qy, _ = torch.linalg.qr(Y)
    if Qx.shape[1] < Qy.shape[1]:
        Qx, Qy = Qy, Qx  # project the smaller space onto the larger one
    M = Qx.T @ Qy
    cos = torch.linalg.svdvals(M).clamp(0, 1)  # descending
    sin = torch.linalg.svdvals(Qy - Qx @ M).clamp(0, 1).flip(0)  # ascending
    k = Qy.shape[1]
    cos, sin = cos[:k], sin[:k]
    small = sin < math.sqrt(0.5)
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos))


def subspace_energy(Y: Tensor, X: Tensor) -> float:
    """``‖P_X Y‖_F² / ‖Y‖_F²``: the fraction of ``Y``'s energy inside ``X``'s column space."""
    X, Y = _centered(X, False), _centered(Y, False)
    Q = orthonormal_basis(X)
    total = float(Y.pow(2).sum())
    return float((Q.T @ Y).pow(2).sum()) / total if total > 0 else 0.0


def linear_cka(X: Tensor, Y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same ``n`` items:
    ``‖Yᶜᵀ Xᶜ‖_F² / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F)`` with column-centred ``Xᶜ [n, a]``, ``Yᶜ [n, b]``.
    Invariant to orthogonal transforms and isotropic scaling of either side; in [0, 1]."""
    X, Y = _centered(X, True), _centered(Y, True)
    if X.shape[0] != Y.shape[0]:
        raise GrokinterpError(f"X and Y need the same rows, got {X.shape[0]} and {Y.shape[0]}")
    # Gram form (n x n) is cheaper than d x d when the embeddings are wide.
    Kx, Ky = X @ X.T, Y @ Y.T
    den = float(Kx.norm() * Ky.norm())
    return float((Kx * Ky).sum()) / den if den > 0 else 0.0


def signal_energy(W: Tensor, n_signal: int = 2) -> float:
    """Share of ``‖W‖_F²`` in the first ``n_signal`` rows (XOR-cluster data: ``x₁, x₂``)."""
    W = torch.as_tensor(W).double()
    total = float(W.pow(2).sum())
    return float(W[:n_signal].pow(2).sum()) / total if total > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Batched forms (C checkpoints at once; the per-checkpoint functions above are the reference)
# ---------------------------------------------------------------------------------------------


def key_frequency_masks(spectra: Tensor) -> Tensor:
    """:func:`~grokinterp.analysis.fourier.select_key_frequencies` of each row of ``[C, K]`` (same
    rule, ties, all-zero case) as a bool mask ``[C, K]``, entry ``k - 1`` = frequency ``k``."""
    s = spectra.double()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise GrokinterpError("spectrum must be finite and non-negative")
    C, K = s.shape
    top = s.max(1, keepdim=True).values
    xs, order = torch.sort(torch.maximum(s, 1e-12 * top), dim=1, descending=True, stable=True)
    m = (xs[:, :-1] / xs[:, 1:])[:, : max(1, K // 2)].argmax(1, keepdim=True) + 1  # first max
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(K, device=s.device).expand(C, K))
    return (rank < m) | (top == 0) if K > 1 else torch.ones(C, K, dtype=torch.bool, device=s.device)


def _angles(Qx: Tensor, Y: Tensor) -> Tensor:
    """:func:`principal_angles` between ``span(Qx [n, a])`` and each ``span(Y[c] [n, b])``."""
    Qy = torch.linalg.qr(Y).Q
    Qx = torch.linalg.qr(Qx).Q.expand(Qy.shape[0], -1, -1)
    if Qx.shape[-1] < Qy.shape[-1]:
        Qx, Qy = Qy, Qx
    M, k = Qx.mT @ Qy, Qy.shape[-1]
    cos = torch.linalg.svdvals(M).clamp(0, 1)[:, :k]
    sin = torch.linalg.svdvals(Qy - Qx @ M).clamp(0, 1).flip(-1)[:, :k]
    return torch.where(sin < math.sqrt(0.5), torch.arcsin(sin), torch.arccos(cos))


def subspace_measures(T: Tensor, E_W: Tensor, r: int, center: bool) -> dict[str, Tensor]:
    """``principal_angles [C, r]`` (NaN-padded), ``subspace_energy`` and ``cka [C]`` of stacked
    targets ``T [C, n, d]`` vs ``E_W [n, r_W]`` (``center``: token rows lose their mean first).
    Float64: at step 0 span(A·B) ⊂ span(A) exactly, which float32 would blur (angles ~1e-4)."""
    X, T = E_W.double().to(T.device), T.double()
    if center:
        X, T = X - X.mean(0, keepdim=True), T - T.mean(-2, keepdim=True)
    C, rt = T.shape[0], min(r, *T.shape[-2:])
    U = torch.linalg.svd(T, full_matrices=False).U[..., :rt]  # orthonormal_basis(T, r=rt)
    a = _angles(orthonormal_basis(X, r=min(X.shape)).to(T.device), U)
    angles = torch.full((C, r), math.nan, dtype=torch.float64, device=T.device)
    angles[:, : a.shape[1]] = a
    Q = orthonormal_basis(X).to(T.device)
    total = T.pow(2).sum((-2, -1))
    energy = torch.where(total > 0, (Q.T @ T).pow(2).sum((-2, -1)) / total, 0.0)
    Xc, Yc = X - X.mean(0, keepdim=True), T - T.mean(-2, keepdim=True)  # CKA centres anyway
    den = (Xc.T @ Xc).norm() * (Yc.mT @ Yc).norm(dim=(-2, -1))
    cka = torch.where(den > 0, (Yc.mT @ Xc).pow(2).sum((-2, -1)) / den, 0.0)
    return {
        "principal_angles": angles.float(),
        "subspace_energy": energy.float(),
        "cka": cka.float(),
    }
