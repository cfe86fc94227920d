"""Reading an ``over_training`` result dict for figures: one accessor for every topic module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from grokinterp.config import GrokinterpError


def as_array(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array from a tensor, array or list (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def result(results: Mapping[str, Any], analysis: str, key: str, dtype: Any = None) -> np.ndarray:
    """``results["<analysis>/<key>"]`` (or a bare ``key``), with a clear error when missing."""
    for k in (f"{analysis}/{key}", key):
        if k in results:
            return as_array(results[k], dtype)
    raise GrokinterpError(
        f"results lack {analysis + '/' + key!r}; pass the output of over_training(run, [{analysis!r}])"
    )


def result_steps(results: Mapping[str, Any], analysis: str) -> np.ndarray:
    """The checkpoint steps of an ``over_training`` result, as floats (for plot axes)."""
    if "steps" not in results:
        raise GrokinterpError(
            f"results lack 'steps'; pass the output of over_training(run, [{analysis!r}])"
        )
    return as_array(results["steps"], float)
