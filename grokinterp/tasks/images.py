"""Image classification for Omnigrok-style grokking (Liu, Michaud, Tegmark 2023).

``digits``: scikit-learn's 8×8 digits (ships inside the package, no download), pixels / 16.
``mnist``: read only from a user-given directory of IDX files; never downloaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from grokinterp.config import GrokinterpError
from grokinterp.tasks.base import Task, check_int, seeded_split


def make_digits(n_train: int = 1000, seed: int = 0) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    check_int(n_train, "n_train", 1, len(y) - 1)
    tr, te = seeded_split(len(y), n_train, seed)
    return Task(
        name="digits",
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        n_classes=10,
        input_kind="vector",
        params={"n_train": n_train, "seed": seed},
        input_dim=64,
    )


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, then the raw array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise GrokinterpError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise GrokinterpError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def make_mnist(
    path: str | None = None, n_train: int = 1000, n_test: int = 10_000, seed: int = 0
) -> Task:
    if path is None:
        raise GrokinterpError(
            "mnist needs task.path = a directory holding the four MNIST IDX files "
            "(grokinterp never downloads data)"
        )
    root = Path(path)
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        found = [root / stem, root / f"{stem}.gz"]
        found = [f for f in found if f.is_file()]
        if not found:
            raise GrokinterpError(f"mnist: {stem}[.gz] not found in {root}")
        arrays[key] = read_idx(found[0])
    check_int(n_train, "n_train", 1, len(arrays["y_train"]))
    check_int(n_test, "n_test", 1, len(arrays["y_test"]))
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(arrays["y_train"]), generator=g)[:n_train]
    te = torch.arange(n_test)
    xt = torch.tensor(arrays["x_train"], dtype=torch.float32).flatten(1) / 255.0
    xs = torch.tensor(arrays["x_test"], dtype=torch.float32).flatten(1) / 255.0
    return Task(
        name="mnist",
        x_train=xt[tr],
        y_train=torch.tensor(arrays["y_train"], dtype=torch.long)[tr],
        x_test=xs[te],
        y_test=torch.tensor(arrays["y_test"], dtype=torch.long)[te],
        n_classes=10,
        input_kind="vector",
        params={"path": str(path), "n_train": n_train, "n_test": n_test, "seed": seed},
        input_dim=xt.shape[1],
    )
