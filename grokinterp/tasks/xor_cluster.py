"""XOR-cluster data (Xu, Ni, Wang, Hu 2025, "Let Me Grok for You", §3).

x = [x_signal ∈ {±1}², x_noise ∈ {±ε}^(dimension−2)], label from y = x₁·x₂ (class 1 if y = +1).
"""

from __future__ import annotations

import torch

from grokinterp.config import GrokinterpError
from grokinterp.tasks.base import Task, check_int


def make_xor_cluster(
    dimension: int = 1000, eps: float = 0.05, n_train: int = 400, n_test: int = 1000, seed: int = 0
) -> Task:
    check_int(dimension, "dimension", 3, 1_000_000)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise GrokinterpError(f"eps={eps!r} must be a number > 0")
    check_int(n_train, "n_train", 1)
    check_int(n_test, "n_test", 1)
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randint(0, 2, (n, dimension), generator=g).float() * 2 - 1
    x[:, 2:] *= eps
    y = (x[:, 0] * x[:, 1] > 0).long()
    return Task(
        name="xor_cluster",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        n_classes=2,
        input_kind="vector",
        params={
            "dimension": dimension,
            "eps": eps,
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
        },
        input_dim=dimension,
    )
