"""Feature rank (Fan et al. 2024) and effective rank (Roy & Vetterli 2007) on known matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grokinterp.analysis.rank import effective_rank, feature_rank, layer_features, layer_ranks
from grokinterp.config import GrokinterpError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "r", "d"), [(60, 3, 20), (20, 7, 45), (100, 1, 10), (30, 15, 30)])
def test_rank_of_product_is_inner_dimension(n, r, d, dtype):
    g = torch.Generator().manual_seed(n * 1000 + r)
    a = torch.randn(n, r, generator=g, dtype=dtype) @ torch.randn(r, d, generator=g, dtype=dtype)
    assert feature_rank(a) == r


def test_full_rank_zero_and_rtol():
    g = torch.Generator().manual_seed(0)
    assert feature_rank(torch.randn(8, 5, generator=g)) == 5
    assert feature_rank(torch.zeros(4, 3)) == 0
    d = torch.diag(torch.tensor([1.0, 0.5, 1e-3, 1e-9], dtype=torch.float64))
    assert feature_rank(d) == 4  # 1e-9 > 4·eps64
    assert feature_rank(d.float()) == 3  # 1e-9 < 4·eps32: round-off level in float32
    assert feature_rank(d, rtol=1e-2) == 2
    assert feature_rank(d, rtol=0.0) == 4


def test_centering_gives_covariance_rank():
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 6, generator=g, dtype=torch.float64)
    x = row.repeat(10, 1) + torch.randn(10, 1, generator=g, dtype=torch.float64) @ torch.randn(
        1, 6, generator=g, dtype=torch.float64
    )
    assert feature_rank(x) == 2
    assert feature_rank(x, center=True) == 1  # the constant row is the mean


def test_effective_rank_known_values():
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert effective_rank(torch.ones(5, 4)) == pytest.approx(1.0)
    # singular values (3, 1): p = (3/4, 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0, 0.0]))) == pytest.approx(math.exp(h))
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_layer_features_are_preactivations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Tanh())
    x = torch.randn(12, 4)
    feats = layer_features(net, x)
    assert list(feats) == ["pre:1", "pre:3"]
    assert torch.allclose(feats["pre:1"], net[0](x))
    assert torch.allclose(feats["pre:3"], net[2](torch.relu(net[0](x))))
    ranks = layer_ranks(net, x, center=False)
    assert ranks["pre:1"][0] == 5  # affine map of 4-D input: rank ≤ 4 + 1 (bias)
    assert ranks["pre:3"][0] == 3


def test_bad_input_raises():
    with pytest.raises(GrokinterpError, match="features"):
        feature_rank(torch.zeros(3))
    with pytest.raises(GrokinterpError, match="finite"):
        feature_rank(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(GrokinterpError, match="rtol"):
        feature_rank(torch.eye(2), rtol=-1.0)
