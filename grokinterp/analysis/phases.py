"""Phases of learning from a run's accuracy curves, and their aggregation over seeds.

Liu, Kitouni, Nolte, Michaud, Tegmark, Williams 2022, "Towards Understanding Grokking: An
Effective Theory of Representation Learning" (NeurIPS 2022), draw phase diagrams over
hyperparameters (weight decay, learning rate, data fraction) with four phases:

- **comprehension**: the model generalizes at about the time it fits the training set;
- **grokking**: it fits the training set first and generalizes much later;
- **memorization**: it fits the training set and never generalizes (within the budget);
- **confusion**: it does not even fit the training set.

The rule used here (thresholds are our documented defaults, not the paper's step cut-offs, so
that the rule does not depend on the scale of the step budget). With ``thr`` the accuracy
threshold (default 0.9), ``t_train`` / ``t_test`` the first evaluated step at which train / test
accuracy is ≥ ``thr`` (and stays so for ``sustain`` consecutive evaluations), and ``R`` the
grokking ratio (default 3):

==========================  =================================================================
phase                       condition
==========================  =================================================================
``confusion``               ``t_train`` and ``t_test`` both undefined (neither reaches thr)
``memorization``            ``t_train`` defined, ``t_test`` undefined
``grokking``                both defined and ``t_test ≥ R · max(t_train, 1)``
``comprehension``           both defined and ``t_test < R · max(t_train, 1)``; also a run whose
                            test accuracy reaches ``thr`` while train accuracy never does
                            (e.g. noisy train labels): it generalizes without fitting
==========================  =================================================================

The delay is ``t_test / max(t_train, 1)``: the ``t_gen / t_mem`` ratio of Minegishi et al.
("Bridging Lottery Ticket and Grokking"), defined when both times are. Everything here is a
pure function on plain lists (e.g. the columns of ``Run.metrics``): no torch, no disk.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grokinterp.config import GrokinterpError

__all__ = [
    "DEFAULT_RATIO",
    "DEFAULT_THRESHOLD",
    "PHASES",
    "CellPhases",
    "RunPhase",
    "aggregate_phases",
    "classify_metrics",
    "classify_phase",
    "first_sustained_step",
    "validate_phase_params",
]

PHASES: tuple[str, ...] = ("comprehension", "grokking", "memorization", "confusion")
DEFAULT_THRESHOLD = 0.9
DEFAULT_RATIO = 3.0


@dataclass(frozen=True)
class RunPhase:
    """The phase of one run and the times it was decided from (steps; None = never)."""

    phase: str
    t_train: int | None
    t_test: int | None
    delay: float | None  # t_test / max(t_train, 1), when both are defined
    final_train_acc: float | None = None
    final_test_acc: float | None = None
    last_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CellPhases:
    """Phases of the seeds of one grid cell.

    ``fractions`` maps every name of :data:`PHASES` to the fraction of classified runs in that
    phase; ``phase`` is the most frequent one (ties go to the earlier name of :data:`PHASES`);
    ``median_delay`` is the median of the defined delays (None if no run has both times).
    """

    phase: str | None
    n_runs: int
    fractions: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    median_delay: float | None = None
    median_t_train: float | None = None
    median_t_test: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_phase_params(threshold: float, ratio: float, sustain: int) -> None:
    """Raise GrokinterpError unless 0 < threshold ≤ 1, ratio ≥ 1 (finite), sustain ≥ 1 (int)."""
    if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise GrokinterpError(f"threshold={threshold!r} must be a number in (0, 1]")
    if not (isinstance(ratio, int | float) and ratio >= 1 and math.isfinite(ratio)):
        raise GrokinterpError(f"ratio={ratio!r} must be a finite number ≥ 1")
    if not (isinstance(sustain, int) and sustain >= 1):
        raise GrokinterpError(f"sustain={sustain!r} must be an integer ≥ 1")


def first_sustained_step(
    steps: Sequence[int], values: Sequence[float], threshold: float, sustain: int = 1
) -> int | None:
    """First ``steps[i]`` with ``values[i..i+sustain-1]`` all ≥ ``threshold`` (None if never).

    A run of fewer than ``sustain`` evaluations at the very end of training also counts: the
    budget, not the model, cut it short. NaN never counts as reaching the threshold.
    """
    if len(steps) != len(values):
        raise GrokinterpError(
            f"steps and values must have the same length, got {len(steps)} and {len(values)}"
        )
    start, count = None, 0
    for s, v in zip(steps, values, strict=True):
        if v is not None and not math.isnan(float(v)) and float(v) >= threshold:
            if count == 0:
                start = int(s)
            count += 1
            if count >= sustain:
                return start
        else:
            start, count = None, 0
    return start  # a streak still running at the end of the budget (or None)


def classify_phase(
    steps: Sequence[int],
    train_acc: Sequence[float],
    test_acc: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    ratio: float = DEFAULT_RATIO,
    sustain: int = 1,
) -> RunPhase:
    """Classify one run into a phase of Liu et al. 2022 from its accuracy curves.

    Args:
        steps: evaluated steps, increasing.
        train_acc, test_acc: accuracies in [0, 1] at those steps.
        threshold: accuracy that counts as "reached" (default 0.9).
        ratio: ``R``; grokking when ``t_test ≥ R · max(t_train, 1)`` (default 3).
        sustain: the threshold must hold for this many consecutive evaluations (default 1).

    Returns:
        A :class:`RunPhase` (see the module docstring for the exact rule).
    """
    validate_phase_params(threshold, ratio, sustain)
    if not (len(steps) == len(train_acc) == len(test_acc)):
        raise GrokinterpError(
            f"steps, train_acc and test_acc must have one length, got "
            f"{len(steps)}, {len(train_acc)}, {len(test_acc)}"
        )
    if len(steps) == 0:
        raise GrokinterpError("steps is empty: a run needs at least one evaluation")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise GrokinterpError("steps must be strictly increasing")
    t_train = first_sustained_step(steps, train_acc, threshold, sustain)
    t_test = first_sustained_step(steps, test_acc, threshold, sustain)
    delay = None
    if t_train is None:
        phase = "confusion" if t_test is None else "comprehension"
    elif t_test is None:
        phase = "memorization"
    else:
        delay = t_test / max(t_train, 1)
        phase = "grokking" if delay >= ratio else "comprehension"
    return RunPhase(
        phase=phase,
        t_train=t_train,
        t_test=t_test,
        delay=delay,
        final_train_acc=float(train_acc[-1]),
        final_test_acc=float(test_acc[-1]),
        last_step=int(steps[-1]),
    )


def classify_metrics(
    metrics: Sequence[Mapping[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
    ratio: float = DEFAULT_RATIO,
    sustain: int = 1,
) -> RunPhase:
    """:func:`classify_phase` on ``Run.metrics`` rows (dicts with step, train_acc, test_acc)."""
    rows = [m for m in metrics if "train_acc" in m and "test_acc" in m and "step" in m]
    if not rows:
        raise GrokinterpError("metrics has no rows with step, train_acc and test_acc")
    return classify_phase(
        [int(m["step"]) for m in rows],
        [m["train_acc"] for m in rows],
        [m["test_acc"] for m in rows],
        threshold,
        ratio,
        sustain,
    )


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def aggregate_phases(runs: Sequence[RunPhase | Mapping[str, Any]]) -> CellPhases:
    """Aggregate the seeds of one cell: fraction per phase, majority phase, median delay.

    Accepts :class:`RunPhase` objects or their ``to_dict()`` form (as stored in ``sweep.json``).
    An empty list gives ``phase=None`` and zero fractions (a cell with no finished run).
    """
    phases, delays, t_tr, t_te = [], [], [], []
    for r in runs:
        d = r.to_dict() if isinstance(r, RunPhase) else dict(r)
        if d.get("phase") not in PHASES:
            raise GrokinterpError(f"phase={d.get('phase')!r} is not one of {', '.join(PHASES)}")
        phases.append(d["phase"])
        if d.get("delay") is not None:
            delays.append(float(d["delay"]))
        if d.get("t_train") is not None:
            t_tr.append(float(d["t_train"]))
        if d.get("t_test") is not None:
            t_te.append(float(d["t_test"]))
    n = len(phases)
    counts = {p: phases.count(p) for p in PHASES}
    fractions = {p: (counts[p] / n if n else 0.0) for p in PHASES}
    # max() keeps the first maximum, so ties go to the earlier name of PHASES.
    majority = max(PHASES, key=lambda p: counts[p]) if n else None
    return CellPhases(
        phase=majority,
        n_runs=n,
        fractions=fractions,
        counts=counts,
        median_delay=_median(delays),
        median_t_train=_median(t_tr),
        median_t_test=_median(t_te),
    )
