"""Phases of learning from a run's accuracy curves, and their aggregation over seeds.

Liu, Kitouni, Nolte, Michaud, Tegmark, Williams 2022, "Towards Understanding Grokking: An
Effective Theory of Representation Learning" (NeurIPS 2022), draw phase diagrams over
hyperparameters (weight decay, learning rate, data fraction) with four phases:

- **comprehension**: the model generalizes at about the time it fits the training set;
- **grokking**: it fits the training set first and generalizes much later;
- **memorization**: it fits the training set and never generalizes (within the budget);
- **confusion**: it does not even fit the training set.

The times are those of :mod:`grokinterp.analysis.curves` (the one definition of "it grokked"):
``fit_step`` / ``generalize_step`` are the first evaluated steps at which train / test accuracy
is ≥ ``threshold`` and stays so for ``sustain`` consecutive evaluations
(:func:`~grokinterp.analysis.curves.first_crossing`), ``delay = generalize_step - fit_step``
(steps) and ``ratio = generalize_step / max(fit_step, 1)`` (the τ = t_gen / t_mem of Minegishi
et al.). With ``R`` the grokking ratio cut-off (default 3):

==========================  =================================================================
phase                       condition
==========================  =================================================================
``confusion``               neither time defined (no curve reaches the threshold)
``memorization``            ``fit_step`` defined, ``generalize_step`` undefined
``grokking``                both defined and ``ratio ≥ R``
``comprehension``           both defined and ``ratio < R``; also a run whose test accuracy
                            reaches the threshold while train accuracy never does (e.g. noisy
                            train labels): it generalizes without fitting
==========================  =================================================================

Why the phase threshold is :data:`PHASE_THRESHOLD` (90 %), not
:data:`~grokinterp.analysis.curves.DEFAULT_THRESHOLD` (95 %): the phase rule reproduces Liu et
al.'s phase diagrams, which call a curve "reached" at 90 % accuracy (their step cut-offs are
replaced here by the ratio ``R`` so that the rule does not depend on the scale of the step
budget), and it is applied to every run of a sweep, often with ``sustain > 1`` to ignore single
spikes — a classification over a grid, not the headline "when did this run grok" of the report,
the CLI, tickets and transfer, which all use ``DEFAULT_THRESHOLD``. Keeping 0.9 also keeps the
phase labels of existing sweeps. The threshold is a parameter (``grokinterp sweep --threshold``)
and is recorded in the sweep manifest.

Everything here is a pure function on plain lists (e.g. the columns of ``Run.metrics``): no
torch, no disk.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grokinterp.analysis.curves import GrokTimes, first_crossing
from grokinterp.config import GrokinterpError

__all__ = [
    "DEFAULT_RATIO",
    "PHASE_THRESHOLD",
    "PHASES",
    "CellPhases",
    "RunPhase",
    "aggregate_phases",
    "classify_metrics",
    "classify_phase",
    "validate_phase_params",
]

PHASES: tuple[str, ...] = ("comprehension", "grokking", "memorization", "confusion")
PHASE_THRESHOLD = 0.9  # Liu et al. 2022's level; why not curves.DEFAULT_THRESHOLD: module doc
DEFAULT_RATIO = 3.0


@dataclass(frozen=True)
class RunPhase:
    """The phase of one run and the times it was decided from (steps; None = never)."""

    phase: str
    fit_step: int | None
    generalize_step: int | None
    delay: int | None  # generalize_step - fit_step (steps), when both are defined
    ratio: float | None  # generalize_step / max(fit_step, 1), when both are defined
    final_train_acc: float | None = None
    final_test_acc: float | None = None
    last_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunPhase:
        """A run's ``to_dict()`` form as stored in ``sweep.json``, old manifests included.

        Reads the current keys (``fit_step``, ``generalize_step``, ``delay``, ``ratio``) and those
        of manifests written before the one vocabulary: ``t_train``, ``t_test`` and ``delay``,
        which there was the *ratio* t_test / max(t_train, 1); the delay in steps is then
        recomputed from the two times."""
        new = any(k in d for k in ("fit_step", "generalize_step", "ratio"))
        if new or not any(k in d for k in ("t_train", "t_test", "delay")):
            fit, gen, ratio = d.get("fit_step"), d.get("generalize_step"), d.get("ratio")
            delay = d.get("delay")
        else:  # a sweep.json written before fit_step / generalize_step
            fit, gen, ratio, delay = d.get("t_train"), d.get("t_test"), d.get("delay"), None
        if delay is None and fit is not None and gen is not None:
            delay = gen - fit
        return cls(
            phase=d.get("phase"),
            fit_step=fit,
            generalize_step=gen,
            delay=delay,
            ratio=ratio,
            final_train_acc=d.get("final_train_acc"),
            final_test_acc=d.get("final_test_acc"),
            last_step=d.get("last_step"),
        )


@dataclass(frozen=True)
class CellPhases:
    """Phases of the seeds of one grid cell.

    ``fractions`` maps every name of :data:`PHASES` to the fraction of classified runs in that
    phase; ``phase`` is the most frequent one (ties go to the earlier name of :data:`PHASES`);
    the medians are over the runs where the value is defined (None if none is).
    """

    phase: str | None
    n_runs: int
    fractions: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    median_ratio: float | None = None
    median_delay: float | None = None
    median_fit_step: float | None = None
    median_generalize_step: float | None = None

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


def classify_phase(
    steps: Sequence[int],
    train_acc: Sequence[float],
    test_acc: Sequence[float],
    threshold: float = PHASE_THRESHOLD,
    ratio: float = DEFAULT_RATIO,
    sustain: int = 1,
) -> RunPhase:
    """Classify one run into a phase of Liu et al. 2022 from its accuracy curves.

    Args:
        steps: evaluated steps, increasing.
        train_acc, test_acc: accuracies in [0, 1] at those steps.
        threshold: accuracy that counts as "reached" (default :data:`PHASE_THRESHOLD`, 0.9).
        ratio: ``R``; grokking when ``generalize_step ≥ R · max(fit_step, 1)`` (default 3).
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
    times = GrokTimes(
        first_crossing(steps, train_acc, threshold, sustain),
        first_crossing(steps, test_acc, threshold, sustain),
        threshold,
    )
    if times.fit_step is None:
        phase = "confusion" if times.generalize_step is None else "comprehension"
    elif times.generalize_step is None:
        phase = "memorization"
    else:
        phase = "grokking" if times.ratio >= ratio else "comprehension"
    return RunPhase(
        phase=phase,
        fit_step=times.fit_step,
        generalize_step=times.generalize_step,
        delay=times.delay,
        ratio=times.ratio,
        final_train_acc=float(train_acc[-1]),
        final_test_acc=float(test_acc[-1]),
        last_step=int(steps[-1]),
    )


def classify_metrics(
    metrics: Sequence[Mapping[str, Any]],
    threshold: float = PHASE_THRESHOLD,
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
    """Aggregate the seeds of one cell: fraction per phase, majority phase, median times.

    Accepts :class:`RunPhase` objects or their ``to_dict()`` form (as stored in ``sweep.json``,
    old manifests included: :meth:`RunPhase.from_dict`). An empty list gives ``phase=None`` and zero
    fractions (a cell with no finished run).
    """
    parsed = [r if isinstance(r, RunPhase) else RunPhase.from_dict(r) for r in runs]
    for r in parsed:
        if r.phase not in PHASES:
            raise GrokinterpError(f"phase={r.phase!r} is not one of {', '.join(PHASES)}")

    def median(attr: str) -> float | None:
        return _median([float(v) for r in parsed if (v := getattr(r, attr)) is not None])

    phases = [r.phase for r in parsed]
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
        median_ratio=median("ratio"),
        median_delay=median("delay"),
        median_fit_step=median("fit_step"),
        median_generalize_step=median("generalize_step"),
    )
