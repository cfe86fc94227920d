"""Sparse/dense subnetwork norms and top-k neuron subnetworks (Merrill et al. 2023)."""

from __future__ import annotations

import math

import pytest
import torch

from grokinterp.analysis.norms import (
    CHANCE_K,
    ablated_accuracy,
    chance_accuracy,
    neuron_masks,
    neuron_norms,
    smallest_reproducing_topk,
    subnetwork_norms,
)
from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models import build_model
from grokinterp.tasks import Task


def test_subnetwork_norms_known_values():
    params = {"a": torch.tensor([[3.0, -4.0], [1.0, 2.0]]), "b": torch.tensor([-2.0, 0.5])}
    mask = {"a": torch.tensor([[True, True], [False, False]]), "b": torch.tensor([False, True])}
    out = subnetwork_norms(params, mask)
    assert out["sparse_l1"] == pytest.approx(7.5)
    assert out["sparse_l2"] == pytest.approx(math.sqrt(25.25))
    assert out["dense_l1"] == pytest.approx(5.0)
    assert out["dense_l2"] == pytest.approx(3.0)
    assert (out["sparse_count"], out["dense_count"]) == (3.0, 3.0)


def test_subnetwork_norms_bad_mask():
    with pytest.raises(GrokinterpError, match="shape"):
        subnetwork_norms({"a": torch.zeros(2, 2)}, {"a": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(GrokinterpError, match="'z'"):
        subnetwork_norms({"a": torch.zeros(2)}, {"z": torch.ones(2, dtype=torch.bool)})


def planted_model():
    """1-hidden-layer ReLU MLP on 3-D one-hot-ish inputs: neuron j < 3 (incoming norms 3, 2.5, 2)
    reads coordinate j and votes for class j; neurons 3..9 have small norms (≤ 1) and no outgoing
    weight. All three big neurons are needed, so the smallest reproducing top-k is exactly 3."""
    z = torch.zeros(1, 3)
    task = Task("toy", z, z[:, 0].long(), z, z[:, 0].long(), 3, "vector", input_dim=3)
    cfg = ModelConfig(name="mlp", n_layers=1, d_mlp=10)
    model = build_model(cfg, task).double()
    w_in = torch.zeros(3, 10, dtype=torch.float64)
    w_in[0, 0], w_in[1, 1], w_in[2, 2] = 3.0, 2.5, 2.0
    w_in[:, 3:] = torch.linspace(0.1, 0.5, 7)[None, :].double()
    w_u = torch.zeros(10, 3, dtype=torch.float64)
    w_u[0, 0], w_u[1, 1], w_u[2, 2] = 1 / 3.0, 1 / 2.5, 1 / 2.0
    with torch.no_grad():
        model.blocks[0].mlp.W_in.copy_(w_in)
        model.blocks[0].mlp.b_in.zero_()
        model.unembed.W_U.copy_(w_u)
        model.unembed.b_U.zero_()
    x = torch.eye(3, dtype=torch.float64).repeat(4, 1) * 2.0
    y = torch.arange(3).repeat(4)
    return model, x, y


def test_planted_topk_is_three_and_full_width_reproduces_model():
    model, x, y = planted_model()
    res = smallest_reproducing_topk(model, x, y)
    assert res["full_accuracy"] == 1.0
    assert res["k"] == 3 and res["accuracy"] == 1.0
    assert res["keep"].nonzero().flatten().tolist() == [0, 1, 2]
    assert smallest_reproducing_topk(model, x, y, search="scan")["k"] == 3
    # k = width keeps every neuron: the ablated model is the model itself.
    with torch.no_grad():
        full = model(x)
        kept = model.run_with_hooks(
            x, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * torch.ones(10).double())]
        )
    assert torch.equal(full, kept)
    assert ablated_accuracy(model, x, y, 0, torch.ones(10, dtype=torch.bool)) == 1.0
    assert ablated_accuracy(model, x, y, 0, torch.tensor([True, True] + [False] * 8)) < 1.0


def test_topk_equals_width_reproduces_random_model():
    torch.manual_seed(0)
    x = torch.randn(60, 8)
    y = torch.randint(0, 4, (60,))
    task = Task("toy", x, y, x, y, 4, "vector", input_dim=8)
    model = build_model(ModelConfig(name="mlp", n_layers=2, d_mlp=12), task)
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        pred = model(x).argmax(-1)
    # Labels = the model's own predictions: accuracy 1 needs (almost) the whole layer.
    res = smallest_reproducing_topk(model, x, pred, layer=1, search="scan")
    assert res["full_accuracy"] == 1.0
    assert 1 <= res["k"] <= 12 and res["accuracy"] == 1.0
    assert ablated_accuracy(model, x, y, 1, torch.ones(12, dtype=torch.bool)) == pytest.approx(
        float((pred == y).double().mean())
    )


def test_neuron_norms_and_masks():
    model, _, _ = planted_model()
    params = model.state_dict()
    norms = neuron_norms(params)
    assert torch.allclose(norms[0]["in"][:3], torch.tensor([3.0, 2.5, 2.0]).double())
    assert torch.allclose(norms[0]["out"][:4], torch.tensor([1 / 3, 1 / 2.5, 1 / 2, 0]).double())
    keep = torch.zeros(10, dtype=torch.bool)
    keep[:3] = True
    masks = neuron_masks(params, 0, keep)
    assert set(masks) == {"blocks.0.mlp.W_in", "blocks.0.mlp.b_in", "unembed.W_U"}
    out = subnetwork_norms(params, masks)
    want = math.sqrt(3**2 + 2.5**2 + 2**2 + (1 / 3) ** 2 + (1 / 2.5) ** 2 + (1 / 2) ** 2)
    assert out["sparse_l2"] == pytest.approx(want)
    dense = math.sqrt(3 * sum(v**2 for v in torch.linspace(0.1, 0.5, 7).tolist()))
    assert out["dense_l2"] == pytest.approx(dense, rel=1e-6)


def test_model_at_chance_has_undefined_k():
    # Zero readout: the planted model predicts class 0 everywhere, accuracy 1/3 on balanced
    # labels, the accuracy of a constant prediction. The empty subnetwork "reproduces" it, which
    # would read k = 0; at chance k is undefined instead (CHANCE_K = -1, empty keep set).
    model, x, y = planted_model()
    with torch.no_grad():
        model.unembed.W_U.zero_()
    for search in ("binary", "scan"):
        res = smallest_reproducing_topk(model, x, y, search=search)
        assert res["full_accuracy"] == pytest.approx(1 / 3)
        assert res["k"] == CHANCE_K == -1 and not res["keep"].any()
        assert res["accuracy"] == pytest.approx(1 / 3)  # the empty subnetwork's
    # chance level: best constant prediction + 3 binomial standard errors
    assert chance_accuracy(y) == pytest.approx(1 / 3 + 3 * math.sqrt(2 / 9 / 12))
    assert chance_accuracy(torch.tensor([0, 0, 0, 1]), n_se=0) == 0.75
