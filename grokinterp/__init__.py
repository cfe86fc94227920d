"""grokinterp: mechanistic interpretability of grokking.

Train small models with dense checkpoints and watch, checkpoint by checkpoint, how the
generalising circuit forms. See README.md for the map.

The top-level names are imported lazily (PEP 562): ``import grokinterp`` and ``grokinterp --help``
stay fast, while ``grokinterp.train`` pulls in torch and TransformerLens on first use.
"""

from grokinterp._version import __version__

_LAZY = {
    "GrokinterpError": "grokinterp.config",
    "RunConfig": "grokinterp.config",
    "load_preset": "grokinterp.config",
    "Run": "grokinterp.store",
    "make_task": "grokinterp.tasks",
    "build_model": "grokinterp.models",
    "over_training": "grokinterp.analysis",
    "DEFAULT_THRESHOLD": "grokinterp.analysis.curves",
    "grok_times": "grokinterp.analysis.curves",
    # the Python API: one function per CLI command (grokinterp.api)
    "run": "grokinterp.api",
    "train": "grokinterp.api",
    "train_seeds": "grokinterp.api",
    "analyze": "grokinterp.api",
    "report": "grokinterp.api",
    "ls": "grokinterp.api",
    "tickets": "grokinterp.api",
    "transfer": "grokinterp.api",
    "sweep": "grokinterp.api",
    "reproduce": "grokinterp.api",
    "import_run": "grokinterp.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grokinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_LAZY, "__version__"])


__all__ = [*_LAZY, "__version__"]
