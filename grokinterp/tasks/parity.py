"""Sparse parity (Barak et al. 2022; Merrill, Tsilivis, Shukla 2023, "A Tale of Two Circuits").

x ∈ {±1}^n uniformly at random; the label is the parity of the first k bits:
class index = (1 − Π x_i) / 2, i.e. 0 when the product is +1 and 1 when it is −1.
"""

from __future__ import annotations

import torch

from grokinterp.config import GrokinterpError
from grokinterp.tasks.base import Task, check_int


def make_sparse_parity(
    n: int = 40, k: int = 3, n_train: int = 1000, n_test: int = 1000, seed: int = 0
) -> Task:
    check_int(n, "n", 1, 10_000)
    check_int(k, "k", 1)
    if k > n:
        raise GrokinterpError(f"k={k} must be ≤ n={n}")
    check_int(n_train, "n_train", 1)
    check_int(n_test, "n_test", 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n_train + n_test, n), generator=g).float() * 2 - 1
    y = ((1 - x[:, :k].prod(dim=1)) / 2).long()
    return Task(
        name="sparse_parity",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        n_classes=2,
        input_kind="vector",
        params={"n": n, "k": k, "n_train": n_train, "n_test": n_test, "seed": seed},
        input_dim=n,
    )
