"""Analyses: pure functions on tensors, plus ``over_training`` mapping them over a run (DESIGN §5).

One analysis = one module that registers ``Analysis(name, factory, applies, summarize)``
(:mod:`grokinterp.analysis.registry`). The analysis modules are imported — and so registered —
on first use of the registry (any read of ``ANALYSES``, or a name below), not when this package
is imported: the light submodules (``curves``, ``phases``) then load without torch or
TransformerLens, which keeps ``grokinterp ls`` and ``report`` from a cache fast (issue 16).

Rules for an analysis module (tests/test_fast_start.py checks them): add it to
:func:`load_analyses`; import ``grokinterp.models`` (TransformerLens) only inside the functions
that need it, never at the top — a report read from the cache imports every analysis module but
builds no model; use :func:`grokinterp.analysis.batch.class_logits` for the class logits.
"""

from typing import Any

__all__ = ["ANALYSES", "Measure", "Results", "applicable", "over_training", "register_analysis"]


def load_analyses() -> None:
    """Import every analysis module; each registers its analysis (a new module goes here)."""
    from grokinterp.analysis import (  # noqa: F401  (each module registers its analysis)
        complexity,
        fourier_progress,
        norms,
        rank,
        robustness,
        rqi,
        slingshot,
        tickets,
        transfer,
    )


def __getattr__(name: str) -> Any:
    # PEP 562: the registry's names load the registry (torch) and every analysis on first use.
    if name in __all__:
        from grokinterp.analysis import registry

        load_analyses()
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
