"""Safe unpickling of torch files written by other code (the files ``importers`` reads).

``load_pickle(path, trust_pickle=False)`` reads a file with ``torch.load(weights_only=True)``,
which only rebuilds tensors and plain containers, plus an allow-list of names that this module
maps to inert stand-ins, never to the classes themselves: the TransformerLens 3.x config class (an
object that only receives its pickled state, :class:`PickledObject`) and numpy's numeric scalars
(``numpy.dtype`` and ``numpy._core.multiarray.scalar``, decoded from their bytes into a Python
number; other dtypes are refused). A file that needs anything else is refused, naming the class,
unless ``trust_pickle=True`` (``--trust-pickle``): then the full unpickler reads it, with classes
that no longer import mapped to :class:`PickledObject`. Every failure is a one-line
``GrokinterpError`` without torch's ANSI-coloured advice.
"""

from __future__ import annotations

import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from grokinterp.config import GrokinterpError
from grokinterp.store import torch_load

__all__ = ["PickledObject", "load_pickle"]


class PickledObject:
    """Inert stand-in for a class that cannot (or must not) be imported: it only keeps the
    pickled state. ``.state`` is the ``__dict__`` the object had when saved."""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.__dict__["state"] = {}
        obj.__dict__["args"] = args
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.__dict__["state"] = dict(state) if isinstance(state, Mapping) else {"value": state}

    def __repr__(self) -> str:
        return f"PickledObject({self.state!r})"


class _TLConfigStandIn(PickledObject):
    """Registered for weights_only loading under the TransformerLens 3.x config class names."""


_TL_CONFIG_NAMES = (
    "transformer_lens.HookedTransformerConfig.HookedTransformerConfig",
    "transformer_lens.config.HookedTransformerConfig.HookedTransformerConfig",
)


class _NumpyDType:
    """Stand-in registered for weights_only loading as ``numpy.dtype``: keeps the pickled
    dtype's spec (``"f8"``) and byte order, builds nothing."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, itemsize, ...)
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def numeric(self) -> np.dtype:
        """The numpy dtype if it is a plain bool, integer, float or complex; else refuse."""
        try:
            d = np.dtype(self.spec) if isinstance(self.spec, str) else None
        except TypeError:
            d = None
        if d is None or d.kind not in "biufc" or d.fields is not None or d.subdtype is not None:
            raise pickle.UnpicklingError(
                f"numpy scalar of dtype {self.spec!r} is not allowed (numbers only)"
            )
        return d if self.byteorder in ("=", "|") else d.newbyteorder(self.byteorder)


def _numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool | complex:
    """Stand-in registered as numpy's scalar reconstructor: a numeric numpy scalar (e.g. TL 3's
    ``initializer_range = 0.8 / np.sqrt(d_model)``) from its raw bytes, as a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar in an unsupported form")
    d = dtype.numeric()
    if len(data) != d.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {d} with {len(data)} bytes")
    return np.frombuffer(data, dtype=d)[0].item()


# name in the file -> inert stand-in, for torch.load(weights_only=True)
_SAFE_GLOBALS = [
    *((_TLConfigStandIn, name) for name in _TL_CONFIG_NAMES),
    (_NumpyDType, "numpy.dtype"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),  # numpy 2
    (_numpy_scalar, "numpy.core.multiarray.scalar"),  # numpy 1
]


class _LenientUnpickler(pickle.Unpickler):
    """Full unpickler (used only with trust_pickle) that maps classes which no longer import
    (e.g. ``HookedTransformerConfig`` under transformer-lens 4) to :class:`PickledObject`."""

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in _TL_CONFIG_NAMES:
            return _TLConfigStandIn
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            # the module name these stand-ins had before this module was split from importers
            return type(name, (PickledObject,), {"__module__": "grokinterp.store.importers"})


_lenient_pickle = types.ModuleType("grokinterp_lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler  # type: ignore[attr-defined]
_lenient_pickle.load = lambda f, **kw: _LenientUnpickler(f, **kw).load()  # type: ignore[attr-defined]
_lenient_pickle.__name__ = "pickle"


def load_pickle(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` a file safely: ``weights_only=True`` first; the full unpickler (which can
    run code stored in the file) only with ``trust_pickle=True``."""
    import torch  # lazy: the modules that only open runs never import torch (issue 16)

    path = Path(path)
    if not path.is_file():
        raise GrokinterpError(f"file not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch_load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            why = _refusal(e)
            raise GrokinterpError(
                f"{path} holds Python objects that safe loading (weights_only) refuses ({why}); "
                "unpickling them can execute code from the file: pass --trust-pickle "
                "(trust_pickle=True) only if you trust where the file came from"
            ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise GrokinterpError(f"{path} is not a readable torch file ({_squash(e)})") from None
    try:
        return torch_load(
            path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle
        )
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is a bad input file
        raise GrokinterpError(
            f"{path} could not be unpickled ({type(e).__name__}: {_squash(e)})"
        ) from None


def _refusal(e: BaseException) -> str:
    """Why weights_only refused a file, in a few words: the class it met, or our stand-ins'
    reason (torch's own message is a paragraph of advice with terminal colour codes)."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"class {m.group(1)} is not on the allow-list"
    m = re.search(r"numpy scalar[^\n]*", text)
    return m.group(0)[:200] if m else _squash(e)[:200]


def _squash(e: BaseException) -> str:
    """An exception's message on one line (at most 300 characters), without ANSI codes."""
    return " ".join(str(GrokinterpError(str(e))).split())[:300] or type(e).__name__
