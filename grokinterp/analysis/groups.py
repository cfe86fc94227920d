"""Re-indexing modular operations onto addition in a cyclic group (for Fourier analysis).

Multiplication and division mod a prime ``p`` become addition in ``Z_{p-1}`` after the discrete
logarithm; subtraction becomes addition after ``b -> -b`` (see :func:`group_indexing`). Used by
:mod:`grokinterp.analysis.fourier` (Nanda et al. 2023's Fourier measures read the grid in group
coordinates) and by the transfer analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grokinterp.config import GrokinterpError

__all__ = ["GroupIndexing", "discrete_log_table", "group_indexing", "is_prime", "primitive_root"]


def is_prime(p: int) -> bool:
    """Deterministic trial-division primality test (p is small here)."""
    if p < 2:
        return False
    if p % 2 == 0:
        return p == 2
    return all(p % d for d in range(3, math.isqrt(p) + 1, 2))


def _prime_factors(m: int) -> list[int]:
    out, d = [], 2
    while d * d <= m:
        if m % d == 0:
            out.append(d)
            while m % d == 0:
                m //= d
        d += 1
    if m > 1:
        out.append(m)
    return out


def primitive_root(p: int) -> int:
    """Smallest primitive root ``g`` modulo the prime ``p`` (generator of ``Z_p^*``).

    ``g`` generates iff ``g^((p-1)/q) != 1 (mod p)`` for every prime ``q | p - 1``.
    """
    if isinstance(p, bool) or not isinstance(p, int) or not is_prime(p) or p < 3:
        raise GrokinterpError(f"p must be an odd prime for a primitive root, got {p!r}")
    qs = _prime_factors(p - 1)
    for g in range(2, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in qs):
            return g
    raise AssertionError("unreachable: every prime has a primitive root")


def discrete_log_table(p: int) -> tuple[int, Tensor, Tensor]:
    """Discrete logarithm base the smallest primitive root ``g`` of the prime ``p``.

    Returns:
        ``(g, power [p-1], log [p])`` with ``power[i] = g^i mod p`` and ``log[power[i]] = i``;
        ``log[0] = -1`` (zero has no logarithm).
    """
    g = primitive_root(p)
    power = torch.tensor([pow(g, i, p) for i in range(p - 1)], dtype=torch.long)
    log = torch.full((p,), -1, dtype=torch.long)
    log[power] = torch.arange(p - 1)
    return g, power, log


_OPERATIONS = ("add", "sub", "mul", "div", "other")


@dataclass(frozen=True)
class GroupIndexing:
    """Map from tokens to a cyclic group ``Z_n`` in which the operation becomes addition.

    ``a_tokens[i]``/``b_tokens[j]`` are the tokens at grid position ``(i, j)``;
    ``class_tokens[(i + j) % n]`` is then the answer (for ``add/sub/mul/div``). ``token_pos_a``
    and ``token_pos_b`` (length ``p``) invert them, -1 for tokens off the grid (0 for mul/div).
    """

    operation: str
    p: int
    n: int
    a_tokens: Tensor
    b_tokens: Tensor
    class_tokens: Tensor
    token_pos_a: Tensor
    token_pos_b: Tensor

    @property
    def is_sum(self) -> bool:
        """Whether the answer is ``class_tokens[(i + j) % n]`` (restricted/excluded loss apply)."""
        return self.operation != "other"

    def grid_tokens(self, eq_token: int | None = None) -> Tensor:
        """All grid inputs ``[n*n, 2]`` (or ``[n*n, 3]`` with ``eq_token`` appended), row-major."""
        a = self.a_tokens.repeat_interleave(self.n)
        b = self.b_tokens.repeat(self.n)
        cols = [a, b] if eq_token is None else [a, b, torch.full_like(a, eq_token)]
        return torch.stack(cols, -1)

    def grid_labels(self) -> Tensor:
        """Answer token per grid position ``[n*n]`` (only for sum-like operations)."""
        if not self.is_sum:
            raise GrokinterpError("grid_labels needs operation in add/sub/mul/div")
        i = torch.arange(self.n)
        return self.class_tokens[((i[:, None] + i[None, :]) % self.n).reshape(-1)]

    def positions(self, a: Tensor, b: Tensor) -> Tensor:
        """Grid position ``i * n + j`` of token pairs, -1 where a token is off the grid."""
        a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
        i, j = self.token_pos_a[a], self.token_pos_b[b]
        return torch.where((i >= 0) & (j >= 0), i * self.n + j, torch.full_like(i, -1))


def group_indexing(operation: str, p: int) -> GroupIndexing:
    """Re-index ``(a, b) -> a op b (mod p)`` as addition in a cyclic group (see module docstring).

    ``mul``/``div`` use the discrete logarithm base a primitive root ``g`` of the prime ``p``:
    ``a * b = g^(log a + log b)``, so in log coordinates multiplication *is* addition in
    ``Z_{p-1}`` and a grokked model shows Fourier structure there (zero is left off the grid).
    ``sub`` negates ``b``; ``div`` negates ``log b``.

    Args:
        operation: one of ``add, sub, mul, div, other`` (or a task name ``mod_add`` ...; task
            names outside these four map to ``other``).
        p: the modulus (prime for ``mul``/``div``).
    """
    if not isinstance(operation, str):
        raise GrokinterpError(f"operation must be a string, got {operation!r}")
    op = operation.removeprefix("mod_")
    if op not in _OPERATIONS:
        if operation.startswith("mod_"):
            op = "other"
        else:
            raise GrokinterpError(f"operation must be one of {_OPERATIONS}, got {operation!r}")
    if isinstance(p, bool) or not isinstance(p, int) or p < 3:
        raise GrokinterpError(f"p must be an integer >= 3, got {p!r}")
    ar = torch.arange(p)
    if op in ("add", "other"):
        a_tok, b_tok, c_tok, n = ar, ar, ar, p
    elif op == "sub":
        a_tok, b_tok, c_tok, n = ar, (-ar) % p, ar, p
    else:
        _, power, _ = discrete_log_table(p)
        n = p - 1
        a_tok, c_tok = power, power
        b_tok = power if op == "mul" else power[(-torch.arange(n)) % n]
    pos_a = torch.full((p,), -1, dtype=torch.long)
    pos_b = torch.full((p,), -1, dtype=torch.long)
    pos_a[a_tok] = torch.arange(n)
    pos_b[b_tok] = torch.arange(n)
    return GroupIndexing(op, p, n, a_tok, b_tok, c_tok, pos_a, pos_b)
