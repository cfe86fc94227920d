"""Modular arithmetic (Power et al. 2022, "Grokking: generalization beyond overfitting on small
algorithmic datasets"). Inputs are ``[a, b, =]`` tokens (the ``=`` token is ``p``), the label is
``(a op b) mod p``; the split is a seeded permutation of all valid pairs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from grokinterp.config import GrokinterpError
from grokinterp.tasks.base import Task, check_fraction, check_int, seeded_split


def _inv(b: torch.Tensor, p: int) -> torch.Tensor:
    return torch.tensor([pow(int(v), p - 2, p) for v in b], dtype=torch.long)


# op -> (label function on int64 tensors, needs prime p, pair filter)
MODULAR_OPS: dict[str, tuple[Callable, bool, Callable | None]] = {
    "mod_add": (lambda a, b, p: (a + b) % p, False, None),
    "mod_sub": (lambda a, b, p: (a - b) % p, False, None),
    "mod_mul": (lambda a, b, p: (a * b) % p, False, None),
    "mod_div": (lambda a, b, p: (a * _inv(b, p)) % p, True, lambda a, b: b != 0),
    "mod_x2_y2": (lambda a, b, p: (a * a + b * b) % p, False, None),
    "mod_x2_xy_y2": (lambda a, b, p: (a * a + a * b + b * b) % p, False, None),
    "mod_x2_xy_y2_x": (lambda a, b, p: (a * a + a * b + b * b + a) % p, False, None),
    "mod_x3_xy": (lambda a, b, p: (a**3 + a * b) % p, False, None),
    "mod_x3_xy2_y": (lambda a, b, p: (a**3 + a * b * b + b) % p, False, None),
    # x/y if y is odd else x−y (y odd implies y ≠ 0, so every pair is valid)
    "mod_odd_div_else_sub": (
        lambda a, b, p: torch.where(b % 2 == 1, (a * _inv(b, p)) % p, (a - b) % p),
        True,
        None,
    ),
}


def _split(n: int, frac: float, seed: int, split: str, train_indices: list[int] | None):
    if split == "seeded":
        return seeded_split(n, round(frac * n), seed)
    if split == "python_shuffle":
        order = list(range(n))
        random.Random(seed).shuffle(order)  # == random.seed(seed); random.shuffle(order)
        order_t = torch.tensor(order, dtype=torch.long)
        return order_t[: int(frac * n)], order_t[int(frac * n) :]
    if split == "indices":
        tr = torch.as_tensor(train_indices if train_indices is not None else [], dtype=torch.long)
        if (
            tr.ndim != 1
            or len(tr) == 0
            or tr.min() < 0
            or tr.max() >= n
            or len(tr.unique()) != len(tr)
        ):
            raise GrokinterpError(
                f"train_indices must be distinct integers in 0..{n - 1} (split='indices')"
            )
        keep = torch.ones(n, dtype=torch.bool)
        keep[tr] = False
        return tr, torch.nonzero(keep).squeeze(1)
    raise GrokinterpError(f"split={split!r} is not valid; allowed: seeded, python_shuffle, indices")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def make_modular(
    op: str,
    p: int = 97,
    train_fraction: float = 0.3,
    seed: int = 0,
    split: str = "seeded",
    train_indices: list[int] | None = None,
) -> Task:
    """All pairs (a, b) ∈ Z_p², labelled ``a op b mod p``; ``train_fraction`` of them train.

    ``split`` (for runs imported from other code, grokinterp.store.importers): ``"seeded"``
    (default, a torch permutation), ``"python_shuffle"`` (Nanda et al. 2023's code: row-major
    pairs, ``random.seed(seed); random.shuffle(pairs)``, the first ``int(train_fraction·N)``
    train) or ``"indices"`` (``train_indices`` into the row-major list of valid pairs; the rest
    are test, e.g. the TransformerLens grokking demo's saved split).
    """
    fn, needs_prime, keep = MODULAR_OPS[op]
    check_int(p, "p", 2, 2000)
    if needs_prime and not is_prime(p):
        raise GrokinterpError(f"{op} needs a prime p (division needs inverses); got p={p}")
    check_fraction(train_fraction)
    check_int(seed, "seed", 0)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if keep is not None:
        sel = keep(a, b)
        a, b = a[sel], b[sel]
    y = fn(a, b, p).long()
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    tr, te = _split(len(y), train_fraction, seed, split, train_indices)
    return Task(
        name=op,
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        n_classes=p,
        input_kind="tokens",
        params={"p": p, "train_fraction": train_fraction, "seed": seed},
        vocab_size=p + 1,
        p=p,
    )
