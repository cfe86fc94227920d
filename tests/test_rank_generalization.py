"""The rank summary finds the drop around generalisation (Fan et al. 2024), not the memorisation
transient, and names the layers whose rank is capped by their input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from grokinterp.analysis.curves import generalization_window, largest_drop
from grokinterp.analysis.rank import feature_rank, rank_caps, rank_summary
from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models import build_model
from grokinterp.tasks import Task

STEPS = [0, 1, 2, 4, 8, 12, 16, 20, 30, 50, *range(100, 3001, 100)]


def interp(points: dict[int, float], s: int) -> float:
    """Piecewise-linear curve through ``points`` (flat beyond the ends)."""
    xs = sorted(points)
    if s <= xs[0]:
        return points[xs[0]]
    for a, b in zip(xs, xs[1:], strict=False):
        if a <= s <= b:
            return points[a] + (points[b] - points[a]) * (s - a) / (b - a)
    return points[xs[-1]]


def synthetic_run(tmp_path):
    """Memorisation by step 20 (train accuracy 1), test accuracy flat at 2 % until step 1000,
    then up to 100 % at step 1300; a fake run (no model, no data: caps read as None)."""
    test = {0: 0.02, 1000: 0.02, 1300: 1.0}
    metrics = [
        {"step": s, "train_acc": 1.0 if s >= 20 else s / 20, "test_acc": interp(test, s)}
        for s in STEPS
    ]

    def no_task():
        raise GrokinterpError("synthetic run: no task")

    return SimpleNamespace(
        metrics=metrics, steps=STEPS, analysis_dir=tmp_path, task=no_task, model=no_task
    )


def test_drop_near_generalisation_not_the_memorisation_transient(tmp_path):
    run = synthetic_run(tmp_path)
    # layer a: a transient 10 → 30 → 12 during memorisation, then 12 → 4 while test accuracy rises
    a = {0: 10.0, 4: 30.0, 16: 12.0, 1000: 12.0, 1300: 4.0}
    # layer b: the same transient, then flat through generalisation (the digits MLP)
    b = {0: 10.0, 4: 30.0, 16: 12.0}
    results = {
        f"effective/{name}": torch.tensor([interp(c, s) for s in STEPS])
        for name, c in (("a", a), ("b", b))
    }
    s = rank_summary(run, results)
    assert s["layers"] == ["a", "b"]
    assert s["generalize_step"] == 1300 and s["generalization_onset_step"] == 1000
    assert s["generalization_window"] == [500, 2600]
    # half-way from 12 to 4 (8) is first reached at step 1200 (6.7; 9.3 at 1100)
    assert s["drop_step_near_generalization"] == [1200, None]
    assert s["drop_fraction_near_generalization"] == pytest.approx([2 / 3, 0.0])
    # the whole-run drop is the transient (half-way from 30 to its later minimum)
    assert s["rank_drop_step"][0] <= 16 and s["rank_drop_step"][1] <= 16
    assert s["rank_cap"] == [None, None] and s["cannot_drop"] == []


def test_window_and_largest_drop_helpers():
    rows = [{"step": s, "train_acc": 1.0, "test_acc": 0.0} for s in (0, 10, 100)]
    assert generalization_window(rows) is None  # never generalises: no window
    rows += [{"step": 400, "train_acc": 1.0, "test_acc": 0.96}]
    assert generalization_window(rows) == {
        "onset_step": 100,
        "generalize_step": 400,
        "lo": 50,
        "hi": 800,
    }
    assert largest_drop([0, 1, 2, 3], [5.0, 5.0, 4.9, 4.9]) == (None, pytest.approx(0.02))
    assert largest_drop([0, 1, 2, 3], [9.0, 5.0, 5.0, 1.0], lo=1) == (3, pytest.approx(0.8))
    with pytest.raises(GrokinterpError, match="span"):
        generalization_window(rows, span=0.5)


def vector_task(d: int) -> Task:
    z = torch.zeros(1, d)
    return Task("toy", z, z[:, 0].long(), z, z[:, 0].long(), 3, "vector", input_dim=d)


def test_layer_whose_input_has_rank_r_reports_cap_r():
    torch.manual_seed(0)
    r, d, width, n = 5, 20, 32, 100
    x = torch.randn(n, r) @ torch.randn(r, d)  # data of rank r (centred: r too)
    model = build_model(ModelConfig(name="mlp", n_layers=2, d_mlp=width), vector_task(d))
    caps = rank_caps(model, x)
    first = caps["pre:blocks.0.mlp.act"]
    assert first["cap"] == r == first["input_rank"] and first["source"] == "input data"
    assert first["fixed_input"] and first["width"] == width and first["input_dim"] == d
    assert feature_rank(x, center=True) == r
    # the second layer reads the first layer's output (ReLU lifts the rank): not the data
    second = caps["pre:blocks.1.mlp.act"]
    assert not second["fixed_input"] and second["cap"] <= width
    assert second["source"] in ("layer input", "width")
    # the first layer's measured rank sits at the cap: it cannot drop while W_in has full rank
    from grokinterp.analysis.rank import layer_ranks

    assert layer_ranks(model, x)["pre:blocks.0.mlp.act"][0] == r
    # uncentred, the bias adds one direction
    assert rank_caps(model, x, center=False)["pre:blocks.0.mlp.act"]["cap"] == r + 1


def test_transformer_mlp_capped_by_residual_width():
    from grokinterp.tasks import make_task

    task = make_task("mod_add", p=11, train_fraction=0.5, seed=0)
    model = build_model(
        ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=24), task
    )
    caps = rank_caps(model, task.x_train)
    mlp = caps["pre:blocks.0.mlp.act"]
    assert mlp["width"] == 24 and mlp["input_dim"] == 8
    assert mlp["cap"] <= 8 and mlp["source"] == "layer input" and not mlp["fixed_input"]
    assert caps["resid:blocks.0"]["source"] == "width"


def test_summary_of_a_digits_run_names_the_pinned_first_layer(tmp_path):
    # 8×8 digits (64 pixels, some always blank) into 80 neurons: the first layer's rank is the
    # rank of the data sample, whatever the training does; the "rank cannot drop" case.
    from grokinterp.analysis import over_training
    from grokinterp.analysis.inputs import sample_split
    from grokinterp.config import RunConfig, TaskConfig, TrainConfig
    from grokinterp.training import train

    cfg = RunConfig(
        task=TaskConfig("digits", {"n_train": 60}),
        model=ModelConfig(name="mlp", n_layers=2, d_mlp=80),
        train=TrainConfig(
            steps=20, lr=1e-2, weight_decay=0.01, checkpoint_every=10, warmup_steps=0
        ),
        name="digits-cap",
    )
    run = train(cfg, tmp_path / "run", progress=False)
    spec = {"rank": {"n_samples": 200}}
    ref = over_training(run, spec, progress=False, reference=True, force=True)
    res = over_training(run, spec, progress=False, force=True)
    for key in ref:
        if "/cap/" in key or "/input_rank/" in key:
            assert torch.equal(ref[key], res[key]), key
    x, _ = sample_split(run.task(), "test", 200, 0)
    data_rank = feature_rank(x, center=True)
    assert data_rank < 64  # blank border pixels
    s = rank_summary(run, res.of("rank"))
    i = s["layers"].index("pre:blocks.0.mlp.act")
    assert s["rank_cap"][i] == data_rank and s["cap_source"][i] == "input data"
    assert s["capped"][i] and s["layer_width"][i] == 80 and s["at_cap_fraction"][i] == 1.0
    assert s["cannot_drop"] == ["pre:blocks.0.mlp.act"]
    j = s["layers"].index("pre:blocks.1.mlp.act")
    assert s["cap_source"][j] in ("layer input", "width")  # reads layer 0's ReLU output
