"""Batched ``norms`` and ``robustness`` (Measure.at_steps) equal their per-checkpoint reference
(Measure.at_step), on tiny runs of every model kind; PGD batched over checkpoints reaches the
analytic worst case of linear classifiers; a model at chance gets k = -1 in both paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokinterp.analysis import over_training
from grokinterp.analysis.batch import CheckpointBatch, stack_states
from grokinterp.analysis.norms import (
    CHANCE_K,
    batched_topk,
    norms_summary,
    smallest_reproducing_topk,
)
from grokinterp.analysis.robustness import batched_pgd_correct, robustness_summary
from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokinterp.models import build_model
from grokinterp.store import save_tensors
from grokinterp.tasks import Task
from grokinterp.training import train

from .conftest import DEVICES, tiny


def _train(tmp_path_factory, name, task, model, steps=20, **train_kw):
    cfg = RunConfig(
        task=task,
        model=model,
        train=TrainConfig(
            steps=steps,
            lr=train_kw.pop("lr", 1e-2),
            checkpoint_every=10,
            checkpoint_log_steps=2,
            eval_every=10,
            warmup_steps=0,
            early_stop_acc=None,
            **train_kw,
        ),
        name=name,
    )
    return train(cfg, tmp_path_factory.mktemp("runs") / name, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    parity = _train(
        tmp_path_factory,
        "parity",
        TaskConfig("sparse_parity", {"n": 10, "k": 2, "n_train": 80, "n_test": 40}),
        ModelConfig(name="mlp", n_layers=1, d_mlp=24),
        steps=30,
        lr=3e-2,
    )
    deep = _train(  # two hidden layers: ablating layer 0 runs layer 1 downstream
        tmp_path_factory,
        "deep",
        TaskConfig("sparse_parity", {"n": 8, "k": 2, "n_train": 60, "n_test": 40, "seed": 1}),
        ModelConfig(name="mlp", n_layers=2, d_mlp=12),
        lr=3e-2,
    )
    embed = _train(
        tmp_path_factory,
        "embed",
        TaskConfig("mod_add", {"p": 7, "train_fraction": 0.6}),
        ModelConfig(name="embed_mlp", d_embed=8, d_mlp=16, n_layers=2, mlp_out=True),
        steps=30,
        lr=3e-2,
    )
    transformer = train(
        tiny(["train.lr=0.03"]), tmp_path_factory.mktemp("runs") / "tf", progress=False
    )
    return {"parity": parity, "deep": deep, "embed": embed, "transformer": transformer}


def _both(run, name, params, device):
    kw = dict(progress=False, force=True, device=device, chunk_size=3)
    ref = over_training(run, {name: params}, reference=True, **kw)
    new = over_training(run, {name: params}, **kw)
    return ref, new


def _assert_norms_equal(ref, new):
    assert set(ref) == set(new)
    for key in ref:
        a, b = ref[key], new[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if key.startswith(("norms/k/", "norms/final_k/")) or key == "steps":
            assert torch.equal(a, b), (key, a, b)
        elif "acc" in key:
            assert torch.equal(a, b), (key, a, b)
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), key


CASES = [
    ("parity", {}),
    ("parity", {"search": "scan", "tol": 0.05}),
    ("deep", {"n_samples": 50}),
    ("deep", {"layers": [1], "search": "scan"}),
    ("embed", {}),
    ("transformer", {}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("run_name,params", CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_norms_batched_equals_reference(runs, run_name, params, device):
    run = runs[run_name]
    ref, new = _both(run, "norms", params, device)
    _assert_norms_equal(ref, new)
    n = len(run.steps)
    assert new["norms/train_acc"].shape == (n,)
    for key in ref:
        if key.startswith("norms/k/"):
            d = ref[key.replace("/k/", "/in_norm/")].shape[1]
            assert ((ref[key] >= CHANCE_K) & (ref[key] <= d)).all()
            # the runs start at chance (k undefined) and learn (k defined): both branches run
            assert (ref[key] == CHANCE_K).any() and (ref[key] >= 0).any()
    summary = norms_summary(run, new.of("norms"))
    assert summary["final_k"] == [int(new[f"norms/k/{i}"][-1]) for i in summary["layers"]]
    assert all(isinstance(v, (list, int, type(None))) for v in summary.values())


def test_norms_with_mask_and_key(runs, tmp_path):
    run = runs["deep"]
    state = run.load_state(run.steps[-1])
    g = torch.Generator().manual_seed(0)
    masks = {
        name: torch.rand(state[name].shape, generator=g) < 0.3
        for name in ("blocks.0.mlp.W_in", "unembed.W_U")
    }
    save_tensors(tmp_path / "mask.safetensors", masks)
    params = {"mask": str(tmp_path / "mask.safetensors")}
    ref, new = _both(run, "norms", params, "cpu")
    _assert_norms_equal(ref, new)
    assert float(new["norms/mask/sparse_count"][0]) == sum(int(m.sum()) for m in masks.values())
    # The last checkpoint's sparse set is in the key.
    from grokinterp.analysis.registry import cache_info

    key = cache_info(run, "norms")["key"]
    assert key["reference_step"] == run.steps[-1]
    for i in ("0", "1"):
        assert key["final_k"][i] == int(new[f"norms/final_k/{i}"][0])
        if key["final_k"][i] >= 0:
            assert len(key["final_keep"][i]) == key["final_k"][i]


def planted(at_chance: bool):
    """The planted 3-neuron model of tests/test_norms.py; ``at_chance`` zeroes its readout, so
    it predicts class 0 everywhere: accuracy 1/3, the chance level of balanced labels."""
    z = torch.zeros(1, 3)
    task = Task("toy", z, z[:, 0].long(), z, z[:, 0].long(), 3, "vector", input_dim=3)
    model = build_model(ModelConfig(name="mlp", n_layers=1, d_mlp=10), task).double()
    w_in = torch.zeros(3, 10, dtype=torch.float64)
    w_in[0, 0], w_in[1, 1], w_in[2, 2] = 3.0, 2.5, 2.0
    w_in[:, 3:] = torch.linspace(0.1, 0.5, 7)[None, :].double()
    w_u = torch.zeros(10, 3, dtype=torch.float64)
    if not at_chance:
        w_u[0, 0], w_u[1, 1], w_u[2, 2] = 1 / 3.0, 1 / 2.5, 1 / 2.0
    with torch.no_grad():
        model.blocks[0].mlp.W_in.copy_(w_in)
        model.blocks[0].mlp.b_in.zero_()
        model.unembed.W_U.copy_(w_u)
        model.unembed.b_U.zero_()
    x = torch.eye(3, dtype=torch.float64).repeat(4, 1) * 2.0
    y = torch.arange(3).repeat(4)
    return model, x, y


@pytest.mark.parametrize("device", DEVICES)
def test_batched_topk_known_answers_and_chance(device):
    models = [planted(False)[0], planted(True)[0]]
    _, x, y = planted(False)
    dev = torch.device(device)
    params = {k: v.to(dev) for k, v in stack_states([m.state_dict() for m in models]).items()}
    scores = params["blocks.0.mlp.W_in"].pow(2).sum(1).add(params["blocks.0.mlp.b_in"] ** 2).sqrt()
    template = models[0].to(dev)
    for search in ("binary", "scan"):
        res = batched_topk(template, params, x.to(dev), y, 0, scores, search=search)
        assert res["k"].tolist() == [3, CHANCE_K]
        assert res["keep"][0].nonzero().flatten().tolist() == [0, 1, 2]
        assert not res["keep"][1].any()
        assert res["full_accuracy"].tolist() == pytest.approx([1.0, 1 / 3])
    # The reference agrees, one checkpoint at a time.
    for i, want in enumerate([3, CHANCE_K]):
        m = planted(i == 1)[0]
        assert smallest_reproducing_topk(m, x, y)["k"] == want


def zigzag():
    """A model whose accuracy is NOT monotone in k, so the binary search and the scan disagree
    and the batched search must replay the reference's probes exactly. Neuron j (incoming norm
    10 − j, reads input coordinate 0) adds u_j to the logit margin of class 0 on the points
    x = e0 (label 0); points x = e1 (label 1) activate no neuron and are always right. The margin
    of the top-k model is −1 + Σ_{j<k} u_j, so accuracy(k) is 1 for k ∈ {1, 7, 9, 10} and 1/2
    otherwise: the binary search probes 5 ✗, 7 ✓, 6 ✗ → k = 7 (with midpoints rounded up it
    would probe 5, 8, 9 → 9); the scan finds k = 1."""
    u = [2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.0, 2.0, 0.0]
    z = torch.zeros(1, 2)
    task = Task("toy", z, z[:, 0].long(), z, z[:, 0].long(), 2, "vector", input_dim=2)
    model = build_model(ModelConfig(name="mlp", n_layers=1, d_mlp=10), task).double()
    s_ = torch.arange(10, 0, -1, dtype=torch.float64)
    w_u = torch.stack([torch.tensor(u) / s_ / 2, -torch.tensor(u) / s_ / 2], dim=1)
    with torch.no_grad():
        model.blocks[0].mlp.W_in.zero_()
        model.blocks[0].mlp.W_in[0].copy_(s_)
        model.blocks[0].mlp.b_in.zero_()
        model.unembed.W_U.copy_(w_u)
        model.unembed.b_U.copy_(torch.tensor([0.0, 1.0]))
    x = torch.cat(
        [torch.eye(2, dtype=torch.float64)[[0]].repeat(6, 1), torch.eye(2)[[1]].repeat(6, 1)]
    )
    y = torch.tensor([0] * 6 + [1] * 6)
    return model, x.double(), y


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_batched_topk_replays_the_reference_search_on_a_non_monotone_curve(levels):
    model, x, y = zigzag()
    assert smallest_reproducing_topk(model, x, y)["k"] == 7
    assert smallest_reproducing_topk(model, x, y, search="scan")["k"] == 1
    params = {k: v[None] for k, v in model.state_dict().items()}
    scores = params["blocks.0.mlp.W_in"].pow(2).sum(1).sqrt()
    for search, want in (("binary", 7), ("scan", 1)):
        res = batched_topk(model, params, x, y, 0, scores, search=search, levels=levels)
        assert res["k"].tolist() == [want] and res["accuracy"].tolist() == [1.0]


# ----------------------------------------------------------------------------- robustness

ROB = {"n_samples": 30, "eps": [0.0, 0.05, 0.3], "steps": 4}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("run_name", ["parity", "deep"])
def test_robustness_batched_equals_reference(runs, run_name, device):
    run = runs[run_name]
    ref, new = _both(run, "robustness", ROB, device)
    assert set(ref) == set(new)
    for key in ref:
        assert ref[key].dtype == new[key].dtype and ref[key].shape == new[key].shape
        assert torch.equal(ref[key], new[key]), (key, ref[key], new[key])
    assert torch.equal(new["robustness/accuracy"][:, 0], new["robustness/clean_accuracy"])
    s = robustness_summary(run, new.of("robustness"))
    assert s["eps"] == pytest.approx(ROB["eps"]) and len(s["half_way_step"]) == 3


@pytest.mark.parametrize("device", DEVICES)
def test_batched_pgd_reaches_linear_worst_case(device):
    # Two linear binary classifiers stacked as two "checkpoints": L∞ PGD lowers each margin
    # m(x) = (w_y − w_o)·x + (b_y − b_o) by exactly ε‖w_y − w_o‖₁ (tests/test_robustness.py).
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    nets = []
    for _ in range(2):
        net = nn.Linear(6, 2).double()
        with torch.no_grad():
            net.weight.copy_(torch.randn(2, 6, generator=g, dtype=torch.float64))
            net.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
        nets.append(net)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g) < 0.5).long()
    params = {k: v.to(dev) for k, v in stack_states([n.state_dict() for n in nets]).items()}
    batch = CheckpointBatch([0, 1], params, nets[0].to(dev), dev)
    eps = [0.0, 0.05, 0.2, 0.5]
    correct, clean = batched_pgd_correct(batch, x.to(dev), y, eps, steps=10)
    for c, net in enumerate(nets):
        net = net.cpu()
        with torch.no_grad():
            z = net(x)
        m = z.gather(1, y[:, None])[:, 0] - z.gather(1, (1 - y)[:, None])[:, 0]
        dw = (net.weight[y] - net.weight[1 - y]).detach().abs().sum(1)
        for j, e in enumerate(eps):
            assert int(correct[c, j]) == int((m - e * dw > 0).sum())
        assert int(clean[c]) == int((m > 0).sum())
