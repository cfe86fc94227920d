"""Pruning-at-initialization scores checked against hand-computed values on 2-layer toys."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokinterp.analysis.pruning import (
    grasp_scores,
    pruning_mask,
    random_scores,
    snip_scores,
    synflow_scores,
)
from grokinterp.analysis.tickets import mask_from_scores
from grokinterp.config import GrokinterpError


class TwoLayer(nn.Module):
    """out = W2 · relu(W1 · x) (no biases); shapes W1 [h, d], W2 [c, h]."""

    def __init__(self, w1, w2):
        super().__init__()
        self.W1 = nn.Parameter(torch.as_tensor(w1, dtype=torch.float64))
        self.W2 = nn.Parameter(torch.as_tensor(w2, dtype=torch.float64))

    def forward(self, x):
        return torch.relu(x @ self.W1.T) @ self.W2.T


def half_sq(out, y):  # L = ½ Σ (out − y)²: simple hand derivatives
    return 0.5 * ((out - y) ** 2).sum()


W1 = [[1.0, -2.0], [3.0, 0.5]]
W2 = [[-1.0, 2.0]]
X = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
Y = torch.tensor([[0.0]], dtype=torch.float64)
# By hand: pre = W1 x = [-3, 4], h = [0, 4], out = 8, r = 8; D = diag(0, 1).
# g2 = r hᵀ = [[0, 32]];  g1 = D W2ᵀ r xᵀ = [[0, 0], [16, 32]].


def test_snip_hand_values():
    s = snip_scores(TwoLayer(W1, W2), X, Y, half_sq)
    assert s["W1"].tolist() == [[0.0, 0.0], [48.0, 16.0]]  # |g1 ⊙ W1|
    assert s["W2"].tolist() == [[0.0, 64.0]]  # |g2 ⊙ W2|


def test_grasp_hand_values():
    # Hg = d/dε ∇L(θ + ε g): δh = D G1 x = [0, 80], δr = G2 h + W2 δh = 128 + 160 = 288,
    # (Hg)_1 = D (G2ᵀ r + W2ᵀ δr) xᵀ = [[0, 0], [832, 1664]],
    # (Hg)_2 = δr hᵀ + r δhᵀ = [[0, 1152 + 640]] = [[0, 1792]].
    model = TwoLayer(W1, W2)
    s = grasp_scores(model, X, Y, half_sq)
    assert s["W1"].tolist() == [[0.0, 0.0], [3 * 832.0, 0.5 * 1664.0]]  # θ ⊙ Hg (kept if large)
    assert s["W2"].tolist() == [[0.0, 2 * 1792.0]]
    paper = grasp_scores(model, X, Y, half_sq, paper_sign=True)  # S(−θ) = −θ ⊙ Hg
    assert paper["W1"].tolist() == [[0.0, 0.0], [-2496.0, -832.0]]
    assert model.W1.grad is None  # the model's .grad fields are untouched


def test_grasp_matches_closed_form_on_a_batch():
    # Sum over a batch: H g with g the total gradient, D_n fixed per sample (ReLU).
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 3, generator=g).double(), torch.randn(2, 4, generator=g).double()
    x, y = torch.randn(5, 3, generator=g).double(), torch.randn(5, 2, generator=g).double()
    pre = x @ w1.T
    d = (pre > 0).double()
    h = d * pre
    r = h @ w2.T - y
    g1 = ((r @ w2) * d).T @ x
    g2 = r.T @ h
    dh = d * (x @ g1.T)
    dr = h @ g2.T + dh @ w2.T
    hg1 = ((r @ g2 + dr @ w2) * d).T @ x
    hg2 = dr.T @ h + r.T @ dh
    s = grasp_scores(TwoLayer(w1, w2), x, y, half_sq)
    assert torch.allclose(s["W1"], w1 * hg1) and torch.allclose(s["W2"], w2 * hg2)
    sn = snip_scores(TwoLayer(w1, w2), x, y, half_sq)
    assert torch.allclose(sn["W1"], (w1 * g1).abs()) and torch.allclose(sn["W2"], (w2 * g2).abs())


def test_synflow_single_shot_hand_values():
    # R = 1ᵀ|W2||W1|1: ∂R/∂|W1|_ij = colsum|W2|_i = [1, 2]; ∂R/∂|W2|_ki = rowsum|W1|_i = [3, 3.5].
    model = TwoLayer(W1, W2)
    s = synflow_scores(model, X, sparsity=0.5, rounds=1)
    assert s["W1"].tolist() == [[1.0, 2.0], [6.0, 1.0]]
    assert s["W2"].tolist() == [[3.0, 7.0]]
    assert model.W1.tolist() == W1  # the model is not modified (signs kept)


def hand_topk(scores: dict, n_keep: int) -> dict:
    flat = torch.cat([scores[k].reshape(-1) for k in sorted(scores)])
    thr = torch.sort(flat, descending=True).values[n_keep - 1]
    assert (flat == thr).sum() == 1  # this hand check assumes distinct scores at the threshold
    return {k: scores[k] >= thr for k in scores}


def test_synflow_two_rounds_by_hand():
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(6, 4, generator=g).double(), torch.randn(3, 6, generator=g).double()
    n, sparsity = 24 + 18, 0.8
    a1, a2 = w1.abs(), w2.abs()
    # round 1: single-shot scores, keep (1 − 0.8)^(1/2) of 42 → remove round(42·(1 − √0.2))
    s1 = {"W1": a1 * a2.sum(0)[:, None], "W2": a2 * a1.sum(1)[None, :]}
    removed1 = int(n * (1 - 0.2**0.5) + 0.5)
    m = hand_topk(s1, n - removed1)
    # round 2: scores of the masked |θ|, keep n − round(0.8·42)
    b1, b2 = a1 * m["W1"], a2 * m["W2"]
    s2 = {"W1": b1 * b2.sum(0)[:, None], "W2": b2 * b1.sum(1)[None, :]}
    s2 = {k: torch.where(m[k], v, torch.tensor(-float("inf")).double()) for k, v in s2.items()}
    final = hand_topk(s2, n - 34)
    model = TwoLayer(w1, w2)
    got = synflow_scores(model, torch.zeros(1, 4), sparsity=sparsity, rounds=2)
    assert torch.allclose(got["W1"], s2["W1"]) and torch.allclose(got["W2"], s2["W2"])
    mask = pruning_mask("synflow", model, torch.zeros(1, 4), sparsity=sparsity, rounds=2)
    assert all(torch.equal(mask[k], final[k]) for k in final)
    assert sum(int(v.sum()) for v in mask.values()) == 8


class TokenToy(HookedRootModule):
    """logits = Σ_pos W_E[x_pos] · W_U; token model with the TransformerLens hook name."""

    def __init__(self, w_e, w_u):
        super().__init__()
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.as_tensor(w_e))
        self.hook_embed = HookPoint()
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(torch.as_tensor(w_u))
        self.setup()

    def forward(self, x):
        e = self.hook_embed(self.embed.W_E[x])  # [batch, pos, d]
        return e.sum(1) @ self.unembed.W_U


def test_synflow_token_model_feeds_all_ones_through_embedding():
    g = torch.Generator().manual_seed(1)
    w_e, w_u = torch.randn(5, 3, generator=g), torch.randn(3, 4, generator=g)
    x = torch.tensor([[0, 1, 4], [2, 2, 3]])
    s = synflow_scores(TokenToy(w_e, w_u), x, sparsity=0.3, rounds=1)
    # every position gets 1ᵀ|W_E| =: e (3 positions); R = 3 · Σ_j e_j · rowsum|W_U|_j
    e, u = w_e.abs().sum(0).double(), w_u.abs().sum(1).double()
    assert torch.allclose(s["embed.W_E"], w_e.abs().double() * 3 * u[None, :])
    assert torch.allclose(s["unembed.W_U"], w_u.abs().double() * 3 * e[:, None])
    assert (s["embed.W_E"] > 0).all()  # every vocabulary row receives flow


def test_random_scores_seeded_and_masks_exact():
    model = TwoLayer(torch.randn(10, 8), torch.randn(3, 10))
    a, b, c = random_scores(model, 0), random_scores(model, 0), random_scores(model, 1)
    assert torch.equal(a["W1"], b["W1"]) and not torch.equal(a["W1"], c["W1"])
    x, y = torch.randn(6, 8).double(), torch.randint(0, 3, (6,))
    for method in ("magnitude", "random", "snip", "grasp", "synflow"):
        m = pruning_mask(method, model, x, y, sparsity=0.6, rounds=5)
        assert sum(int(v.sum()) for v in m.values()) == 110 - 66, method
    lw = pruning_mask("snip", model, x, y, sparsity=0.5, scope="layerwise")
    assert int(lw["W1"].sum()) == 40 and int(lw["W2"].sum()) == 15
    # GraSP keeps the largest θ⊙Hg, i.e. removes the largest paper score S(−θ)
    sg = grasp_scores(model, x, y)
    assert all(
        torch.equal(pruning_mask("grasp", model, x, y, 0.6)[k], mask_from_scores(sg, 0.6)[k])
        for k in sg
    )


def test_pruning_validation():
    model = TwoLayer(W1, W2)
    with pytest.raises(GrokinterpError, match="method"):
        pruning_mask("obd", model, X, Y)
    with pytest.raises(GrokinterpError, match="needs x and y"):
        pruning_mask("snip", model, X)
    with pytest.raises(GrokinterpError, match="rounds"):
        synflow_scores(model, X, 0.5, rounds=0)
    with pytest.raises(GrokinterpError, match="sparsity"):
        synflow_scores(model, X, 1.5)
    with pytest.raises(GrokinterpError, match="hook_embed"):
        synflow_scores(model, torch.tensor([[0, 1]]), 0.5)
