"""Ranks of many feature matrices at once: the batched path of the ``rank`` analysis.

Fan, Pascanu, Jaggi 2024 ("Deep Grokking") track the numerical rank of each layer's (centred)
pre-activation features; :mod:`grokinterp.analysis.rank` holds the per-matrix reference
(``feature_rank``, ``effective_rank`` — Roy & Vetterli 2007) and the analysis. Here:
:func:`batched_ranks` gives both ranks of ``C`` feature matrices from one batched float64
eigensolve of their Gram matrices, and :func:`batched_linear_ranks` those of an MLP block's
pre-activations ``x @ W_in + b_in`` from the ``d_in × d_in`` Gram of its narrower input (exact: the
spectrum of a 512-wide layer of Nanda et al.'s transformer from 128×128 matrices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from grokinterp.config import GrokinterpError

__all__ = ["batched_linear_ranks", "batched_ranks", "input_weight", "rank_tolerance"]


def rank_tolerance(n: int, d: int, dtype: torch.dtype, rtol: float | None) -> float:
    """The relative tolerance of :func:`~grokinterp.analysis.rank.feature_rank` and
    :func:`batched_ranks`: ``rtol``, or ``max(n, d)·eps`` of ``dtype`` when it is None."""
    if rtol is not None and not (isinstance(rtol, (int, float)) and 0 <= rtol < float("inf")):
        raise GrokinterpError(f"rtol must be a finite number ≥ 0 or None, got {rtol!r}")
    return max(n, d) * torch.finfo(dtype).eps if rtol is None else float(rtol)


# The Gram route (eigenvalues of the d×d covariance FᵀF instead of singular values of F) squares
# the spectrum: in float64 its eigenvalues carry an absolute error of order size·eps64·λ_max, so
# singular values below about √(size·eps64)·σ_max are noise there. It is taken only when the rank
# tolerance is this factor above that noise — always for float32 features with the default
# tolerance, whose threshold max(n, d)·eps32·σ_max is far higher; otherwise (float64 features,
# rtol=0, small matrices) the singular values come from the SVD, as in feature_rank.
_GRAM_MARGIN = 1e4
# On a GPU, cuSOLVER solves a batch of such eigenproblems one matrix after another (418 of
# 512×512 in float64: 1.8 s on an H200), and still beats the CPU (5.4 s on 16 cores;
# benchmarks/bench_linalg.py): hence batched_linear_ranks, which makes the matrices smaller.


def _ranks_from_singular_values(s: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """``(numerical, effective)`` ranks from descending singular values ``s [C, k]`` (float64):
    the count above ``tol · σ_max`` and Roy & Vetterli's ``exp(H(σ / Σσ))``. Exact zeros count
    for neither (``0·log 0 = 0``), so padding ``s`` with zeros changes nothing."""
    numerical = (s > tol * s[:, :1]).sum(dim=-1)  # a zero matrix: σ_max = 0, rank 0
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # 0·log 0 = 0
    effective = torch.where(total[:, 0] > 0, entropy.exp(), torch.zeros_like(entropy))
    return numerical, effective


def _gram_allowed(tol: float, n: int, d: int, amplification: float | Tensor = 1.0) -> Any:
    """Whether a Gram route's round-off (amplified ``amplification`` times) lies ``_GRAM_MARGIN``
    below the squared tolerance; a bool, or a bool Tensor for a Tensor ``amplification``."""
    return tol * tol > _GRAM_MARGIN * max(n, d) * torch.finfo(torch.float64).eps * amplification


def batched_ranks(
    features: Tensor, rtol: float | None = None, center: bool = False
) -> tuple[Tensor, Tensor]:
    """Numerical and effective ranks of ``C`` feature matrices ``features [C, n, d]`` at once:
    ``(LongTensor[C], float64 Tensor[C])``, the batched :func:`feature_rank` (same tolerance
    rule, from the **input** dtype) and :func:`effective_rank`.

    Computed in float64, from the eigenvalues of the smaller Gram matrix (``FᵀF`` or ``FFᵀ``,
    one batched ``eigvalsh``: far cheaper than an SVD of a tall matrix, on a GPU above all) when
    the tolerance lies well above the Gram route's round-off (see ``_GRAM_MARGIN``), else from
    batched singular values. No input checks beyond the shape: the features come from a model.
    """
    if features.ndim != 3 or 0 in features.shape:
        raise GrokinterpError(
            f"features must be [C, n, d] with n, d ≥ 1, got {tuple(features.shape)}"
        )
    _, n, d = features.shape
    dtype = features.dtype if features.is_floating_point() else torch.get_default_dtype()
    tol = rank_tolerance(n, d, dtype, rtol)
    # float64: the default threshold of float32 features, ~1e-4·σ_max, is ~1e-8·λ_max in the
    # Gram's eigenvalues, below float32 round-off
    f = features.to(torch.float64)
    if center:
        f = f - f.mean(dim=1, keepdim=True)
    if _gram_allowed(tol, n, d):
        gram = f.mT @ f if d <= n else f @ f.mT
        s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(-1)  # descending
    else:
        s = torch.linalg.svdvals(f)
    return _ranks_from_singular_values(s, tol)


# Squarings in _max_eigenvalue_bound: tr(A^8)^(1/8) overestimates λ_max by at most k^(1/8)
# (1.8 for k = 128), by ~1.1–1.3 on a trained transformer's MLP input and W_in.
_BOUND_SQUARINGS = 3


def _max_eigenvalue_bound(a: Tensor) -> Tensor:
    """An upper bound on the largest eigenvalue of each symmetric PSD ``a [C, k, k]``:
    ``tr(a^(2^s))^(1/2^s)`` (``s = _BOUND_SQUARINGS``), computed on ``a / tr(a)`` so that the
    powers cannot overflow. A handful of small matmuls, against an eigensolve for the exact value.
    """
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)
    b = a / trace.clamp(min=torch.finfo(a.dtype).tiny)[:, None, None]
    for _ in range(_BOUND_SQUARINGS):
        b = b @ b
    return trace * b.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=0) ** (0.5**_BOUND_SQUARINGS)


def _linear_singular_values(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values of the centred ``x @ w + b`` from a ``d_in × d_in`` eigenproblem:
    ``(s [C, d_in] float64 descending, amplification [C])``.

    ``x [C, n, d_in]``, ``w [C, d_in, d]``. Centred, the bias drops out: ``F_c = x_c @ w``. With
    the Cholesky factor of the input Gram ``G = x_cᵀ x_c = L Lᵀ``, ``x_c = Q Lᵀ`` for an ``n × d_in``
    ``Q`` with orthonormal columns, so ``F_c`` and ``Lᵀ w`` have the same singular values: the
    square roots of the eigenvalues of ``M = (Lᵀ w)(Lᵀ w)ᵀ`` — ``d_in`` of them; ``F_c``'s other
    singular values are exactly 0. Cholesky is backward stable whenever it completes (its ``L`` is
    exact for ``G + E``, ``‖E‖ ~ eps·‖G‖``), but ``E`` reaches ``M`` through ``w``: relative to
    ``λ_max(M) = ‖F_c‖²`` its round-off is the Gram route's times ``amplification = ‖x_c‖²‖w‖²/‖F_c‖²``
    (≥ 1; here an upper bound, ~1–2.5 on trained transformers). ``amplification`` is inf where
    the Cholesky factorisation fails (a singular or non-finite input Gram) or ``F_c = 0``: those
    ``s`` are meaningless and the caller takes the old route.
    """
    xc = x.to(torch.float64)
    xc = xc - xc.mean(dim=1, keepdim=True)
    wd = w.to(torch.float64)
    gram = xc.mT @ xc
    chol, info = torch.linalg.cholesky_ex(gram)
    ok = (info == 0) & torch.isfinite(chol).all(dim=(-2, -1))
    chol = torch.where(ok[:, None, None], chol, torch.zeros_like(chol))  # no NaN to the solver
    a = chol.mT @ wd
    lam = torch.linalg.eigvalsh(a @ a.mT)  # ascending
    s = lam.clamp(min=0).sqrt().flip(-1)
    amp = _max_eigenvalue_bound(gram) * _max_eigenvalue_bound(wd @ wd.mT) / lam[:, -1]
    amp = torch.where(ok & torch.isfinite(amp) & (lam[:, -1] > 0), amp, torch.inf)
    return s, amp


def batched_linear_ranks(
    features: Tensor, x: Tensor, w: Tensor, rtol: float | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`batched_ranks` (``center=True``) of pre-activations ``features = x @ w + b``,
    computed from ``d_in × d_in`` instead of ``d × d`` Gram matrices when ``d_in < d``.

    ``features [C, n, d]`` (their dtype and shape set the tolerance, exactly as in
    :func:`batched_ranks`), ``x [C, n, d_in]`` the layer's input, ``w [C, d_in, d]`` its weight;
    the caller guarantees ``features == x @ w + b`` up to float rounding (Fan et al. 2024's
    pre-activation features of a grokinterp MLP block). The singular values come from
    :func:`_linear_singular_values`, taken per checkpoint only where the Gram route's condition
    (``_GRAM_MARGIN``) holds with its round-off multiplied by the amplification; elsewhere, and
    when ``d_in ≥ d`` (no gain) or the Gram route is not allowed at all, :func:`batched_ranks`
    of ``features``. The shortcut is exact in exact arithmetic, so both give the same ranks; with
    float32 features the reference's singular values also carry the features' own rounding (the
    ``d − d_in`` zeros become ~1e-7·σ_max), far below the tolerance but worth up to ~2e-5 of the
    effective rank (on a trained transformer; the shortcut matches an SVD of the same features
    computed in float64 to 1e-12).
    """
    if features.ndim != 3 or 0 in features.shape:
        raise GrokinterpError(
            f"features must be [C, n, d] with n, d ≥ 1, got {tuple(features.shape)}"
        )
    c, n, d = features.shape
    if x.ndim != 3 or w.ndim != 3 or x.shape[:2] != (c, n) or w.shape != (c, x.shape[2], d):
        raise GrokinterpError(
            f"x [C, n, d_in] and w [C, d_in, d] do not fit features {tuple(features.shape)}: "
            f"got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    dtype = features.dtype if features.is_floating_point() else torch.get_default_dtype()
    tol = rank_tolerance(n, d, dtype, rtol)
    if x.shape[2] >= d or not _gram_allowed(tol, n, d):
        return batched_ranks(features, rtol=rtol, center=True)
    s, amp = _linear_singular_values(x, w)
    numerical, effective = _ranks_from_singular_values(s, tol)
    bad = ~_gram_allowed(tol, n, d, amp)
    if bad.any():  # the old route for those checkpoints
        num_bad, eff_bad = batched_ranks(features[bad], rtol=rtol, center=True)
        numerical[bad], effective[bad] = num_bad, eff_bad
    return numerical, effective


def input_weight(
    layer: str, features: Tensor, x: Tensor | None, params: Mapping[str, Tensor]
) -> Tensor | None:
    """``W_in [C, d_in, d]`` of the grokinterp MLP block whose activation is ``layer``, if its
    features are ``x @ W_in + b_in`` with ``d_in < d`` (so that :func:`batched_linear_ranks`
    applies and pays), else None.

    :class:`~grokinterp.models.components.MLPBlock` computes ``act(x @ W_in + b_in)``; a block
    without ``W_in`` (the factorised first layer of ``mlp``) or features flattened over positions
    do not fit the shapes. Rather than trust the model code, it checks the first checkpoint: its
    centred features must equal ``x_c @ W_in`` to 1e-4 of their largest entry (float32 round-off
    is ~1e-6 of it; TF32 or half-precision matmuls fail the check and take the old route)."""
    if x is None or not layer.startswith("pre:") or "#" in layer:
        return None
    module = layer[len("pre:") :]
    w = params.get(f"{module.rpartition('.')[0]}.W_in") if "." in module else None
    c, n, d = features.shape
    if w is None or w.ndim != 3 or x.ndim != 3 or x.shape[:2] != (c, n):
        return None
    if w.shape != (c, x.shape[2], d) or x.shape[2] >= d:
        return None
    f0 = features[0].to(torch.float64)
    x0 = x[0].to(torch.float64)
    err = (f0 - f0.mean(0)) - (x0 - x0.mean(0)) @ w[0].to(torch.float64)
    if not bool(err.abs().max() <= 1e-4 * f0.abs().max()):
        return None
    return w
