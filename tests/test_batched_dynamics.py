"""Batched ``rank`` and ``complexity`` (Measure.at_steps) equal their per-checkpoint reference
(Measure.at_step) on tiny transformer, embed_mlp and mlp runs; the batched pieces keep the known
answers: ranks of matrices of known rank, local complexity of ReLU nets with hand-set hyperplanes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from grokinterp.analysis import over_training
from grokinterp.analysis.batch import CheckpointBatch, stack_states
from grokinterp.analysis.complexity import (
    activation_calls,
    complexity_summary,
    crossing_counts,
    dead_counts,
    dead_neurons,
    local_complexity_per_layer,
    orthonormal_frame,
)
from grokinterp.analysis.rank import batched_ranks, effective_rank, feature_rank, rank_summary
from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokinterp.training import train

from .conftest import DEVICES, tiny
from .test_complexity import R, hyperplane_net, lines_at_distances

SPEC = {
    "rank": {"n_samples": 40},
    "complexity": {"n_samples": 12, "n_directions": 4, "relative_radius": 0.2},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    digits = RunConfig(
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
        name="digits",
    )
    configs = {
        "transformer": tiny(),
        "embed_mlp": tiny(["model.name=embed_mlp", "model.d_embed=16", "model.n_layers=2"]),
        "mlp": digits,
    }
    return {k: train(cfg, root / k, progress=False) for k, cfg in configs.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["transformer", "embed_mlp", "mlp"])
def test_batched_equals_reference(runs, kind, device):
    run = runs[kind]
    ref = over_training(run, SPEC, progress=False, force=True, reference=True, device=device)
    new = over_training(run, SPEC, progress=False, force=True, chunk_size=3, device=device)
    assert set(new) == set(ref)
    for key, want in ref.items():
        got = new[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if want.is_floating_point():
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=key)
        else:  # integer ranks and counts: the same, not nearly the same
            assert torch.equal(got, want), key
    # not vacuous: boundaries cross the neighbourhoods and the features have rank > 1
    assert (ref["complexity/train/per_sample"] > 0).any()
    assert (ref["complexity/random/per_sample"] > 0).any()
    assert all((ref[k] > 1).all() for k in ref if k.startswith("rank/numerical/"))


def _known_rank(n: int, r: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, r, generator=g, dtype=dtype)
    return a @ torch.randn(r, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "d", "ranks"),
    [
        (60, 20, [3, 1, 20]),  # small: the SVD route
        (400, 48, [7, 1, 30, 48]),  # float32 and this large: the Gram route
        (30, 200, [5, 29]),  # wide: the n×n Gram
    ],
)
def test_batched_ranks_match_single_matrix_ranks(n, d, ranks, dtype):
    f = torch.stack([_known_rank(n, r, d, dtype, seed=i) for i, r in enumerate(ranks)])
    for center in (False, True):
        numerical, effective = batched_ranks(f, center=center)
        assert numerical.dtype == torch.long and effective.dtype == torch.float64
        want = [feature_rank(m, center=center) for m in f]
        assert numerical.tolist() == want
        for eff, m in zip(effective.tolist(), f, strict=True):
            assert eff == pytest.approx(effective_rank(m, center=center), rel=1e-5)
    assert batched_ranks(f)[0].tolist() == ranks  # the known answer itself


def test_batched_ranks_zero_rtol_and_known_effective_rank():
    d = torch.diag(torch.tensor([1.0, 0.5, 1e-3, 1e-9], dtype=torch.float64))
    batch = torch.stack([d, torch.zeros(4, 4, dtype=torch.float64), torch.eye(4).double()])
    assert batched_ranks(batch)[0].tolist() == [4, 0, 4]
    assert batched_ranks(batch.float())[0].tolist() == [3, 0, 4]  # 1e-9: float32 round-off
    assert batched_ranks(batch, rtol=1e-2)[0].tolist() == [2, 0, 4]
    effective = batched_ranks(batch)[1]
    assert effective[1] == 0.0 and effective[2] == pytest.approx(4.0)


def _stack_nets(nets: list[nn.Module]) -> CheckpointBatch:
    states = [net.state_dict() for net in nets]
    return CheckpointBatch(
        list(range(len(nets))), stack_states(states), nets[0], torch.device("cpu")
    )


def test_crossing_counts_of_known_hyperplanes_over_checkpoints():
    # Checkpoint i: a 1-hidden-layer ReLU net whose lines j pass at known distances from c; with
    # P = 2 in 2-D, lines within r/√2 always cross the square of vertices and lines beyond r never
    # do (tests/test_complexity.py), so checkpoint i's count is its number of near lines.
    c = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    far = [1.05 * R, -1.3 * R, 2 * R, 7 * R, -1.5 * R, 3 * R, 1.2 * R, -4 * R]
    near_sets = [[], [0.2 * R], [0.001 * R, -0.45 * R, 0.69 * R], [-0.6 * R, 0.3 * R, 0.1 * R]]
    nets = []
    for i, near in enumerate(near_sets):  # 8 lines (neurons) per net, so that they stack
        normals, offsets = lines_at_distances(c[0], near + far[: 8 - len(near)], seed=i)
        nets.append(hyperplane_net(normals, offsets))
    batch = _stack_nets(nets)
    frame = orthonormal_frame(2, 2, seed=3)
    offsets = torch.cat([frame, -frame]) * R
    counts = batch.apply(crossing_counts, c, offsets, 1)  # [C, 1 sample, 1 layer]
    assert counts[:, 0, 0].tolist() == [len(near) for near in near_sets]
    looped = batch.apply(crossing_counts, c, offsets, 1, vectorize=False)
    assert torch.equal(counts, looped)


def test_counts_stop_at_the_last_activation_and_match_the_reference():
    torch.manual_seed(0)
    nets = [
        nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        for _ in range(3)
    ]
    x = torch.randn(30, 5)
    head_calls = []
    nets[0][4].register_forward_hook(lambda m, a, o: head_calls.append(1))
    assert activation_calls(nets[0], x[:1]) == ["1", "3"]
    head_calls.clear()
    batch = _stack_nets(nets)
    frame = orthonormal_frame(5, 3, seed=2)
    offsets = (torch.cat([frame, -frame]) * 0.3).float()
    counts = batch.apply(crossing_counts, x, offsets, 2)
    dead = batch.apply(dead_counts, x, 2)
    assert head_calls == []  # the output layer was never run
    for i, net in enumerate(nets):
        per = local_complexity_per_layer(net, x, 0.3, n_directions=3, seed=2)
        assert torch.equal(counts[i], torch.stack(list(per.values()), dim=1))
        assert dead[i].tolist() == [int(v) for v in dead_neurons(net, x).values()]
    assert counts.sum() > 0


def _plain(value) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def test_summaries_are_plain_data(runs):
    run = runs["transformer"]
    res = over_training(run, SPEC, progress=False)
    for summary in (
        rank_summary(run, res.of("rank")),
        complexity_summary(run, res.of("complexity")),
    ):
        assert summary and all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in summary)
        assert all(_plain(v) for v in summary.values())
    rank = rank_summary(run, res.of("rank"))
    assert rank["layers"] == sorted(k.split("/", 1)[1] for k in res.of("rank") if "effective" in k)
    assert len(rank["effective_rank_max"]) == len(rank["layers"])
    lc = complexity_summary(run, res.of("complexity"))
    assert lc["sets"] == ["train", "test", "random"] and len(lc["peak_step"]) == 3


@pytest.mark.parametrize("kind", ["transformer", "embed_mlp"])
def test_token_counts_under_vmap_match_the_reference(runs, kind):
    # On a CPU the analysis loops over checkpoints; the vmapped path (the GPU's) is checked here:
    # the perturbation at hook_embed inside vmap, against local_complexity_per_layer per checkpoint.
    run = runs[kind]
    steps = run.steps[-3:]
    states = [run.load_state(s) for s in steps]
    model = run.model(steps[0])
    batch = CheckpointBatch(steps, stack_states(states), model, torch.device("cpu"))
    x = run.task().x_train[:9]
    dim = 3 * model.cfg.d_model if kind == "transformer" else 2 * model.cfg.d_embed
    frame = orthonormal_frame(dim, 5, seed=1)
    offsets = (torch.cat([frame, -frame]) * 0.3).float()
    n_calls = len(activation_calls(model, x[:1]))
    counts = batch.apply(crossing_counts, x, offsets, n_calls)
    assert counts.sum() > 0
    for i, state in enumerate(states):
        model.load_state_dict(state)
        per = local_complexity_per_layer(model, x, 0.3, n_directions=5, seed=1)
        assert torch.equal(counts[i], torch.stack(list(per.values()), dim=1))
