"""Local complexity (Humayun et al. 2024) against hand-set hyperplanes whose answer is exact."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokinterp.analysis.complexity import (
    local_complexity,
    local_complexity_per_layer,
    orthonormal_frame,
)
from grokinterp.config import GrokinterpError

R = 0.1  # radius


def hyperplane_net(normals: torch.Tensor, offsets: torch.Tensor, scales=None) -> nn.Module:
    """1-hidden-layer ReLU net on 2-D input whose neuron j has pre-activation
    ``scale_j · (n_j · x + offsets_j)``: its zero set is the line ``n_j · x = −offsets_j``."""
    m = normals.shape[0]
    scales = torch.ones(m, dtype=torch.float64) if scales is None else scales
    net = nn.Sequential(nn.Linear(2, m), nn.ReLU(), nn.Linear(m, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(normals * scales[:, None])
        net[0].bias.copy_(offsets * scales)
    return net


def lines_at_distances(center: torch.Tensor, dists: list[float], seed: int = 0):
    """Unit normals at random angles and offsets so that line j passes at signed distance
    ``dists[j]`` from ``center``."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(len(dists), generator=g, dtype=torch.float64) * 2 * math.pi
    normals = torch.stack([angles.cos(), angles.sin()], dim=1)
    offsets = torch.tensor(dists, dtype=torch.float64) - normals @ center
    return normals, offsets


def test_frame_is_orthonormal_and_seeded():
    f = orthonormal_frame(7, 4, seed=3)
    assert f.shape == (4, 7)
    assert torch.allclose(f @ f.T, torch.eye(4, dtype=torch.float64))
    assert torch.equal(f, orthonormal_frame(7, 4, seed=3))
    assert not torch.allclose(f, orthonormal_frame(7, 4, seed=4))


def test_zero_far_from_every_hyperplane():
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    normals, offsets = lines_at_distances(c, [2.0 * R, -3 * R, 10 * R, -1.01 * R, 1.5 * R])
    net = hyperplane_net(normals, offsets)
    assert local_complexity(net, c[None], R).tolist() == [0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_counts_hyperplanes_within_r_over_sqrt2(seed):
    # With P = 2 in 2-D the cross-polytope is a square with vertices at distance r from x. A line at
    # distance s from x, unit normal n, splits the vertices iff s < r·max(|n·v1|, |n·v2|), and
    # max(|n·v1|, |n·v2|) ∈ [1/√2, 1] for every orthonormal frame: lines within r/√2 always count,
    # lines farther than r never do, whatever the frame. None are put in the band between.
    c = torch.tensor([0.5, 0.25], dtype=torch.float64)
    near = [0.0 + 1e-3, -0.2 * R, 0.45 * R, -0.69 * R]
    far = [1.05 * R, -1.3 * R, 2 * R, 7 * R, -0.999 * R * 1.5]
    normals, offsets = lines_at_distances(c, near + far, seed=seed)
    scales = torch.tensor([3.0, 0.5, -2.0, 1.0, 4.0, -0.1, 1.0, 2.0, 0.7], dtype=torch.float64)
    net = hyperplane_net(normals, offsets, scales)  # rescaling a neuron never moves its line
    for frame_seed in range(4):
        assert local_complexity(net, c[None], R, seed=frame_seed).tolist() == [len(near)]


def test_exact_count_for_a_known_frame():
    # Lines at any distance in [0, 1.5r]: the count is exactly #{j : |s_j| < r·max_k |n_j·v_k|}
    # for the frame v drawn with that seed (P = 2), and for P = 1: #{j : |s_j| < r·|n_j·v_1|}.
    g = torch.Generator().manual_seed(11)
    centers = torch.rand(6, 2, generator=g, dtype=torch.float64)
    m = 40
    angles = torch.rand(m, generator=g, dtype=torch.float64) * 2 * math.pi
    normals = torch.stack([angles.cos(), angles.sin()], dim=1)
    offsets = torch.rand(m, generator=g, dtype=torch.float64) * 2 - 0.5
    net = hyperplane_net(normals, offsets)
    s = centers @ normals.T + offsets  # [6, m] signed distances (unit normals)
    for p in (1, 2):
        frame = orthonormal_frame(2, p, seed=5)
        reach = R * (normals @ frame.T).abs().max(dim=1).values  # [m]
        assert ((s.abs() - reach).abs() > 1e-9).all()  # no line touches a vertex
        expected = (s.abs() < reach).sum(dim=1)
        got = local_complexity(net, centers, R, n_directions=p, seed=5)
        assert got.tolist() == expected.tolist()
        assert expected.sum() > 0  # the test is not vacuous


def naive_local_complexity(net: nn.Module, x: torch.Tensor, r: float, p: int, seed: int):
    """Per-layer LC by one forward per vertex, reading pre-activations of nn.ReLU modules."""
    frame = orthonormal_frame(x.shape[1], p, seed, dtype=x.dtype)
    verts = torch.cat([frame, -frame]) * r
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    signs = []
    for v in verts:
        pre = []
        hs = [
            m.register_forward_pre_hook(lambda mod, a, pre=pre: pre.append(a[0] > 0)) for m in relus
        ]
        with torch.no_grad():
            net(x + v)
        for h in hs:
            h.remove()
        signs.append(pre)
    out = []
    for layer in range(len(relus)):
        s = torch.stack([sg[layer] for sg in signs])  # [2P, n, width]
        out.append((s.any(0) & ~s.all(0)).sum(-1))
    return out


def test_deep_net_matches_naive_loop_and_chunks():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    ).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    per = local_complexity_per_layer(net, x, 0.3, n_directions=3, seed=2)
    assert list(per) == ["1", "3"]
    naive = naive_local_complexity(net, x, 0.3, 3, 2)
    for got, want in zip(per.values(), naive, strict=True):
        assert got.tolist() == want.tolist()
    total = local_complexity(net, x, 0.3, n_directions=3, seed=2)
    assert total.tolist() == (per["1"] + per["3"]).tolist()
    assert total.sum() > 0
    chunked = local_complexity(net, x, 0.3, n_directions=3, seed=2, chunk_size=7)
    assert chunked.tolist() == total.tolist()
    assert net.training  # mode restored


class TinyTokenModel(HookedRootModule):
    """Embedding (vocab 6, d 2) of one token -> hand-set ReLU layer -> logits."""

    def __init__(self, emb: torch.Tensor, normals: torch.Tensor, offsets: torch.Tensor):
        super().__init__()
        self.W_E = nn.Parameter(emb.clone())
        self.hook_embed = HookPoint()
        self.lin = nn.Linear(2, normals.shape[0]).double()
        with torch.no_grad():
            self.lin.weight.copy_(normals)
            self.lin.bias.copy_(offsets)
        self.act = nn.ReLU()
        self.out = nn.Linear(normals.shape[0], 2).double()
        self.setup()

    def forward(self, tokens):
        e = self.hook_embed(self.W_E[tokens])  # [batch, 1, 2]
        return self.out(self.act(self.lin(e[:, 0])))


def test_token_model_neighbourhood_is_in_embedding_space():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-1, 2], [2, -1]]).double()
    c = emb[1]
    near = [0.1 * R, -0.5 * R, 0.3 * R]
    normals, offsets = lines_at_distances(c, near + [1.2 * R, 3 * R])
    model = TinyTokenModel(emb, normals, offsets)
    tokens = torch.tensor([[1], [3]])
    lc = local_complexity(model, tokens, R)
    far_from_3 = ((emb[3] @ normals.T + offsets).abs() > R).all()
    assert far_from_3
    assert lc.tolist() == [3, 0]


def test_bad_inputs_raise():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    x = torch.zeros(4, 2)
    with pytest.raises(GrokinterpError, match="n_directions"):
        local_complexity(net, x, 0.1, n_directions=3)
    with pytest.raises(GrokinterpError, match="radius"):
        local_complexity(net, x, 0.0)
    with pytest.raises(GrokinterpError, match="activation"):
        local_complexity(nn.Linear(2, 2), x, 0.1)
    with pytest.raises(GrokinterpError, match="hook_embed"):
        local_complexity(net, torch.zeros(4, 2, dtype=torch.long), 0.1)
