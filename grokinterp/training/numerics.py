"""Losses, norms and the CPU determinism settings of training (issue 15 item 2).

**Determinism on CPU.** A training command gives bit-identical checkpoints and metrics on every
run and whatever the number of torch threads. Two things stood in the way, both measured with
``grokinterp train --preset demo`` (``tests/test_determinism.py``):

- the backward of the embedding gather ``W_E[tokens]`` is ``index_put_`` with accumulation,
  which on CPU adds rows from several threads with atomics: with 2 threads two identical runs
  differed at step 1 (5e-8 in ``W_E``'s gradient, then chaotic growth). Under PyTorch's
  deterministic algorithms (:func:`cpu_determinism`, scoped to the training loop) it accumulates
  serially, in sample order, as with one thread; the cost on the demo and nanda2023 steps is
  within noise (``benchmarks/bench_threads.py``);
- a reduction of a whole tensor to one number with at least 32 768 elements (``GRAIN_SIZE``)
  is split over threads and the partial sums are added in an order that depends on the thread
  count (an L1 norm of the ``nanda2023`` MLP differed in the last bit between 1 and 2 threads).
  The norms (:func:`seed_norms`) reduce fixed-size chunks, one output each, then the few chunk
  results; the metrics sum losses over evaluation chunks of 8 192 samples: each output is
  computed by one thread in one order, so the result is the same on every thread count.

Reductions with many outputs (row-wise, per seed) give each output to one thread, and the matrix
products gave the same bits on 1 and 2 threads for the presets' sizes (MKL splits a product by
output blocks); ``tests/test_determinism.py`` compares 1 and 2 threads bit for bit.

**GPU**: CUDA runs are not bit-reproducible (atomics in ``index_add_``, cuBLAS and
``torch.compile`` kernel choices); they agree with CPU runs and with each other to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

# Reductions of at most this many elements run on one thread in ATen (at::internal::GRAIN_SIZE
# is 32 768); chunks of this size are reduced one per output, whatever the thread count.
CHUNK = 16_384


@contextlib.contextmanager
def cpu_determinism(threads: int | None, deterministic: bool = True) -> Iterator[None]:
    """Inside the block: ``threads`` torch threads (``None``/0: leave as is) and, with
    ``deterministic``, PyTorch's deterministic algorithms (without its NaN-filling of new
    memory, which only helps to find reads of uninitialised memory); all restored after it.

    Deterministic algorithms are for CPU training only: on CUDA they need a cuBLAS workspace
    setting and are slow or missing for some kernels, and CUDA runs are not bit-exact anyway.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic
    prev_fill = fill.fill_uninitialized_memory
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            fill.fill_uninitialized_memory = prev_fill
        if threads and torch.get_num_threads() != prev_threads:
            torch.set_num_threads(prev_threads)


def _chunked(flat: torch.Tensor) -> torch.Tensor:
    """``[S, n]`` → ``[S, k, CHUNK]`` zero-padded (zeros change neither an L1 nor an L2 norm)."""
    s, n = flat.shape
    k = -(-n // CHUNK)
    if k * CHUNK != n:
        flat = F.pad(flat, (0, k * CHUNK - n))
    return flat.view(s, k, CHUNK)


def seed_norms(params: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-seed global L2 and L1 norms ``([S], [S])`` of parameters ``[S, ...]``, the same on
    every thread count (see the module docstring)."""
    l2, l1 = [], []
    for p in params:
        flat = p.detach().reshape(p.shape[0], -1)
        if flat.shape[1] > CHUNK:
            parts = _chunked(flat)
            l2.append(torch.linalg.vector_norm(torch.linalg.vector_norm(parts, 2, dim=2), dim=1))
            l1.append(torch.linalg.vector_norm(parts, 1, dim=2).sum(1))
        else:
            l2.append(torch.linalg.vector_norm(flat, 2, dim=1))
            l1.append(torch.linalg.vector_norm(flat, 1, dim=1))
    return torch.linalg.vector_norm(torch.stack(l2), 2, dim=0), torch.stack(l1).sum(0)


def loss_fn(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (in float64 when the model is, as Minegishi et al.), MSE on one-hot targets
    (mean over all entries, as Omnigrok's ``nn.MSELoss``) or multi-class hinge (for two classes:
    ½·max(0, 1 − y·f) with f the logit difference, Merrill et al.'s hinge up to a factor ½)."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits, y)
    if kind == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))
    return F.multi_margin_loss(logits, y)


def per_sample_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's loss ``[S, N]`` from ``logits [S, N, C]`` and labels ``y [N]``, by the
    definitions of :func:`loss_fn` (whose value is the mean over samples)."""
    s, n, c = logits.shape
    if kind == "cross_entropy":
        logp = logits.log_softmax(-1)
        return -logp.gather(-1, y.expand(s, n).unsqueeze(-1)).squeeze(-1)
    if kind == "mse":
        return (logits - F.one_hot(y, c).to(logits.dtype)).pow(2).mean(-1)
    return F.multi_margin_loss(logits.reshape(s * n, c), y.repeat(s), reduction="none").view(s, n)


def per_seed_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of each seed ``[S]``: the mean of :func:`per_sample_loss`."""
    return per_sample_loss(kind, logits, y).mean(1)


__all__ = [
    "CHUNK",
    "cpu_determinism",
    "loss_fn",
    "per_sample_loss",
    "per_seed_loss",
    "seed_norms",
]
