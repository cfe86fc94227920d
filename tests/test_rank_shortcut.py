"""The rank of an MLP block's pre-activations ``x @ W_in + b_in`` from the ``d_in × d_in`` Gram
of its input (:func:`batched_linear_ranks`, the batched ``rank`` analysis's shortcut) equals the
rank of the ``d_mlp``-wide features themselves (Fan et al. 2024's feature rank): known answers,
the fallback for a singular input Gram, and a small trained transformer against the reference."""

from __future__ import annotations

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis import rank_batched as rank_mod
from grokinterp.analysis.rank import batched_linear_ranks, batched_ranks, effective_rank
from grokinterp.config import GrokinterpError
from grokinterp.training import train

from .conftest import tiny


def _counting_fallback(monkeypatch) -> list[int]:
    """Record the number of checkpoints each call of the old route (batched_ranks) gets."""
    calls: list[int] = []
    old = rank_mod.batched_ranks

    def spy(features, *args, **kwargs):
        calls.append(features.shape[0])
        return old(features, *args, **kwargs)

    monkeypatch.setattr(rank_mod, "batched_ranks", spy)
    return calls


def _linear_features(n: int, x_rank: int, d_in: int, d: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    x = torch.randn(c, n, x_rank, generator=g, dtype=dt) @ torch.randn(
        c, x_rank, d_in, generator=g, dtype=dt
    )
    w = torch.randn(c, d_in, d, generator=g, dtype=dt) / d_in**0.5
    b = torch.randn(c, 1, d, generator=g, dtype=dt)
    return x, w, x @ w + b


def test_shortcut_singular_values_are_the_features_and_rank_is_planted(monkeypatch):
    r, d = 5, 24
    x, w, f = _linear_features(n=1000, x_rank=r, d_in=r, d=d, c=2, seed=0)
    s, amp = rank_mod._linear_singular_values(x, w)
    fc = f - f.mean(dim=1, keepdim=True)
    want = torch.linalg.svdvals(fc)  # [2, d]: r non-zero, d - r round-off
    assert s.shape == (2, r)
    torch.testing.assert_close(s, want[:, :r], rtol=1e-10, atol=0)
    assert (want[:, r:] < 1e-12 * want[:, :1]).all()  # the shortcut's implicit zeros
    # the amplification bound is ≥ the true ‖x_c‖²‖W‖²/‖F_c‖² (≥ 1) and not wildly above it
    xc = x - x.mean(dim=1, keepdim=True)
    true = (
        torch.linalg.matrix_norm(xc, 2) ** 2 * torch.linalg.matrix_norm(w, 2) ** 2 / want[:, 0] ** 2
    )
    assert (amp >= true * (1 - 1e-9)).all() and (amp <= 4 * true).all() and (true >= 1).all()
    # float32 features, as a model gives them: the known rank, by the shortcut (no fallback)
    calls = _counting_fallback(monkeypatch)
    numerical, effective = batched_linear_ranks(f.float(), x.float(), w.float())
    assert numerical.tolist() == [r, r] and calls == []
    for i in range(2):
        assert float(effective[i]) == pytest.approx(effective_rank(f[i], center=True), rel=1e-6)


def test_rank_deficient_input_gives_planted_rank_by_either_route():
    # x of rank 5 in 12 dimensions: the input Gram is singular to round-off; whether Cholesky
    # completes (tiny pivots, backward stable) or not (the old route), the rank is 5.
    x, w, f = _linear_features(n=1000, x_rank=5, d_in=12, d=40, c=3, seed=1)
    numerical, effective = batched_linear_ranks(f.float(), x.float(), w.float())
    assert numerical.tolist() == [5, 5, 5]
    torch.testing.assert_close(
        effective, batched_ranks(f.float(), center=True)[1], rtol=1e-4, atol=0
    )


def test_singular_input_gram_falls_back_to_the_old_route(monkeypatch):
    x, w, f = _linear_features(n=1000, x_rank=6, d_in=6, d=30, c=3, seed=2)
    x[1, :, 2] = 0.0  # an exactly zero input column: Cholesky meets a zero pivot
    x[2] = 0.0  # no input at all: rank 0
    f = x @ w + torch.randn(1, 1, 30, dtype=torch.float64)
    s, amp = rank_mod._linear_singular_values(x, w)
    assert torch.isfinite(amp[0]) and torch.isinf(amp[1:]).all()
    calls = _counting_fallback(monkeypatch)
    numerical, effective = batched_linear_ranks(f.float(), x.float(), w.float())
    assert numerical.tolist() == [6, 5, 0]
    assert calls == [2]  # checkpoints 1 and 2 only, in one call
    want = [effective_rank(f[i].float(), center=True) for i in range(3)]
    torch.testing.assert_close(
        effective, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0
    )


def test_shortcut_declines_where_it_does_not_pay_or_is_not_allowed(monkeypatch):
    calls = _counting_fallback(monkeypatch)
    x, w, f = _linear_features(n=1000, x_rank=8, d_in=8, d=8, c=1, seed=3)  # d_in = d: no gain
    assert batched_linear_ranks(f.float(), x.float(), w.float())[0].tolist() == [8]
    x, w, f = _linear_features(n=1000, x_rank=4, d_in=4, d=20, c=1, seed=3)  # float64: SVD route
    assert batched_linear_ranks(f, x, w)[0].tolist() == [4]
    assert calls == [1, 1]


def test_batched_rank_of_a_trained_transformer_takes_the_shortcut(tmp_path, monkeypatch):
    # p = 37: 1369 points, 1000 sampled, so that float32's tolerance admits the Gram routes
    # (at the 40 points of test_batched_dynamics every route is the SVD)
    run = train(
        tiny(["task.p=37", "train.steps=8", "train.eval_every=8"]), tmp_path / "run", progress=False
    )
    spec = {"rank": {"n_samples": 1000, "split": "both"}}
    ref = over_training(run, spec, progress=False, force=True, reference=True, device="cpu")
    taken: list[int] = []
    old = rank_mod._linear_singular_values

    def spy(x, w):
        s, amp = old(x, w)
        taken.append(int(torch.isfinite(amp).sum()))
        return s, amp

    monkeypatch.setattr(rank_mod, "_linear_singular_values", spy)
    new = over_training(run, spec, progress=False, force=True, chunk_size=3, device="cpu")
    assert sum(taken) == len(run.steps)  # every checkpoint's MLP layer went the short way
    assert set(new) == set(ref)
    for key, want in ref.items():
        got = new[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if want.is_floating_point():
            # the reference also counts the float32 features' rounding (d_mlp − d_model singular
            # values ~1e-7·σ_max), which the exact shortcut has as zeros: ~1e-5 relative
            torch.testing.assert_close(got, want, rtol=1e-4, atol=0, msg=key)
        else:
            assert torch.equal(got, want), key
    mlp = "rank/numerical/pre:blocks.0.mlp.act"
    assert (ref[mlp] > 1).all() and (ref[mlp] <= 16).all()  # capped by d_model = 16


def test_input_weight_only_where_features_are_that_linear_map():
    x, w, f = _linear_features(n=200, x_rank=4, d_in=4, d=12, c=2, seed=4)
    params = {"blocks.0.mlp.W_in": w}
    layer = "pre:blocks.0.mlp.act"
    assert rank_mod.input_weight(layer, f.float(), x.float(), params) is w
    assert rank_mod.input_weight(layer, torch.relu(f), x, params) is None  # not x @ W + b
    assert rank_mod.input_weight(layer, f, x, {"blocks.0.mlp.W_in": w.flip(1)}) is None
    assert rank_mod.input_weight(layer + "#1", f, x, params) is None  # a second call
    assert rank_mod.input_weight("pre:blocks.1.mlp.act", f, x, params) is None  # no W_in
    assert rank_mod.input_weight(layer, f, None, params) is None  # no captured input
    assert rank_mod.input_weight(layer, f[..., :4], x, {"blocks.0.mlp.W_in": w[..., :4]}) is None


def test_misfitting_shapes_are_one_line_errors():
    x, w, f = _linear_features(n=50, x_rank=3, d_in=3, d=9, c=2, seed=5)
    with pytest.raises(GrokinterpError, match="do not fit"):
        batched_linear_ranks(f, x, w[:1])
    with pytest.raises(GrokinterpError, match=r"\[C, n, d\]"):
        batched_linear_ranks(f[0], x, w)
