"""Plotly figures of the training-dynamics measures, on synthetic over_training outputs."""

from __future__ import annotations

import pytest
import torch

from grokinterp.config import GrokinterpError
from grokinterp.report.figures.dynamics import (
    complexity_figure,
    dynamics_figure,
    hook_name,
    norms_figure,
    rank_figure,
    robustness_figure,
)

STEPS = torch.tensor([0, 10, 100, 1000])
METRICS = [
    {"step": 0, "train_acc": 0.1, "test_acc": 0.1},
    {"step": 10, "train_acc": 0.9, "test_acc": 0.1},
    {"step": 100, "train_acc": 1.0, "test_acc": 0.3},
    {"step": 1000, "train_acc": 1.0, "test_acc": 1.0},
]


def fake_results() -> dict[str, torch.Tensor]:
    r = {"steps": STEPS}
    for layer in ("pre:blocks.0.mlp.act", "resid:blocks.0"):
        r[f"rank/numerical/{layer}"] = torch.tensor([50, 50, 40, 30])
        r[f"rank/effective/{layer}"] = torch.tensor([20.0, 18.0, 15.0, 9.0])
    for s in ("train", "test", "random"):
        r[f"complexity/{s}/mean"] = torch.tensor([30.0, 25.0, 35.0, 10.0])
        r[f"complexity/{s}/per_layer"] = torch.tensor([[15.0, 15], [12, 13], [20, 15], [5, 5]])
    r["norms/final_sparse_l2/0"] = torch.tensor([1.0, 1.5, 2.0, 3.0])
    r["norms/final_dense_l2/0"] = torch.tensor([9.0, 7.0, 4.0, 2.0])
    r["norms/sparse_l2/0"] = r["norms/final_sparse_l2/0"]
    r["norms/dense_l2/0"] = r["norms/final_dense_l2/0"]
    r["norms/k/0"] = torch.tensor([0, 100, 80, 3])
    r["robustness/accuracy"] = torch.tensor([[0.1, 0.0], [0.1, 0.0], [0.3, 0.1], [1.0, 0.8]])
    r["robustness/clean_accuracy"] = torch.tensor([0.1, 0.1, 0.3, 1.0])
    r["robustness/eps"] = torch.tensor([[0.01, 0.1]] * 4)
    return r


def names(fig) -> list[str]:
    return [t.name for t in fig.data]


def test_each_figure_has_accuracy_and_measure_traces():
    r = fake_results()
    fig = rank_figure(r, METRICS, kind="both")
    assert names(fig)[:2] == ["train_acc", "test_acc"]
    assert names(fig).count("blocks.0.hook_resid_post") == 2  # numerical and effective panels
    # The dashed line marks the midpoint of the test-accuracy jump (0.55 → step 1000).
    assert any(s.x0 == 1000 for s in fig.layout.shapes)
    fig = complexity_figure(r, METRICS, per_layer=True)
    assert {"LC train", "LC test", "LC random", "layer 0", "layer 1"} <= set(names(fig))
    fig = norms_figure(r, METRICS)
    assert {"sparse (top-k)", "dense (rest)", "k at each step"} <= set(names(fig))
    fig = robustness_figure(r, METRICS)
    assert {"ε = 0.01", "ε = 0.1", "clean (sample)"} <= set(names(fig))
    fig = dynamics_figure(r, METRICS)
    assert {"LC test", "sparse subnetwork", "PGD ε=0.1"} <= set(names(fig))
    assert fig.layout.xaxis.type == "log"
    # Step 0 cannot sit on a log axis; with log_x=False it is drawn.
    lin = complexity_figure(r, METRICS, log_x=False)
    assert lin.data[-1].x[0] == 0


def test_metrics_as_mapping_and_missing_keys():
    r = fake_results()
    m = {k: [row[k] for row in METRICS] for k in ("step", "train_acc", "test_acc")}
    assert len(rank_figure(r, m).data) == 4
    with pytest.raises(GrokinterpError, match="complexity"):
        complexity_figure({"steps": STEPS}, METRICS)
    with pytest.raises(GrokinterpError, match="layer"):
        norms_figure(r, METRICS, layer=3)
    with pytest.raises(GrokinterpError, match="kind"):
        rank_figure(r, METRICS, kind="bad")
    with pytest.raises(GrokinterpError, match="none of"):
        dynamics_figure({"steps": STEPS})


def test_layers_are_named_by_their_transformerlens_hooks():
    assert hook_name("pre:blocks.0.mlp.act") == "blocks.0.mlp.hook_pre"
    assert hook_name("pre:blocks.3.mlp.act#1") == "blocks.3.mlp.hook_pre#1"
    assert hook_name("resid:blocks.2") == "blocks.2.hook_resid_post"
    assert hook_name("pre:layers.1") == "layers.1 (input)"
    assert hook_name("plain") == "plain"
    r = fake_results()
    for fig in (rank_figure(r, METRICS, kind="both"), dynamics_figure(r, METRICS)):
        legend = set(names(fig)) - {"train_acc", "test_acc"}
        assert {"blocks.0.mlp.hook_pre", "blocks.0.hook_resid_post"} <= legend
        assert not any(":" in n for n in legend), legend
    # Selecting layers works with either name.
    assert len(rank_figure(r, layers=["blocks.0.mlp.hook_pre"]).data) == 1
    assert len(rank_figure(r, layers=["pre:blocks.0.mlp.act"]).data) == 1
