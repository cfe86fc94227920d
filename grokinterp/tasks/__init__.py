"""Tasks: datasets with a fixed, seeded train/test split (DESIGN §2).

``make_task(name, **params)`` is the single entry point; see :data:`TASKS` for the names.
"""

from __future__ import annotations

from collections.abc import Callable

from grokinterp.config import GrokinterpError
from grokinterp.tasks.base import Task, split_hash
from grokinterp.tasks.images import make_digits, make_mnist
from grokinterp.tasks.modular import MODULAR_OPS, make_modular
from grokinterp.tasks.parity import make_sparse_parity
from grokinterp.tasks.xor_cluster import make_xor_cluster

TASKS: dict[str, Callable[..., Task]] = {
    **{op: (lambda op=op, **kw: make_modular(op, **kw)) for op in MODULAR_OPS},
    "sparse_parity": make_sparse_parity,
    "xor_cluster": make_xor_cluster,
    "digits": make_digits,
    "mnist": make_mnist,
}


def make_task(name: str, **params) -> Task:
    """Build task ``name`` with its parameters (e.g. ``make_task("mod_add", p=59)``)."""
    if name not in TASKS:
        raise GrokinterpError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    try:
        return TASKS[name](**params)
    except TypeError as e:  # unexpected keyword
        raise GrokinterpError(f"task {name!r}: {e}") from None


__all__ = ["Task", "TASKS", "MODULAR_OPS", "make_task", "split_hash"]
