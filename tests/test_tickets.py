"""Tests for grokinterp.analysis.tickets: exact magnitude masks, Jaccard, random and norm controls."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from grokinterp.analysis.tickets import (
    apply_mask,
    magnitude_mask,
    mask_from_scores,
    mask_jaccard,
    mask_sparsity,
    masked_norm,
    n_removed,
    norm_ratio,
    random_mask,
    random_mask_like,
    rescale_to_norm,
)
from grokinterp.config import GrokinterpError


def expected_removed(sparsity: float, n: int) -> int:
    # round half up of the exact product with the decimal the user wrote
    return int(Fraction(repr(sparsity)) * n + Fraction(1, 2))


def toy_params(seed: int = 0, factorized: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "unembed.W_U": (7, 5),
        "blocks.0.mlp.W_in": (7, 9),
        "blocks.0.mlp.W_out": (9, 7),
        "blocks.0.mlp.b_in": (9,),
        "blocks.0.attn.W_Q": (2, 7, 3),
        "blocks.0.attn.b_Q": (2, 3),  # 2-D but a bias: never prunable by default
        "unembed.b_U": (5,),
        "ln.w": (7,),
    }
    if factorized:
        shapes |= {"embed.W_A": (6, 2), "embed.W_B": (2, 7)}
    else:
        shapes["embed.W_E"] = (6, 7)
    # Different scales per tensor, so that a global threshold differs from a layerwise one.
    return {k: torch.randn(s, generator=g) * (1 + i) for i, (k, s) in enumerate(shapes.items())}


WEIGHTS = [
    "blocks.0.attn.W_Q",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.W_out",
    "embed.W_E",
    "unembed.W_U",
]


def test_default_prunable_set_includes_embeddings_excludes_biases():
    m = magnitude_mask(toy_params(), 0.5)
    assert sorted(m) == WEIGHTS
    mf = magnitude_mask(toy_params(factorized=True), 0.5)
    assert "embed.W_A" in mf and "embed.W_B" in mf and "embed.W_E" not in mf
    assert all(v.dtype == torch.bool for v in m.values())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 1 / 3, 0.6, 0.7, 0.9, 0.999, 1.0])
def test_exact_counts_global_and_layerwise(sparsity):
    p = toy_params()
    n = sum(p[k].numel() for k in WEIGHTS)
    m = magnitude_mask(p, sparsity, scope="global")
    kept = sum(int(v.sum()) for v in m.values())
    assert kept == n - expected_removed(sparsity, n)
    ml = magnitude_mask(p, sparsity, scope="layerwise")
    for k in WEIGHTS:
        nk = p[k].numel()
        assert int(ml[k].sum()) == nk - expected_removed(sparsity, nk), k


def test_n_removed_is_exact_rounding():
    assert n_removed(0.6, 10) == 6 and n_removed(0.7, 10) == 7 and n_removed(0.3, 10) == 3
    assert n_removed(0.25, 2) == 1  # 0.5 rounds half up
    assert n_removed(0.7, 35) == 25  # 24.5 → 25 although float(0.7) < 7/10
    assert n_removed(0.6, 0) == 0


@pytest.mark.parametrize("sparsity", [0.2, 0.6, 0.85])
def test_kept_are_largest_global(sparsity):
    p = toy_params(1)
    m = magnitude_mask(p, sparsity, scope="global")
    kept = torch.cat([p[k].abs()[m[k]] for k in m])
    pruned = torch.cat([p[k].abs()[~m[k]] for k in m])
    assert kept.min() >= pruned.max()
    # The global threshold must differ from a per-tensor one on these differently scaled tensors.
    ml = magnitude_mask(p, sparsity, scope="layerwise")
    assert any(not torch.equal(m[k], ml[k]) for k in m)


@pytest.mark.parametrize("sparsity", [0.2, 0.6, 0.85])
def test_kept_are_largest_per_layer(sparsity):
    p = toy_params(2)
    m = magnitude_mask(p, sparsity, scope="layerwise")
    for k in m:
        a = p[k].abs()
        assert a[m[k]].min() >= a[~m[k]].max(), k


def test_planted_values_exact_set():
    # Values 1..12 with random signs in a known layout: keeping 4 must keep exactly 9..12.
    w = torch.tensor([[3.0, -12, 5], [-1, 9, 7], [2, -4, 11], [10, -6, 8]])
    m = magnitude_mask({"W": w}, 8 / 12)
    assert m["W"].tolist() == [
        [False, True, False],
        [False, True, False],
        [False, False, True],
        [True, False, False],
    ]


def test_ties_are_deterministic_and_order_independent():
    p = {"b.W": torch.ones(2, 3), "a.W": torch.ones(2, 2)}
    m = magnitude_mask(p, 0.5)  # keep 5 of 10 equal entries
    # canonical order: sorted names (a.W first), then row-major index
    assert m["a.W"].all() and m["b.W"].reshape(-1).tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    m2 = magnitude_mask(dict(reversed(list(p.items()))), 0.5)
    assert all(torch.equal(m[k], m2[k]) for k in m)
    # -0.0 and 0.0 tie as well
    z = {"W": torch.tensor([[-0.0, 0.0, 1.0]])}
    assert magnitude_mask(z, 1 / 3)["W"].tolist() == [[True, False, True]]


def test_include_patterns_and_callable():
    p = toy_params()
    m = magnitude_mask(p, 0.5, include="blocks.*.mlp.W_*")
    assert sorted(m) == ["blocks.0.mlp.W_in", "blocks.0.mlp.W_out"]
    m = magnitude_mask(p, 0.5, include=["unembed.b_U", "embed.W_E"])  # explicit bias allowed
    assert sorted(m) == ["embed.W_E", "unembed.b_U"]
    m = magnitude_mask(p, 0.5, include=lambda n, t: n.startswith("unembed"))
    assert sorted(m) == ["unembed.W_U", "unembed.b_U"]


def test_mask_from_scores_rejects_nan_and_keeps_inf_order():
    s = {"W": torch.tensor([[1.0, float("-inf"), float("inf"), 0.5]])}
    assert mask_from_scores(s, 0.5)["W"].tolist() == [[True, False, True, False]]
    with pytest.raises(GrokinterpError, match="NaN"):
        mask_from_scores({"W": torch.tensor([[float("nan"), 1.0]])}, 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": "0.5"}, "sparsity"),
        ({"sparsity": 0.5, "scope": "local"}, "scope"),
        ({"sparsity": 0.5, "include": "nothing.*"}, "include"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(GrokinterpError, match=match):
        magnitude_mask(toy_params(), **kwargs)
    assert issubclass(GrokinterpError, ValueError)


def test_jaccard_known_values():
    a = {"W": torch.tensor([[True, True, False, False]]), "V": torch.tensor([True])}
    b = {"W": torch.tensor([[True, False, True, False]]), "V": torch.tensor([True])}
    assert mask_jaccard(a, b) == pytest.approx(2 / 4)  # ∩ = {W0, V0}, ∪ = {W0, W1, W2, V0}
    assert mask_jaccard(a, a) == 1.0
    c = {"W": ~a["W"], "V": torch.tensor([False])}
    assert mask_jaccard(a, c) == 0.0
    with pytest.raises(GrokinterpError, match="different tensors"):
        mask_jaccard(a, {"W": a["W"]})
    with pytest.raises(GrokinterpError, match="shapes"):
        mask_jaccard(a, {"W": a["W"].reshape(2, 2), "V": a["V"]})


def test_random_mask_counts_seeds_and_chance_overlap():
    p = {"W": torch.randn(200, 100)}
    r1, r2 = random_mask(p, 0.6, seed=1), random_mask(p, 0.6, seed=1)
    assert torch.equal(r1["W"], r2["W"]) and int(r1["W"].sum()) == 8000
    r3 = random_mask(p, 0.6, seed=2)
    # Two independent random masks of density d overlap by chance: J = d² / (2d − d²) = 0.25.
    assert mask_jaccard(r1, r3) == pytest.approx(0.25, abs=0.01)
    assert mask_sparsity(r1) == pytest.approx(0.6)
    like = random_mask_like(magnitude_mask(toy_params(), 0.6), seed=3)
    ref = magnitude_mask(toy_params(), 0.6)
    assert all(int(like[k].sum()) == int(ref[k].sum()) for k in ref)
    assert any(not torch.equal(like[k], ref[k]) for k in ref)


def test_norm_ratio_hand_example():
    p = {"W": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([100.0])}
    m = {"W": torch.tensor([[True, False]])}
    assert norm_ratio(p, m, 2) == pytest.approx(3 / 5, rel=1e-15)
    assert norm_ratio(p, m, 1) == pytest.approx(3 / 7, rel=1e-15)
    out = rescale_to_norm(p, m, 2)
    assert torch.allclose(out["W"], torch.tensor([[1.8, 2.4]]))
    assert torch.equal(out["b"], p["b"])  # outside the mask: untouched


@pytest.mark.parametrize("p_norm", [1, 2])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_norm_matched_control_has_exactly_target_norm(p_norm, dtype, rel):
    params = {k: v.to(dtype) for k, v in toy_params(4).items()}
    m = magnitude_mask(params, 0.6)
    target = masked_norm(params, m, p_norm)  # ‖θ⊙m‖_p
    control = rescale_to_norm(params, m, p_norm)
    full = {k: torch.ones_like(v) for k, v in m.items()}
    assert masked_norm(control, full, p_norm) == pytest.approx(target, rel=rel)
    # dense: no entry was zeroed, and all are one common multiple of θ
    r = norm_ratio(params, m, p_norm)
    for k in m:
        assert torch.allclose(control[k].double(), params[k].double() * r, rtol=rel * 10)
    # the other norm is NOT matched in general (so the two controls differ)
    other = 3 - p_norm
    assert masked_norm(control, full, other) != pytest.approx(
        masked_norm(params, m, other), rel=1e-3
    )


def test_apply_mask_zeroes_exactly():
    p = toy_params()
    m = magnitude_mask(p, 0.6)
    out = apply_mask(p, m)
    for k in m:
        assert (out[k][~m[k]] == 0).all() and torch.equal(out[k][m[k]], p[k][m[k]])
    assert torch.equal(out["unembed.b_U"], p["unembed.b_U"])
    with pytest.raises(GrokinterpError, match="shape"):
        apply_mask(p, {"embed.W_E": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(GrokinterpError, match="p="):
        masked_norm(p, m, 3)
