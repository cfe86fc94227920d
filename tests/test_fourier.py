"""Planted-truth tests of grokinterp.analysis.fourier (Nanda et al. 2023 definitions)."""

from __future__ import annotations

import math

import pytest
import torch

from grokinterp.analysis import fourier as F
from grokinterp.config import GrokinterpError


def _cos_sin(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64)
    w = 2 * math.pi * k / n
    return torch.cos(w * x), torch.sin(w * x)


# ----- basis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [3, 5, 7, 13, 59, 113])
def test_basis_orthonormal_odd_p(p):
    B = F.fourier_basis(p, torch.float64)
    assert B.shape == (p, p)
    torch.testing.assert_close(B @ B.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(B[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64))


@pytest.mark.parametrize("n", [4, 10, 58])
def test_basis_orthonormal_even_n(n):
    B = F.fourier_basis(n, torch.float64)
    torch.testing.assert_close(B @ B.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_basis_row_order_cos_before_sin():
    p = 11
    B = F.fourier_basis(p, torch.float64)
    for k in range(1, 6):
        c, s = _cos_sin(p, k)
        torch.testing.assert_close(B[2 * k - 1], c / c.norm())
        torch.testing.assert_close(B[2 * k], s / s.norm())


def test_basis_rejects_bad_p():
    for bad in (2, 1, 0, -5, 7.0, True):
        with pytest.raises(GrokinterpError, match="p"):
            F.fourier_basis(bad)


# ----- frequency norms -----------------------------------------------------------------------


@pytest.mark.parametrize("p,k", [(7, 1), (7, 3), (59, 14), (113, 41)])
def test_frequency_norms_pure_cos_is_one_hot(p, k):
    c, _ = _cos_sin(p, k)
    norms = F.frequency_norms(c[:, None] * torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64))
    assert norms.shape == ((p - 1) // 2,)
    expected = torch.zeros((p - 1) // 2, dtype=torch.float64)
    expected[k - 1] = (c[:, None] * torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)).norm()
    torch.testing.assert_close(norms, expected, atol=1e-10, rtol=1e-10)


def test_frequency_norms_phase_invariant_and_batched():
    p, k = 13, 4
    x = torch.arange(p, dtype=torch.float64)
    W1 = torch.cos(2 * math.pi * k * x / p + 0.7)[:, None]
    W2 = torch.cos(2 * math.pi * k * x / p - 1.9)[:, None]
    n1, n2 = F.frequency_norms(W1), F.frequency_norms(W2)
    torch.testing.assert_close(n1, n2)
    batched = F.frequency_norms(torch.stack([W1, W2]))
    assert batched.shape == (2, 6)
    torch.testing.assert_close(batched[1], n2)


def test_frequency_norms_parseval():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(17, 5, generator=g, dtype=torch.float64)
    norms = F.frequency_norms(W)
    const = W.sum(0).pow(2).sum() / 17
    torch.testing.assert_close(norms.pow(2).sum() + const, W.pow(2).sum())


def test_fourier_2d_product_basis():
    n, k1, k2 = 9, 2, 3
    c1, _ = _cos_sin(n, k1)
    _, s2 = _cos_sin(n, k2)
    f = torch.outer(c1, s2)
    coef = F.fourier_2d(f)
    nz = (coef.abs() > 1e-9).nonzero().tolist()
    assert nz == [[2 * k1 - 1, 2 * k2]]
    torch.testing.assert_close(coef.pow(2).sum(), f.pow(2).sum())


# ----- key frequencies -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_key_frequencies_planted_embedding(seed):
    p, d = 59, 32
    planted = [3, 14, 22, 27]
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(p, dtype=torch.float64)
    W = torch.zeros(p, d, dtype=torch.float64)
    for i, k in enumerate(planted):
        amp = 1.0 + 1.2 * i  # unequal: the paper's "norm > max/4" rule would drop the first
        w = 2 * math.pi * k / p
        W += amp * torch.outer(torch.cos(w * x), torch.randn(d, generator=g, dtype=torch.float64))
        W += amp * torch.outer(torch.sin(w * x), torch.randn(d, generator=g, dtype=torch.float64))
    W += 0.05 * torch.randn(p, d, generator=g, dtype=torch.float64)
    assert F.key_frequencies(W) == planted
    assert F.key_frequencies(W.float()) == planted


def test_key_frequencies_one_dominant_frequency_still_finds_all():
    # energies 1e4, 1, 1, 1 planted over noise 1e-6: a linear-scale split would keep only the first
    spectrum = torch.full((20,), 1e-3, dtype=torch.float64)
    spectrum[[1, 5, 9, 17]] = torch.tensor([100.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert F.select_key_frequencies(spectrum) == [2, 6, 10, 18]


def test_key_frequencies_heavy_tail_and_zero_tail():
    # 3 strong frequencies over a tail spread across five decades (like a grokked model's logits):
    # a log-scale 2-means split would take half the tail too; the largest drop takes the 3
    spectrum = torch.logspace(3.3, -2, 50, dtype=torch.float64)
    spectrum[[7, 20, 0]] = torch.tensor([2.9e4, 2.7e4, 2.3e4], dtype=torch.float64)
    assert F.select_key_frequencies(spectrum) == [1, 8, 21]
    # exact zeros at the bottom (infinite ratios) must not pull the cut down
    spectrum = torch.full((30,), 0.01, dtype=torch.float64)
    spectrum[[2, 4]] = 1.0
    spectrum[20:] = 0.0
    assert F.select_key_frequencies(spectrum) == [3, 5]
    assert F.select_key_frequencies(torch.tensor([0.0, 2.0, 0.0])) == [2]
    assert F.select_key_frequencies(torch.zeros(4)) == [1, 2, 3, 4]


def test_select_key_frequencies_validation():
    with pytest.raises(GrokinterpError, match="spectrum"):
        F.select_key_frequencies(torch.tensor([1.0, -1.0]))
    with pytest.raises(GrokinterpError, match="spectrum"):
        F.select_key_frequencies(torch.ones(2, 2))


# ----- Gini ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 56])
def test_gini_one_hot(n):
    x = torch.zeros(n)
    x[n // 2] = 3.0
    assert F.gini(x) == pytest.approx((n - 1) / n, abs=1e-7)


@pytest.mark.parametrize("n", [1, 3, 56])
def test_gini_constant(n):
    assert F.gini(torch.full((n,), 0.7)) == pytest.approx(0.0, abs=1e-7)


def test_gini_known_value_and_properties():
    # x = (0, 1, 2, 3): c/|c|_1 = (0, 1/6, 2/6, 3/6), weights (N-k+1/2)/N = (3.5, 2.5, 1.5, .5)/4
    expected = 1 - 2 * (1 / 6 * 2.5 + 2 / 6 * 1.5 + 3 / 6 * 0.5) / 4
    assert F.gini([3.0, 0.0, 2.0, 1.0]) == pytest.approx(expected)
    x = torch.rand(10, generator=torch.Generator().manual_seed(0))
    assert F.gini(x) == pytest.approx(F.gini(5 * x))  # scale invariant
    assert F.gini(x) == pytest.approx(F.gini(-x))  # magnitudes
    torch.testing.assert_close(F.gini_rows(torch.stack([x, 2 * x])), torch.full((2,), F.gini(x)))
    assert F.gini(torch.zeros(4)) == 0.0


# ----- restricted / excluded loss ------------------------------------------------------------


def _planted_logits(n: int, freqs: dict[int, float], const: float = 0.3) -> torch.Tensor:
    """L[a, b, c] = sum_k alpha_k cos(w_k (a + b - c)) + const: the grokked algorithm."""
    a = torch.arange(n, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :]) % n
    L = torch.full((n, n, n), const, dtype=torch.float64)
    for k, alpha in freqs.items():
        L += alpha * torch.cos(2 * math.pi * k * s / n)
    return L


@pytest.mark.parametrize("n", [13, 12])
def test_restricted_loss_of_key_frequency_logits_equals_full_loss(n):
    freqs = {2: 6.0, 5: 4.0}
    L = _planted_logits(n, freqs)
    labels = F.group_indexing("add", n).grid_labels() if n % 2 else None
    full = torch.nn.functional.cross_entropy(
        L.reshape(n * n, n), ((torch.arange(n)[:, None] + torch.arange(n)) % n).reshape(-1)
    ).item()
    assert F.restricted_loss(L, list(freqs), labels=labels) == pytest.approx(full, rel=1e-10)
    # removing those frequencies leaves only the constant: uniform prediction, loss ln n
    assert F.excluded_loss(L, list(freqs)) == pytest.approx(math.log(n), rel=1e-10)
    # restricting to a non-key frequency destroys the circuit as well
    assert F.restricted_loss(L, [1]) == pytest.approx(math.log(n), rel=1e-10)
    assert full < 0.5 * math.log(n)


def test_restricted_loss_removes_noise_and_positions():
    n = 11
    L = _planted_logits(n, {3: 8.0})
    noise = torch.randn(n, n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noisy = L + 3 * noise
    clean_loss = F.restricted_loss(L, [3])
    # the non-key noise is removed except for its frequency-3 and mean components
    assert abs(F.restricted_loss(noisy, [3]) - clean_loss) < abs(
        F.restricted_loss(noisy, list(range(1, 6))) - clean_loss
    )
    pos = torch.arange(0, n * n, 2)
    y = ((torch.arange(n)[:, None] + torch.arange(n)) % n).reshape(-1)
    ex = F.project_sum_frequencies(noisy, [3], keep=False)
    expected = torch.nn.functional.cross_entropy(ex[pos], y[pos]).item()
    assert F.excluded_loss(noisy, [3], positions=pos) == pytest.approx(expected, rel=1e-10)


def test_logit_frequency_energy_and_key_frequencies_from_logits():
    n = 17
    L = _planted_logits(n, {4: 5.0, 7: 2.0})
    L = L + 0.01 * torch.randn(n, n, n, generator=torch.Generator().manual_seed(1), dtype=L.dtype)
    e = F.logit_frequency_energy(L)
    assert e.shape == (8,)
    assert F.select_key_frequencies(e.sqrt()) == [4, 7]


def test_sum_directions_orthonormal():
    for n in (7, 10):
        D = F.sum_directions(n, torch.float64)
        torch.testing.assert_close(D @ D.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_loss_input_validation():
    with pytest.raises(GrokinterpError, match="logits"):
        F.restricted_loss(torch.zeros(10, 5), [1])
    with pytest.raises(GrokinterpError, match="freqs"):
        F.restricted_loss(torch.zeros(49, 7), [4])
    with pytest.raises(GrokinterpError, match="labels"):
        F.restricted_loss(torch.zeros(49, 8), [1])


# ----- neurons -------------------------------------------------------------------------------


def test_neuron_fractions_planted():
    n = 13
    x = torch.arange(n, dtype=torch.float64)
    w3, w5 = 2 * math.pi * 3 / n, 2 * math.pi * 5 / n
    a, b = x[:, None], x[None, :]
    acts = torch.stack(
        [
            1.0 + torch.cos(w3 * a) + torch.sin(w3 * b) + torch.cos(w3 * a) * torch.cos(w3 * b),
            torch.cos(w5 * (a + b)) + 0 * a,  # pure frequency 5 product terms
            torch.cos(w3 * a) + torch.cos(w5 * b),  # half / half
            torch.full((n, n), 2.0, dtype=torch.float64),  # dead (constant)
        ]
    )
    frac = F.neuron_frequency_fractions(acts)
    assert frac.shape == (4, 6)
    torch.testing.assert_close(frac[0, 2], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(frac[1, 4], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(frac[2, [2, 4]], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert frac[3].sum() == 0
    best, best_frac = F.neuron_clusters(frac)
    assert best[:2].tolist() == [3, 5] and best[3] == 0
    assert best_frac[0] == pytest.approx(1.0)


def test_neuron_fractions_relu_of_frequency_is_mostly_that_frequency():
    # a ReLU of cos(w(a+b)) has harmonics 2k, 4k...; the fundamental still dominates
    n, k = 31, 4
    x = torch.arange(n, dtype=torch.float64)
    act = torch.relu(torch.cos(2 * math.pi * k * (x[:, None] + x[None, :]) / n))[None]
    best, frac = F.neuron_clusters(F.neuron_frequency_fractions(act))
    assert best.item() == k and frac.item() > 0.8


# ----- discrete log --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [3, 5, 7, 11, 13, 59, 113])
def test_primitive_root_generates(p):
    g, power, log = F.discrete_log_table(p)
    assert sorted(power.tolist()) == list(range(1, p))
    assert log[0] == -1 and (power[log[1:]] == torch.arange(1, p)).all()


def test_primitive_root_rejects_composite():
    with pytest.raises(GrokinterpError, match="prime"):
        F.primitive_root(15)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_group_indexing_turns_operation_into_addition(op):
    p = 13
    idx = F.group_indexing(f"mod_{op}", p)
    toks = idx.grid_tokens()
    a, b = toks[:, 0], toks[:, 1]
    true = {
        "add": (a + b) % p,
        "sub": (a - b) % p,
        "mul": (a * b) % p,
        "div": (a * torch.tensor([pow(int(v), p - 2, p) for v in b])) % p,
    }[op]
    assert (idx.grid_labels() == true).all()
    assert (idx.positions(a, b) == torch.arange(idx.n * idx.n)).all()
    assert idx.n == (p - 1 if op in ("mul", "div") else p)


def test_discrete_log_makes_multiplication_fourier_sparse():
    """a*b mod p: in plain coordinates its 'a+b' spectrum is diffuse; after the discrete-log
    re-indexing it is the planted frequency only, and the restricted loss equals the full loss."""
    p, k = 13, 2
    n = p - 1
    g, power, log = F.discrete_log_table(p)
    # model computing multiplication: logit(c) = 5 cos(w_k (log a + log b - log c)), c != 0
    la = log.double()
    w = 2 * math.pi * k / n

    def logits_at(a, b):
        L = 5 * torch.cos(w * (la[a][:, None] + la[b][:, None] - la[None, 1:]))
        return torch.cat([torch.full((a.numel(), 1), -20.0, dtype=L.dtype), L], 1)

    idx = F.group_indexing("mul", p)
    toks = idx.grid_tokens()
    L_log = logits_at(toks[:, 0], toks[:, 1])  # [(p-1)^2, p] in log coordinates
    labels = idx.grid_labels()
    full = torch.nn.functional.cross_entropy(L_log, labels).item()
    assert F.select_key_frequencies(F.logit_frequency_energy(L_log).sqrt()) == [k]
    assert F.restricted_loss(L_log, [k], labels=labels) == pytest.approx(full, rel=1e-9)
    # the same model read in plain coordinates (nonzero a, b): energy spread over many frequencies
    plain = torch.arange(1, p)
    grid = torch.cartesian_prod(plain, plain)
    L_plain = logits_at(grid[:, 0], grid[:, 1])
    e_log = F.logit_frequency_energy(L_log)
    e_plain = F.logit_frequency_energy(L_plain)
    assert e_log.max() / e_log.sum() > 0.999
    assert e_plain.max() / e_plain.sum() < 0.5
    # and an embedding E[x] = cos(w_k log x) is one-hot in frequency after re-indexing
    W_E = torch.zeros(p, 4, dtype=torch.float64)
    W_E[1:] = torch.cos(w * la[1:])[:, None] * torch.tensor([1.0, 2.0, -1.0, 0.5])
    norms = F.frequency_norms(W_E[idx.a_tokens])
    assert int(norms.argmax()) + 1 == k and F.gini(norms) == pytest.approx(1 - 1 / norms.numel())
