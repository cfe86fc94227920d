"""Fourier analysis of modular-arithmetic circuits (pure functions on tensors).

Reference: Nanda, Chan, Lieberum, Smith, Steinhardt (2023), "Progress measures for grokking via
mechanistic interpretability" (ICLR 2023). A network that has grokked ``(a + b) mod p`` embeds
tokens on a few circles ``x -> (cos w_k x, sin w_k x)`` with ``w_k = 2 pi k / p`` and computes
logits ``~ sum_k alpha_k cos(w_k (a + b - c))``. Everything here works on the cyclic group
``Z_n``; for ``mod_add`` ``n = p``. Other operations are mapped onto addition in a cyclic group by
re-indexing tokens (:func:`group_indexing`):

============  ==========================================  ======  =========================
operation     re-indexing                                  n       grid
============  ==========================================  ======  =========================
``add``       identity                                     p       all p^2 pairs
``sub``       b -> -b  (a - b = a + (-b))                  p       all p^2 pairs
``mul``       x -> log_g x (g a primitive root of prime p) p - 1   a, b != 0 (answer != 0)
``div``       a -> log_g a, b -> -log_g b                  p - 1   a, b != 0
other         identity (spectra only, no a+b structure)    p       all p^2 pairs
============  ==========================================  ======  =========================

Conventions: frequencies are numbered ``k = 1 .. n // 2`` (1-based, as in the paper); index
``k - 1`` of a spectrum holds frequency ``k``. For odd ``n`` there are ``(n - 1) / 2``
frequencies, each with a cos and a sin row; for even ``n`` (the discrete-log group of order
``p - 1``) the last frequency ``n / 2`` (Nyquist) has a cos row only. Functions on the input grid
are indexed ``[a_pos, b_pos]`` (row-major when flattened: position ``i * n + j``), in group
coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from einops import einsum, rearrange
from torch import Tensor

from grokinterp.analysis.groups import (  # re-exported: part of this module's API
    GroupIndexing,
    discrete_log_table,
    group_indexing,
    is_prime,
    primitive_root,
)
from grokinterp.config import GrokinterpError

__all__ = [
    "GroupIndexing",
    "discrete_log_table",
    "excluded_loss",
    "fourier_2d",
    "fourier_basis",
    "frequency_norms",
    "gini",
    "gini_rows",
    "group_indexing",
    "is_prime",
    "key_frequencies",
    "logit_frequency_energy",
    "neuron_clusters",
    "neuron_frequency_fractions",
    "n_frequencies",
    "primitive_root",
    "project_sum_frequencies",
    "restricted_loss",
    "select_key_frequencies",
    "sum_directions",
]


# ---------------------------------------------------------------------------------------------
# Basis
# ---------------------------------------------------------------------------------------------


def _check_order(n: int, name: str = "p") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise GrokinterpError(f"{name} must be an integer >= 3, got {n!r}")
    return n


def n_frequencies(n: int) -> int:
    """Number of non-constant frequencies of ``Z_n``: ``n // 2`` (``(p - 1) / 2`` for odd p)."""
    return _check_order(n, "n") // 2


@lru_cache(maxsize=32)
def _basis_f64(n: int) -> Tensor:
    x = torch.arange(n, dtype=torch.float64)
    rows = [torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)]
    for k in range(1, (n - 1) // 2 + 1):
        w = 2 * math.pi * k / n
        rows.append(torch.cos(w * x) * math.sqrt(2.0 / n))
        rows.append(torch.sin(w * x) * math.sqrt(2.0 / n))
    if n % 2 == 0:
        # Nyquist frequency n/2: sin vanishes on the integers, cos is (-1)^x.
        rows.append(torch.cos(math.pi * x) / math.sqrt(n))
    return torch.stack(rows)


def fourier_basis(p: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal real Fourier basis of functions on ``Z_p``, shape ``[p, p]``.

    Rows (Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability"):
    row 0 is the constant ``1/sqrt(p)``; rows ``2k-1`` and ``2k`` are ``cos(w_k x)`` and
    ``sin(w_k x)`` (``w_k = 2 pi k / p``), each scaled to unit norm. Unlike the TransformerLens demo,
    cos comes before sin. For even ``p`` (used for the discrete-log group of order ``p - 1``) the
    last row is the Nyquist cos row ``(-1)^x / sqrt(p)``.

    Args:
        p: group order, an integer >= 3.
        dtype: floating dtype of the result (computed in float64).

    Returns:
        ``B`` with ``B @ B.T == I``; ``B @ f`` gives the Fourier coefficients of ``f [p]``.
    """
    _check_order(p)
    return _basis_f64(p).to(dtype)


def _freq_of_row(n: int) -> Tensor:
    """Frequency (0 = constant) of each basis row, shape ``[n]``."""
    idx = torch.arange(n)
    return (idx + 1) // 2


def _freq_onehot(n: int, dtype: torch.dtype) -> Tensor:
    """``[n, n//2 + 1]`` one-hot map from basis rows to frequencies (column 0 = constant)."""
    return torch.nn.functional.one_hot(_freq_of_row(n), n // 2 + 1).to(dtype)


def _as_float(x: Tensor | Sequence[float], name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError) as e:
            raise GrokinterpError(
                f"{name} must be a tensor of numbers, got {type(x).__name__}"
            ) from e
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.int16)):
        raise GrokinterpError(f"{name} must be a real tensor, got dtype {x.dtype}")
    x = x.detach()  # analyses never differentiate through these measures
    return x if x.is_floating_point() else x.double()


# ---------------------------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------------------------


def frequency_norms(W: Tensor) -> Tensor:
    """Per-frequency L2 norm of the rows-as-group-elements matrix ``W``.

    Nanda et al. (2023) read the embedding ``W_E [p, d_model]`` (without the ``=`` token) and the
    neuron-to-logit map ``W_L`` (transposed to ``[p, d_mlp]``, one row per output class) in the
    Fourier basis: ``F = B @ W`` and, for frequency ``k``, ``norm_k = sqrt(|F[cos_k]|^2 +
    |F[sin_k]|^2)`` (Frobenius over the ``d`` columns). The constant row is left out.

    Args:
        W: ``[p, d]`` (or ``[p]``, or batched ``[..., p, d]``); dimension ``-2`` indexes ``Z_p``.

    Returns:
        ``[..., p // 2]``; entry ``k - 1`` is frequency ``k``.
    """
    W = _as_float(W, "W")
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim < 2:
        raise GrokinterpError(f"W must have shape [p, d], got {tuple(W.shape)}")
    n = _check_order(W.shape[-2], "W.shape[-2] (p)")
    B = fourier_basis(n, W.dtype).to(W.device)
    F = einsum(B, W, "r x, ... x d -> ... r d")
    energy_rows = F.pow(2).sum(-1)  # [..., n]
    energy = energy_rows @ _freq_onehot(n, W.dtype).to(W.device)  # [..., K+1]
    return energy[..., 1:].sqrt()


def fourier_2d(f: Tensor) -> Tensor:
    """2-D Fourier transform of functions on the ``(a, b)`` grid of ``Z_n x Z_n``.

    ``F = B f B^T`` with ``B = fourier_basis(n)``, so ``F[r, s]`` is the coefficient of the
    product basis function ``B[r](a) B[s](b)`` (Nanda et al. 2023, used for neuron activations and
    logits). Orthonormal: ``sum F^2 == sum f^2``.

    Args:
        f: ``[..., n, n]`` (grid in the last two dimensions: a, then b).

    Returns:
        ``[..., n, n]`` coefficients.
    """
    f = _as_float(f, "f")
    if f.ndim < 2 or f.shape[-1] != f.shape[-2]:
        raise GrokinterpError(f"f must have shape [..., n, n], got {tuple(f.shape)}")
    n = _check_order(f.shape[-1], "f.shape[-1] (n)")
    B = fourier_basis(n, f.dtype).to(f.device)
    return einsum(B, f, B, "r a, ... a b, s b -> ... r s")


@lru_cache(maxsize=32)
def _sum_directions_f64(n: int) -> Tensor:
    B = _basis_f64(n)
    a = torch.arange(n)
    s = (a[:, None] + a[None, :]) % n  # [n, n]
    return B[:, s.reshape(-1)] / math.sqrt(n)


def sum_directions(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal directions on the ``n x n`` grid that depend only on ``a + b``: ``[n, n * n]``.

    Row ``r`` is ``B[r]((a + b) mod n) / sqrt(n)``: row 0 constant, rows ``2k-1, 2k`` are
    ``cos w_k(a+b)`` and ``sin w_k(a+b)`` normalised. Equivalently (Nanda et al. 2023)
    ``cos w(a+b) = (cos_k (x) cos_k - sin_k (x) sin_k) / sqrt 2`` and
    ``sin w(a+b) = (sin_k (x) cos_k + cos_k (x) sin_k) / sqrt 2`` in the 2-D basis. Orthonormal
    because every residue of ``a + b`` occurs exactly ``n`` times on the grid.
    """
    _check_order(n, "n")
    return _sum_directions_f64(n).to(dtype)


def _grid_logits(logits: Tensor, name: str = "logits") -> tuple[Tensor, int]:
    """Accept ``[n, n, C]`` or ``[n*n, C]``; return ``[n*n, C]`` float64 and ``n``."""
    logits = _as_float(logits, name)
    if logits.ndim == 3 and logits.shape[0] == logits.shape[1]:
        n = logits.shape[0]
        logits = rearrange(logits, "a b c -> (a b) c")
    elif logits.ndim == 2:
        n = math.isqrt(logits.shape[0])
        if n * n != logits.shape[0]:
            raise GrokinterpError(
                f"{name} must be [n, n, C] or [n*n, C] on the full grid, got {tuple(logits.shape)}"
            )
    else:
        raise GrokinterpError(f"{name} must be [n, n, C] or [n*n, C], got {tuple(logits.shape)}")
    _check_order(n, f"{name} grid size n")
    return logits.double(), n


def _check_freqs(freqs: Sequence[int], n: int) -> list[int]:
    out = sorted({int(k) for k in freqs})
    K = n // 2
    if any(k < 1 or k > K for k in out) or any(isinstance(k, bool) for k in freqs):
        raise GrokinterpError(f"freqs must be integers in 1..{K} (n={n}), got {list(freqs)}")
    return out


def _rows_of(freqs: Sequence[int], n: int) -> list[int]:
    rows: list[int] = []
    for k in freqs:
        if n % 2 == 0 and k == n // 2:
            rows.append(n - 1)
        else:
            rows.extend([2 * k - 1, 2 * k])
    return rows


def logit_frequency_energy(logits: Tensor) -> Tensor:
    """Energy of the logits along the ``cos/sin w_k(a+b)`` directions, per frequency.

    ``E_k = sum_c <L[:, c], cos_k(a+b)>^2 + <L[:, c], sin_k(a+b)>^2`` with unit directions from
    :func:`sum_directions` (Nanda et al. 2023: a grokked model's logits are
    ``~ sum_k alpha_k cos(w_k(a+b-c))``, so their energy sits on a few ``k``).

    Args:
        logits: ``[n, n, C]`` or ``[n*n, C]`` on the full grid in group coordinates.

    Returns:
        ``[n // 2]`` float64 (entry ``k - 1`` is frequency ``k``).
    """
    L, n = _grid_logits(logits)
    coef = _sum_directions_f64(n).to(L.device) @ L  # [n, C]
    energy = coef.pow(2).sum(-1) @ _freq_onehot(n, torch.float64).to(L.device)
    return energy[1:]


def project_sum_frequencies(logits: Tensor, freqs: Sequence[int], keep: bool = True) -> Tensor:
    """Keep (or remove) the ``cos/sin w_k(a+b)`` components of logits for ``k in freqs``.

    ``keep=True`` gives Nanda et al.'s (2023) *restricted* logits: the projection of each output
    column onto span{1, cos w_k(a+b), sin w_k(a+b) : k in freqs} (the constant term is the mean
    over the grid, added back). ``keep=False`` gives the *excluded* logits: those ``k``
    components subtracted, everything else (mean included) kept.

    Returns:
        float64 logits with the input's shape convention flattened to ``[n*n, C]``.
    """
    L, n = _grid_logits(logits)
    ks = _check_freqs(freqs, n)
    D = _sum_directions_f64(n).to(L.device)
    rows = _rows_of(ks, n)
    if keep:
        rows = [0, *rows]
    Dk = D[rows]
    proj = Dk.T @ (Dk @ L)
    return proj if keep else L - proj


def _cross_entropy(logits: Tensor, labels: Tensor, positions: Tensor | None) -> Tensor:
    if positions is not None:
        logits, labels = logits[positions], labels[positions]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -logp.gather(-1, labels[:, None]).mean()


def _grid_labels(labels: Tensor | None, n: int, C: int, device: torch.device) -> Tensor:
    if labels is None:
        if C != n:
            raise GrokinterpError(
                f"labels must be given when the number of classes ({C}) differs from n ({n})"
            )
        a = torch.arange(n, device=device)
        return ((a[:, None] + a[None, :]) % n).reshape(-1)
    labels = torch.as_tensor(labels, device=device).reshape(-1).long()
    if labels.numel() != n * n or labels.min() < 0 or labels.max() >= C:
        raise GrokinterpError(f"labels must hold {n * n} class indices in 0..{C - 1}")
    return labels


def _check_positions(positions: Tensor | None, n: int) -> Tensor | None:
    if positions is None:
        return None
    positions = torch.as_tensor(positions).long().reshape(-1)
    if positions.numel() == 0 or positions.min() < 0 or positions.max() >= n * n:
        raise GrokinterpError(f"positions must be a non-empty index set into 0..{n * n - 1}")
    return positions


def restricted_loss(
    logits: Tensor,
    freqs: Sequence[int],
    labels: Tensor | None = None,
    positions: Tensor | None = None,
) -> float:
    """Restricted loss (Nanda et al. 2023, "Progress measures for grokking", §5.1).

    Project every output column of the logits on the full ``n x n`` grid onto the
    ``cos w_k(a+b)``, ``sin w_k(a+b)`` directions of the key frequencies plus the constant (the
    mean over the grid), then take the mean cross-entropy (float64). Low restricted loss means the
    key-frequency circuit alone already solves the task; it falls before the test loss does.

    Args:
        logits: ``[n, n, C]`` or ``[n*n, C]`` on the full grid (group coordinates).
        freqs: key frequencies (1-based).
        labels: ``[n*n]`` correct class per grid position; default ``(a + b) mod n`` (needs
            ``C == n``, classes in group order).
        positions: grid positions to evaluate on; default all ``n*n`` (the paper's choice).
    """
    L, n = _grid_logits(logits)
    y = _grid_labels(labels, n, L.shape[-1], L.device)
    pos = _check_positions(positions, n)
    return float(_cross_entropy(project_sum_frequencies(L, freqs, keep=True), y, pos))


def excluded_loss(
    logits: Tensor,
    freqs: Sequence[int],
    labels: Tensor | None = None,
    positions: Tensor | None = None,
) -> float:
    """Excluded loss (Nanda et al. 2023, "Progress measures for grokking", §5.1).

    Remove the key-frequency ``cos/sin w_k(a+b)`` components from every output column of the
    logits (projection computed over the full grid) and take the mean cross-entropy on the
    *training* pairs. It rises during circuit formation: the memorising solution is being
    replaced by the Fourier circuit, so removing that circuit hurts training performance.

    Args:
        logits, freqs, labels: as in :func:`restricted_loss`.
        positions: grid positions of the training pairs (the paper evaluates on the training set;
            default all positions).
    """
    L, n = _grid_logits(logits)
    y = _grid_labels(labels, n, L.shape[-1], L.device)
    pos = _check_positions(positions, n)
    return float(_cross_entropy(project_sum_frequencies(L, freqs, keep=False), y, pos))


# ---------------------------------------------------------------------------------------------
# Key frequencies
# ---------------------------------------------------------------------------------------------


def select_key_frequencies(spectrum: Tensor) -> list[int]:
    """Threshold-free choice of the key frequencies from a non-negative spectrum.

    Rule: *the largest gap.* Sort the norms in decreasing order, ``s_(1) >= s_(2) >= ...``, and cut
    where the ratio ``s_(m) / s_(m+1)`` between neighbours is largest, over ``m = 1 .. K // 2``
    (key frequencies are a minority: the representation is sparse). The ``m`` largest are the key
    frequencies. Norms are floored at ``1e-12 * max`` so exact zeros do not divide by zero.

    Why: a grokked network uses a handful of frequencies whose norms stand well above the
    weight-decayed rest (Nanda et al. 2023), so the sorted spectrum has one clear drop; the key
    frequencies themselves can differ several-fold in strength. The largest ratio finds that drop
    with no tuned constant (unlike the paper code's "norm > max/4" or an "explains 90 %" rule) and
    is invariant to rescaling. Two alternatives were measured and rejected: a two-class Otsu split
    of the log-energies over-selects when the tail is spread over decades (14 frequencies on the
    logits of a grokked ``nanda2023`` run whose embedding, ``W_L`` and neuron clusters all show 3),
    and a linear-scale Otsu split drops real but weaker key frequencies (on the ``demo`` run's
    logits it kept 3 of the 4 shared by embedding, ``W_L`` and neurons). The largest gap agrees
    with all three on both runs. Restricting the cut to the upper half keeps a noisy tail of
    near-zero norms (whose ratios can be large) from winning. On an unstructured spectrum (e.g. at
    initialisation) the rule still returns something; use the Gini coefficient to judge whether
    there is structure at all.

    Args:
        spectrum: ``[K]`` non-negative norms; entry ``k - 1`` is frequency ``k``.

    Returns:
        Sorted list of 1-based frequencies (never empty).
    """
    s = _as_float(spectrum, "spectrum").double()
    if s.ndim != 1 or s.numel() < 1:
        raise GrokinterpError(f"spectrum must be a non-empty 1-D tensor, got {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise GrokinterpError("spectrum must be finite and non-negative")
    K = s.numel()
    if s.max() == 0:
        return list(range(1, K + 1))
    if K < 2:
        return [1]
    xs, order = torch.sort(s.clamp_min(1e-12 * s.max()), descending=True, stable=True)
    ratios = xs[:-1] / xs[1:]  # ratios[m - 1] = s_(m) / s_(m+1)
    m = int(torch.argmax(ratios[: max(1, K // 2)])) + 1  # first maximum: the smaller key set
    return sorted(int(k) + 1 for k in order[:m])


def key_frequencies(W: Tensor) -> list[int]:
    """Key frequencies of a ``[p, d]`` matrix (e.g. the embedding ``W_E`` without ``=``).

    ``select_key_frequencies(frequency_norms(W))``: the frequencies above the largest drop of the
    sorted norms (see :func:`select_key_frequencies` for the rule and why). Nanda et al. (2023) found the embedding
    of a grokked p=113 model concentrated on ~5-6 frequencies. For the logits use
    ``select_key_frequencies(logit_frequency_energy(logits).sqrt())``.

    Returns:
        Sorted list of 1-based frequencies.
    """
    W = _as_float(W, "W")
    if W.ndim not in (1, 2):
        raise GrokinterpError(f"W must have shape [p, d] or [p], got {tuple(W.shape)}")
    return select_key_frequencies(frequency_norms(W))


# ---------------------------------------------------------------------------------------------
# Sparsity
# ---------------------------------------------------------------------------------------------


def gini_rows(x: Tensor) -> Tensor:
    """Gini coefficient along the last dimension (batched form of :func:`gini`)."""
    x = _as_float(x, "x")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise GrokinterpError(f"x must have a non-empty last dimension, got {tuple(x.shape)}")
    out_dtype, N = x.dtype, x.shape[-1]
    c, _ = torch.sort(x.double().abs(), dim=-1)  # float64: float32 sums miss (N-1)/N and 0
    total = c.sum(-1, keepdim=True)
    k = torch.arange(1, N + 1, dtype=c.dtype, device=c.device)
    weights = (N - k + 0.5) / N
    share = torch.where(total > 0, c / total.clamp_min(torch.finfo(c.dtype).tiny), 0.0)
    g = 1.0 - 2.0 * (share * weights).sum(-1)
    return torch.where(total.squeeze(-1) > 0, g, torch.zeros_like(g)).to(out_dtype)


def gini(x: Tensor | Sequence[float]) -> float:
    """Gini coefficient of a vector's magnitudes (Hurley & Rickard 2009, "Comparing measures of
    sparsity"), the sparsity measure Nanda et al. (2023) track for the Fourier norms.

    ``G = 1 - 2 sum_k (c_(k) / |c|_1) (N - k + 1/2) / N`` with ``c = |x|`` sorted ascending,
    ``k = 1..N``. A one-hot vector gives ``(N - 1) / N``; a constant vector gives 0. The all-zero
    vector is defined to have ``G = 0``.
    """
    x = _as_float(x, "x")
    if x.ndim != 1:
        raise GrokinterpError(f"x must be 1-D, got shape {tuple(x.shape)}")
    return float(gini_rows(x.double()))


# ---------------------------------------------------------------------------------------------
# Neurons
# ---------------------------------------------------------------------------------------------


def neuron_frequency_fractions(acts: Tensor) -> Tensor:
    """Fraction of each neuron's variance explained by each single frequency.

    Nanda et al. (2023) find each MLP neuron of a grokked model well approximated by a constant
    plus terms of one frequency ``k``: ``cos/sin(w_k a)``, ``cos/sin(w_k b)`` and the four products
    ``{cos,sin}(w_k a) {cos,sin}(w_k b)``. With ``F = fourier_2d(act)`` the frequency-``k`` part is
    the coefficients ``(r, s)`` with ``freq(r), freq(s) in {0, k}``, not both 0; its share of the
    non-constant energy ``sum F^2 - F[0, 0]^2`` (= the variance times ``n^2``) is returned.

    Args:
        acts: ``[N, n, n]`` activations of ``N`` neurons on the grid (or ``[n, n, N]`` is NOT
            accepted: put neurons first).

    Returns:
        ``[N, n // 2]`` fractions in ``[0, 1]`` (0 for constant/dead neurons).
    """
    acts = _as_float(acts, "acts")
    if acts.ndim != 3 or acts.shape[-1] != acts.shape[-2]:
        raise GrokinterpError(f"acts must have shape [N, n, n], got {tuple(acts.shape)}")
    n = acts.shape[-1]
    F = fourier_2d(acts)
    M = _freq_onehot(n, F.dtype).to(F.device)  # [n, K+1]
    G = einsum(M, F.pow(2), M, "r i, N r s, s j -> N i j")  # energy per (freq_a, freq_b)
    var = G.sum((-1, -2)) - G[:, 0, 0]
    per_k = G[:, 1:, 0] + G[:, 0, 1:] + torch.diagonal(G, dim1=-2, dim2=-1)[:, 1:]
    scale = var.clamp_min(torch.finfo(F.dtype).tiny)[:, None]
    # Tiny variance relative to the mean is numerically constant: call it explained by nothing.
    alive = var > 1e-12 * (G[:, 0, 0] + var)
    return torch.where(alive[:, None], per_k / scale, 0.0).clamp(0.0, 1.0)


def neuron_clusters(fractions: Tensor) -> tuple[Tensor, Tensor]:
    """Cluster neurons by their best frequency (Nanda et al. 2023).

    Args:
        fractions: ``[N, K]`` from :func:`neuron_frequency_fractions`.

    Returns:
        ``(best_freq [N] int64, best_fraction [N])``; ``best_freq`` is 1-based, 0 for a neuron
        with no variance (dead). Cluster sizes: ``torch.bincount(best_freq, minlength=K + 1)``.
    """
    fractions = _as_float(fractions, "fractions")
    if fractions.ndim != 2:
        raise GrokinterpError(f"fractions must have shape [N, K], got {tuple(fractions.shape)}")
    best_frac, idx = fractions.max(-1)
    best = torch.where(best_frac > 0, idx + 1, torch.zeros_like(idx))
    return best, best_frac
