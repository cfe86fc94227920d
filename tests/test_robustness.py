"""L∞ PGD (Madry et al. 2018) on a linear classifier reaches the analytic worst case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokinterp.analysis.robustness import pgd_accuracy, pgd_attack
from grokinterp.config import GrokinterpError


def linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Linear(6, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(2, 6, generator=g, dtype=torch.float64))
        net.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g) < 0.5).long()
    return net, x, y


def margins(net, x, y):
    with torch.no_grad():
        z = net(x)
    return z.gather(1, y[:, None])[:, 0] - z.gather(1, (1 - y)[:, None])[:, 0]


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
def test_pgd_reaches_linear_worst_case(eps):
    # For a linear binary classifier the worst L∞ perturbation of size ε lowers the margin
    # m(x) = (w_y − w_o)·x + (b_y − b_o) by exactly ε‖w_y − w_o‖₁ (at x − ε·sign(w_y − w_o)), so
    # the robust accuracy is the fraction of points with m(x) > ε‖w_y − w_o‖₁.
    net, x, y = linear_problem()
    dw = net.weight[y] - net.weight[1 - y]  # [n, D]
    m = margins(net, x, y)
    worst = m - eps * dw.detach().abs().sum(1)
    x_adv = pgd_attack(net, x, y, eps=eps, step_size=eps / 4, steps=10)
    assert (x_adv - x).abs().max() <= eps + 1e-12
    assert torch.allclose(margins(net, x_adv, y), worst.detach())
    analytic = float((worst > 0).double().mean())
    assert pgd_accuracy(net, x, y, eps=eps, steps=10) == pytest.approx(analytic)
    clean = float((m > 0).double().mean())
    assert analytic < clean  # the attack does something


def test_eps_zero_and_clamp():
    net, x, y = linear_problem(1)
    m = margins(net, x, y)
    assert pgd_accuracy(net, x, y, eps=0.0) == pytest.approx(float((m > 0).double().mean()))
    x01 = x.sigmoid()
    x_adv = pgd_attack(net, x01, y, eps=0.3, steps=5, clamp=(0.0, 1.0), random_start=True)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x01).abs().max() <= 0.3 + 1e-12


def test_bad_inputs():
    net, x, y = linear_problem()
    with pytest.raises(GrokinterpError, match="eps"):
        pgd_attack(net, x, y, eps=-1.0)
    with pytest.raises(GrokinterpError, match="steps"):
        pgd_attack(net, x, y, eps=0.1, steps=0)
    with pytest.raises(GrokinterpError, match="float"):
        pgd_attack(net, x.long(), y, eps=0.1)
