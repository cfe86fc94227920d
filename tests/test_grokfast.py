"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow
Gradients"): hand-computed sequences on a scalar parameter, state round trips, and bit-exact
resume of a training run with a filter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokinterp.config import GrokinterpError, apply_overrides
from grokinterp.store import Run
from grokinterp.training import group as group_mod
from grokinterp.training import train
from grokinterp.training.optim import GrokfastEMA, GrokfastMA, make_gradient_filter


def _filtered(filt, grads: list[float], start: int = 0, p: nn.Parameter | None = None):
    """Feed the gradient sequence ``grads`` through ``filt`` on one scalar parameter."""
    p = p if p is not None else nn.Parameter(torch.zeros((), dtype=torch.float64))
    out = []
    for g in grads[start:]:
        p.grad = torch.tensor(g, dtype=torch.float64)
        filt([p])
        out.append(float(p.grad))
    return out


GRADS = [1.0, 2.0, -1.0, 0.5, 3.0]


def test_ema_matches_hand_computed_sequence():
    # alpha = 0.5, lambda = 2; mu_1 = g_1 (no bias correction), mu_t = .5 mu + .5 g; out = g + 2 mu
    # mu: 1, 1.5, 0.25, 0.375, 1.6875 -> out: 3, 5, -0.5, 1.25, 6.375
    assert _filtered(GrokfastEMA(alpha=0.5, lamb=2.0), GRADS) == [3.0, 5.0, -0.5, 1.25, 6.375]


def test_ema_with_alpha_zero_is_a_gradient_scale():
    # alpha = 0: mu = g, so the filter multiplies every gradient by 1 + lambda
    assert _filtered(GrokfastEMA(alpha=0.0, lamb=0.5), GRADS) == [1.5 * g for g in GRADS]


def test_ma_matches_hand_computed_sequence_with_warmup():
    # window 3, lambda 1, mean; untouched until the queue is full
    # queue means from step 3: (1+2-1)/3, (2-1+.5)/3, (-1+.5+3)/3
    got = _filtered(GrokfastMA(window=3, lamb=1.0, reduction="mean", warmup=True), GRADS)
    want = [1.0, 2.0, -1.0 + 2 / 3, 0.5 + 1.5 / 3, 3.0 + 2.5 / 3]
    assert got == pytest.approx(want, abs=1e-15)


def test_ma_without_warmup_and_with_sum():
    got = _filtered(GrokfastMA(window=3, lamb=1.0, reduction="mean", warmup=False), GRADS)
    want = [1.0 + 1.0, 2.0 + 1.5, -1.0 + 2 / 3, 0.5 + 1.5 / 3, 3.0 + 2.5 / 3]
    assert got == pytest.approx(want, abs=1e-15)
    got = _filtered(GrokfastMA(window=2, lamb=0.5, reduction="sum", warmup=True), GRADS)
    want = [1.0, 2.0 + 0.5 * 3, -1.0 + 0.5 * 1, 0.5 + 0.5 * -0.5, 3.0 + 0.5 * 3.5]
    assert got == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize(
    "make",
    [lambda: GrokfastEMA(alpha=0.7, lamb=1.5), lambda: GrokfastMA(window=3, lamb=2.0)],
    ids=["ema", "ma"],
)
def test_state_dict_round_trip_continues_the_same_sequence(make):
    straight = _filtered(make(), GRADS)
    first = make()
    _filtered(first, GRADS[:2])
    saved = first.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    second = make()
    second.load_state_dict(torch.load(buf, weights_only=False))
    assert _filtered(second, GRADS, start=2) == straight[2:]


def test_filter_drives_an_sgd_trajectory():
    # SGD lr 1 on a scalar: theta_{t+1} = theta_t - filtered g_t; with EMA(0.5, 2) and constant
    # g = 1 the filtered gradients are 3, 3, 3 (mu stays 1) -> theta = -3, -6, -9.
    p = nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0)
    filt = GrokfastEMA(alpha=0.5, lamb=2.0)
    thetas = []
    for _ in range(3):
        opt.zero_grad()
        (p * 1.0).backward()
        filt([p])
        opt.step()
        thetas.append(float(p.detach()))
    assert thetas == [-3.0, -6.0, -9.0]


def test_bad_filter_specs_raise():
    with pytest.raises(GrokinterpError, match="alpha"):
        GrokfastEMA(alpha=1.0)
    with pytest.raises(GrokinterpError, match="window"):
        GrokfastMA(window=0)
    with pytest.raises(GrokinterpError, match="reduction"):
        GrokfastMA(reduction="median")
    with pytest.raises(GrokinterpError, match="grokfast"):
        make_gradient_filter({"kind": "ema", "beta": 0.3})
    assert make_gradient_filter({}) is None


# ------------------------------------------------------------------ resume with a filter

FILTERS = {
    "ema": ["train.grokfast={kind='ema', alpha=0.9, lamb=2.0}"],
    "ma": ["train.grokfast={kind='ma', window=4, lamb=3.0}"],
    "ema+norm+merge": [
        "train.grokfast={kind='ema', alpha=0.8, lamb=1.0}",
        "train.norm_constraint=true",
        "model.embedding=factorized",
        "model.embed_rank=3",
        "train.merge_embedding_at=15",
    ],
}


def _equal_states(a: Run, b: Run, step: int) -> bool:
    sa, sb = a.load_state(step), b.load_state(step)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "wall_time"} for m in rows]


@pytest.mark.parametrize("kind", list(FILTERS))
def test_filter_resume_after_a_kill_is_bit_exact(tmp_path, tiny_config, monkeypatch, kind):
    cfg = apply_overrides(tiny_config, ["train.lr=0.01", *FILTERS[kind]])
    straight = train(cfg, tmp_path / "a", progress=False)

    real_step = group_mod.SeedGroup.train_step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] > 17:  # killed after step 17: resumes from the checkpoint at 10
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(group_mod.SeedGroup, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(group_mod.SeedGroup, "train_step", real_step)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == straight.steps
    for s in straight.steps:
        assert _equal_states(straight, resumed, s), s
    assert _strip(resumed.metrics) == _strip(straight.metrics)


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_train_k_then_resume_to_n_is_bit_exact(tmp_path, tiny_config, kind):
    """N steps straight vs k steps, then resume to N: identical weights and metrics."""
    cfg = apply_overrides(tiny_config, ["train.lr=0.01", *FILTERS[kind]])
    straight = train(cfg, tmp_path / "n", progress=False)
    train(apply_overrides(cfg, ["train.steps=20"]), tmp_path / "k", progress=False)
    resumed = train(cfg, tmp_path / "k", resume=True, progress=False)
    assert _equal_states(straight, resumed, 30)
    common = set(straight.steps) & set(resumed.steps)
    assert {20, 30} <= common and all(_equal_states(straight, resumed, s) for s in common)
    by_step = {m["step"]: m for m in _strip(straight.metrics)}
    rows = _strip(resumed.metrics)
    assert all(by_step[m["step"]] == m for m in rows if m["step"] in by_step)
    assert rows[-1] == by_step[30]


def test_the_filter_changes_training(tmp_path, tiny_config):
    """Guard against a filter that silently does nothing (the resume tests would still pass)."""
    plain = train(tiny_config, tmp_path / "plain", progress=False)
    cfg = apply_overrides(tiny_config, FILTERS["ema"])
    filtered = train(cfg, tmp_path / "ema", progress=False)
    assert not _equal_states(plain, filtered, 30)
    assert _equal_states(plain, filtered, 0)  # same initialisation


def test_compare_grokfast_trains_with_and_without_the_filter(tmp_path, tiny_config):
    from grokinterp.experiments.transfer import compare_grokfast

    cfg = apply_overrides(tiny_config, ["train.grokfast={kind='ma', window=3, lamb=1.0}"])
    rows = compare_grokfast(cfg, tmp_path, overrides=["train.steps=10"])
    assert [r["kind"] for r in rows] == ["baseline", "grokfast"]
    base, filt = Run.open(tmp_path / "baseline"), Run.open(tmp_path / "grokfast")
    assert base.config.train.grokfast == {} and filt.config.train.grokfast["kind"] == "ma"
    assert _equal_states(base, filt, 0) and not _equal_states(base, filt, 10)
    assert all(r["final_step"] == 10 for r in rows)
