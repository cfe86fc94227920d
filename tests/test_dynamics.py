"""The over-training registrations (rank, complexity, norms, robustness) and turning-point helpers."""

from __future__ import annotations

import math

import pytest
import torch

from grokinterp.analysis import ANALYSES, applicable, over_training
from grokinterp.analysis.curves import complexity_phases, drop_step, transition_step
from grokinterp.analysis.inputs import domain_points, sample_split
from grokinterp.config import GrokinterpError, ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokinterp.training import train

DYNAMICS = ["rank", "complexity", "norms", "robustness"]


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    cfg = RunConfig(
        task=TaskConfig("digits", {"n_train": 60}),
        model=ModelConfig(name="mlp", n_layers=2, d_mlp=12),
        train=TrainConfig(
            steps=20,
            lr=1e-2,
            weight_decay=0.01,
            checkpoint_every=10,
            checkpoint_log_steps=2,
            eval_every=10,
            warmup_steps=0,
        ),
        name="tiny-digits",
    )
    return train(cfg, tmp_path_factory.mktemp("runs") / "digits", progress=False)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    cfg = RunConfig(
        task=TaskConfig("mod_add", {"p": 7, "train_fraction": 0.5}),
        model=ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16),
        train=TrainConfig(steps=4, checkpoint_every=2, checkpoint_log_steps=0, eval_every=2),
        name="tiny-mod",
    )
    return train(cfg, tmp_path_factory.mktemp("runs") / "mod", progress=False)


SMALL = {
    "rank": {"n_samples": 40},
    "complexity": {"n_samples": 10, "n_directions": 4},
    "norms": {},
    "robustness": {"n_samples": 20, "eps": [0.0, 0.05], "steps": 3},
}


def test_registered_and_applicability(vector_run, token_run):
    assert set(DYNAMICS) <= set(ANALYSES)
    on_vec = applicable(vector_run)
    assert all(on_vec[a] is None for a in DYNAMICS)
    on_tok = applicable(token_run)
    assert on_tok["rank"] is None and on_tok["complexity"] is None and on_tok["norms"] is None
    reason = on_tok["robustness"]
    assert isinstance(reason, str) and "vector inputs" in reason and "\n" not in reason
    with pytest.raises(GrokinterpError, match="does not apply"):
        over_training(token_run, ["robustness"], progress=False)


def test_over_training_vector_run_shapes_and_cache(vector_run):
    res = over_training(vector_run, SMALL, progress=False)
    n = len(vector_run.steps)
    assert res["steps"].tolist() == vector_run.steps
    layers = ["pre:blocks.0.mlp.act", "resid:blocks.0", "pre:blocks.1.mlp.act", "resid:blocks.1"]
    for name in layers:
        assert res[f"rank/numerical/{name}"].shape == (n,)
        assert (res[f"rank/numerical/{name}"] <= 12 + 1).all()
        assert (res[f"rank/effective/{name}"] >= 1).all()
    for s in ("train", "test", "random"):
        assert res[f"complexity/{s}/per_sample"].shape == (n, 10)
        assert res[f"complexity/{s}/per_layer"].shape == (n, 2)
        assert torch.allclose(res[f"complexity/{s}/mean"], res[f"complexity/{s}/per_layer"].sum(1))
        assert res[f"complexity/{s}/dead_per_layer"].shape == (n, 2)
    # The default radius is 5% of the median training-input norm.
    task = vector_run.task()
    want = 0.05 * float(task.x_train.norm(dim=1).median())
    assert float(res["complexity/radius"][0]) == pytest.approx(want, rel=1e-6)
    for i in (0, 1):
        assert res[f"norms/in_norm/{i}"].shape == (n, 12)
        k = res[f"norms/k/{i}"]
        assert ((k >= -1) & (k <= 12)).all()  # -1: the model is at chance there
        defined = k >= 0
        assert (res[f"norms/topk_acc/{i}"] >= res["norms/train_acc"] - 1e-9)[defined].all()
    assert res["robustness/accuracy"].shape == (n, 2)
    # ε = 0 is the clean accuracy; a larger ε can only lower it for a linear-ish attack target.
    assert torch.allclose(res["robustness/accuracy"][:, 0], res["robustness/clean_accuracy"])
    again = over_training(vector_run, SMALL, progress=False)
    for k in res:
        assert torch.equal(res[k], again[k])
    assert (vector_run.analysis_dir / "complexity.safetensors").is_file()


def test_over_training_token_run(token_run):
    res = over_training(
        token_run,
        {"complexity": {"n_samples": 6, "n_directions": 3}, "rank": {}, "norms": {}},
        progress=False,
    )
    n = len(token_run.steps)
    assert res["complexity/train/per_sample"].shape == (n, 6)
    assert res["norms/in_norm/0"].shape == (n, 16)
    assert "rank/effective/resid:blocks.0" in res


def test_sample_split_and_domain_points(vector_run, token_run):
    task = vector_run.task()
    x, y = sample_split(task, "test", 7, seed=1)
    assert x.shape == (7, 64) and y.shape == (7,)
    assert torch.equal(x, sample_split(task, "test", 7, seed=1)[0])
    with pytest.raises(GrokinterpError, match="split"):
        sample_split(task, "val", 7)
    pts = domain_points(task, 50)
    lo, hi = task.x_train.min(0).values, task.x_train.max(0).values
    assert ((pts >= lo) & (pts <= hi)).all()
    toks = domain_points(token_run.task(), 30)
    assert toks.dtype == torch.long and (toks[:, 2] == 7).all()  # '=' is always token p


def test_transition_and_drop_steps():
    metrics = [
        {"step": s, "test_acc": a}
        for s, a in [(0, 0.1), (10, 0.1), (20, 0.3), (30, 0.6), (40, 0.9), (50, 1.0)]
    ]
    assert transition_step(metrics) == 30  # midpoint 0.55
    assert transition_step(metrics, fraction=0.85) == 40  # 0.1 + 0.85·0.9 = 0.865
    steps = [0, 1, 2, 3, 4, 5, 6]
    assert drop_step(steps, [5, 10, 10, 9, 4, 2, 2]) == 4  # max 10 → min 2; half-way 6
    assert drop_step(steps, [5, 5, 5, 5, 5, 5, 5]) is None
    assert drop_step(steps, [1, 2, 3, 4, 5, 6, 7]) is None  # no fall after the maximum


def test_complexity_phases_known_curve():
    steps = list(range(0, 100, 5))
    # descent to step 20, ascent to step 60, second descent to the end
    v = [
        30 - 1.0 * s if s <= 20 else 10 + 0.75 * (s - 20) if s <= 60 else 40 - 0.8 * (s - 60)
        for s in steps
    ]
    ph = complexity_phases(steps, v, smooth=1)
    assert (ph["first_min_step"], ph["peak_step"], ph["second_min_step"]) == (20, 60, 95)
    assert ph["descent"] and ph["ascent"] and ph["second_descent"]
    mono = complexity_phases(steps, [float(s) for s in steps], smooth=1)
    assert not mono["descent"] and mono["ascent"] and not mono["second_descent"]
    assert math.isclose(mono["peak_value"], 95.0)
