"""The resume state of a run (``<run>/state/``) in a form whose loading can never run code.

A training loop's resume state is a nested tree (e.g. ``optimizer.state_dict()``, the Grokfast
filter's buffers, RNG states) of dicts, lists, tuples, tensors and plain scalars. It is written
as two files:

``state/latest.safetensors``
    every tensor of the tree (optimizer moments and step counters, filter buffers, RNG states as
    uint8 tensors, ...), under a key made from its path in the tree;
``state/latest.json``
    the tree itself with each tensor replaced by a reference to its key, every scalar (step,
    optimizer hyper-parameters, counters, ...) and the SHA-256 of the tensors file.

The tensors file is written first and the JSON last (each atomically), so the JSON on disk
always names the tensors it was written with; a pair that does not match (a replaced file) is
refused with a :class:`GrokinterpError`, never half-loaded. Until the new JSON is in place the
previous tensors file is kept as ``state/previous.safetensors``, so a kill between the two
writes resumes from the previous state (the one the JSON on disk names).

Runs written by grokinterp before this format hold a pickle, ``state/latest.pt``. It is read
with ``torch.load(weights_only=True)`` (tensors and plain containers only); the full unpickler,
which can execute code stored in the file, only with ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from grokinterp.config import GrokinterpError
from grokinterp.store import atomic_write, atomic_write_text, torch_load

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that read or write tensors: whether a run has a resume state
# (a sweep's bookkeeping) is a file test that must not wait for torch (issue 16).

__all__ = [
    "LEGACY_STATE_FILE",
    "PREVIOUS_TENSORS",
    "STATE_JSON",
    "STATE_TENSORS",
    "decode_state",
    "encode_state",
    "has_resume_state",
    "load_resume_state",
    "resume_state_file",
    "save_resume_state",
]

STATE_TENSORS = Path("state") / "latest.safetensors"
STATE_JSON = Path("state") / "latest.json"
LEGACY_STATE_FILE = Path("state") / "latest.pt"
PREVIOUS_TENSORS = Path("state") / "previous.safetensors"  # kept until the new JSON is written

FORMAT = "grokinterp-resume-state"
STATE_FORMAT_VERSION = 1

# A JSON object with exactly one of these keys stands for a value JSON has no literal for.
_TENSOR, _TUPLE, _ITEMS, _FLOAT = "__tensor__", "__tuple__", "__items__", "__float__"
_TAGS = {_TENSOR, _TUPLE, _ITEMS, _FLOAT}


# ----------------------------------------------------------------------------- tree <-> JSON


def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able tree and a flat dict of (CPU, contiguous) tensors.

    Dicts with string keys become JSON objects; other dicts (e.g. an optimizer's per-parameter
    ``state`` keyed by int) become ``{"__items__": [[key, value], ...]}``; tuples
    ``{"__tuple__": [...]}``; non-finite floats ``{"__float__": "nan"}``; each tensor
    ``{"__tensor__": "<key>"}`` with the key (its dotted path in the tree) in the tensor dict.
    Raises ``TypeError`` for anything else (a programming error, not bad input).
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    storages: set[tuple[str, int]] = set()

    def add_tensor(path: str, t: torch.Tensor) -> dict[str, str]:
        key, n = path or "tensor", 1
        while key in tensors:  # a dict key that itself contains the separator
            n += 1
            key = f"{path}#{n}"
        t = t.detach().cpu().contiguous()
        if t.numel():  # safetensors refuses tensors that share memory: give each its own
            ident = (str(t.device), t.untyped_storage().data_ptr())
            if ident in storages:
                t = t.clone()
            else:
                storages.add(ident)
        tensors[key] = t
        return {_TENSOR: key}

    def enc(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            return add_tensor(path, value)
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        sub = (lambda k: f"{path}.{k}") if path else str
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and not _TAGS & value.keys():
                return {k: enc(v, sub(k)) for k, v in value.items()}
            items = []
            for k, v in value.items():
                if not (k is None or isinstance(k, (bool, int, float, str, tuple))):
                    raise TypeError(f"resume state: dict key {k!r} at {path!r} is not a scalar")
                items.append([enc(k, f"{sub(k)}.key"), enc(v, sub(k))])
            return {_ITEMS: items}
        if isinstance(value, tuple):
            return {_TUPLE: [enc(v, sub(i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, sub(i)) for i, v in enumerate(value)]
        raise TypeError(
            f"resume state: {type(value).__name__} at {path!r} cannot be stored "
            "(allowed: tensors, dicts, lists, tuples, str, int, float, bool, None)"
        )

    return enc(state, ""), tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`; raises ``ValueError`` for a tree it did not write."""

    import torch

    def dec(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [dec(v) for v in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected JSON value {node!r}")
        if len(node) == 1 and next(iter(node)) in _TAGS:
            tag, body = next(iter(node.items()))
            if tag == _TENSOR:
                if not isinstance(body, str) or body not in tensors:
                    raise ValueError(f"names tensor {body!r}, which the tensors file lacks")
                return tensors[body]
            if tag == _FLOAT:
                if body not in ("nan", "inf", "-inf"):
                    raise ValueError(f"bad float {body!r}")
                return float(body)
            if not isinstance(body, list):
                raise ValueError(f"{tag} must hold a list")
            if tag == _TUPLE:
                return tuple(dec(v) for v in body)
            out = {}
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError("__items__ must hold [key, value] pairs")
                key = dec(pair[0])
                if isinstance(key, (list, dict, torch.Tensor)):
                    raise ValueError(f"bad dict key {key!r}")
                out[key] = dec(pair[1])
            return out
        return {k: dec(v) for k, v in node.items()}

    return dec(tree)


# ----------------------------------------------------------------------------- files


def has_resume_state(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a resume state (new format, or a legacy ``latest.pt``)."""
    run_dir = Path(run_dir)
    return (run_dir / STATE_JSON).is_file() or (run_dir / LEGACY_STATE_FILE).is_file()


def resume_state_file(run_dir: str | Path) -> Path:
    """The file :func:`load_resume_state` reads first (for messages): ``latest.json``, or an old
    run's ``latest.pt`` when there is no ``latest.json``."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE_JSON).is_file() and (run_dir / LEGACY_STATE_FILE).is_file():
        return run_dir / LEGACY_STATE_FILE
    return run_dir / STATE_JSON


def save_resume_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``<run_dir>/state/latest.safetensors`` then ``latest.json``.

    Both writes are atomic and the JSON, written last, records the SHA-256 of the tensors file,
    so a reader never pairs a new tensors file with an old JSON unnoticed. A legacy
    ``latest.pt`` left by an older grokinterp is removed once the new state is in place.
    """
    from safetensors.torch import save as save_safetensors_bytes

    run_dir = Path(run_dir)
    tree, tensors = encode_state(state)
    data = save_safetensors_bytes(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    if (run_dir / STATE_TENSORS).is_file():  # what the JSON on disk names, until it is replaced
        os.replace(run_dir / STATE_TENSORS, run_dir / PREVIOUS_TENSORS)
    atomic_write(run_dir / STATE_TENSORS, lambda tmp: tmp.write_bytes(data))
    doc = {
        "format": FORMAT,
        "version": STATE_FORMAT_VERSION,
        "tensors_file": STATE_TENSORS.name,
        "tensors_bytes": len(data),
        "tensors_sha256": digest,
        "state": tree,
    }
    atomic_write_text(run_dir / STATE_JSON, json.dumps(doc, indent=1, allow_nan=False))
    (run_dir / LEGACY_STATE_FILE).unlink(missing_ok=True)
    (run_dir / PREVIOUS_TENSORS).unlink(missing_ok=True)


def load_resume_state(run_dir: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The state :func:`save_resume_state` wrote into ``run_dir`` (tensors on the CPU).

    Falls back to a legacy ``state/latest.pt`` only when the new files are absent (see the
    module docstring for ``trust_pickle``). Every failure is a one-line GrokinterpError that
    names the file.
    """
    from safetensors.torch import load as load_safetensors_bytes

    run_dir = Path(run_dir)
    json_path, tensors_path = run_dir / STATE_JSON, run_dir / STATE_TENSORS
    if not json_path.is_file():
        if tensors_path.is_file():
            raise GrokinterpError(
                f"{json_path} is missing (the run was stopped while writing its first resume "
                f"state): {tensors_path} alone cannot be resumed"
            )
        legacy = run_dir / LEGACY_STATE_FILE
        if legacy.is_file():
            return _load_legacy(legacy, trust_pickle)
        raise GrokinterpError(f"no resume state in {run_dir}: {json_path} is missing")

    try:
        doc = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GrokinterpError(f"{json_path} is truncated or corrupt ({_one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GrokinterpError(f"{json_path} is not a grokinterp resume state")
    version = doc.get("version")
    if not isinstance(version, int) or version > STATE_FORMAT_VERSION:
        raise GrokinterpError(
            f"{json_path} has resume-state version {version!r}; this grokinterp reads "
            f"≤ {STATE_FORMAT_VERSION} (upgrade grokinterp)"
        )
    previous = run_dir / PREVIOUS_TENSORS
    if not tensors_path.is_file() and not previous.is_file():
        raise GrokinterpError(f"{tensors_path} is missing (its JSON {json_path} is there)")
    data = b""
    for candidate in (tensors_path, previous):  # previous: a kill between the two writes
        if not candidate.is_file():
            continue
        try:
            data = candidate.read_bytes()
        except OSError as e:
            raise GrokinterpError(f"{candidate} cannot be read ({_one_line(e)})") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) == doc.get("tensors_bytes") and digest == doc.get("tensors_sha256"):
            tensors_path = candidate
            break
    else:
        raise GrokinterpError(
            f"{tensors_path} does not match {json_path} (different size or SHA-256: truncated, "
            "replaced, or the run was stopped between the two writes); cannot resume from it"
        )
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise GrokinterpError(f"{tensors_path} is corrupt ({_one_line(e)})") from None
    try:
        state = decode_state(doc.get("state"), tensors)
    except (ValueError, TypeError) as e:
        raise GrokinterpError(f"{json_path} is corrupt ({_one_line(e)})") from None
    if not isinstance(state, dict):
        raise GrokinterpError(f"{json_path} does not hold a resume state (not a mapping)")
    return state


def _load_legacy(path: Path, trust_pickle: bool) -> dict[str, Any]:
    """Read an old ``state/latest.pt``: ``weights_only`` unless ``trust_pickle``."""
    try:
        state = torch_load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the safe unpickler refuses or fails on
        if not trust_pickle:
            raise GrokinterpError(
                f"{path} (an old pickled resume state) cannot be read safely with "
                f"weights_only ({_one_line(e)[:200]}); if you trust this file, pass "
                "--trust-pickle (trust_pickle=True) to read it with the full unpickler, "
                "which can run code stored in it"
            ) from None
        try:
            state = torch_load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - any failure of a bad file
            raise GrokinterpError(
                f"{path} could not be unpickled ({type(e2).__name__}: {_one_line(e2)[:200]})"
            ) from None
    if not isinstance(state, dict):
        raise GrokinterpError(f"{path} does not hold a resume state (not a mapping)")
    return state


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
