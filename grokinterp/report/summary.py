"""Headline numbers of a run (``summary.json``): when it fit its training set, when it
generalised.

Following Power et al. 2022 ("Grokking: generalization beyond overfitting on small algorithmic
datasets"), grokking is the gap between the step at which the *training* accuracy saturates and
the step at which the *test* accuracy does. Both come from
:func:`grokinterp.analysis.curves.grok_times`, the one definition of "it grokked" in grokinterp,
on the evaluated steps of ``metrics.jsonl``:

- ``fit_step``: first evaluated step with train accuracy ≥ ``threshold``;
- ``generalize_step``: first evaluated step with test accuracy ≥ ``threshold``;
- ``delay``: ``generalize_step - fit_step`` in steps, and ``ratio``:
  ``generalize_step / max(fit_step, 1)`` (both None when either step is missing).

The default ``threshold`` is :data:`grokinterp.analysis.curves.DEFAULT_THRESHOLD` (95 %, the
convention of the papers that define a grokking time); it is a parameter everywhere
(``grokinterp report --threshold``). Summaries of version 1 (before grokinterp used one
definition) named these ``step_memorization``, ``step_generalization`` and ``delay_ratio`` at 99 %.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, check_level, grok_times
from grokinterp.config import GrokinterpError
from grokinterp.store import Run, atomic_write_text

SUMMARY_VERSION = 2


def check_threshold(threshold: float) -> float:
    """Validate an accuracy threshold (a fraction in (0, 1])."""
    return check_level(threshold, "threshold")


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf become None (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_summary(run: Run, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The headline numbers of one run, as a JSON-ready dict (see the module docstring)."""
    threshold = check_threshold(threshold)
    rows = run.metrics
    last = rows[-1] if rows else {}
    times = grok_times(rows, threshold)
    cfg = run.config
    info = run.info
    return {
        "summary_version": SUMMARY_VERSION,
        "run": run.name,
        "path": str(run.path),
        "task": cfg.task.name,
        "task_params": dict(cfg.task.params),
        "model": cfg.model.name,
        "seed": cfg.train.seed,
        "status": info.get("status"),
        "n_params": info.get("n_params"),
        "wall_time_s": _clean(info.get("wall_time_s")),
        "n_checkpoints": len(run.steps),
        "last_step": last.get("step"),
        "threshold": threshold,
        "fit_step": times.fit_step,
        "generalize_step": times.generalize_step,
        "delay": times.delay,
        "ratio": round(times.ratio, 3) if times.ratio is not None else None,
        "final_train_acc": _clean(last.get("train_acc")),
        "final_test_acc": _clean(last.get("test_acc")),
        "final_train_loss": _clean(last.get("train_loss")),
        "final_test_loss": _clean(last.get("test_loss")),
        "final_weight_norm_l2": _clean(last.get("weight_norm_l2")),
    }


def report_summary(
    runs: Sequence[Run],
    threshold: float = DEFAULT_THRESHOLD,
    sections: dict[str, Any] | None = None,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """``summary.json`` content: one entry per run plus the report's section statuses."""
    if not runs:
        raise GrokinterpError("runs is empty; give at least one run directory")
    out: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "threshold": check_threshold(threshold),
        "report": str(report_path) if report_path is not None else None,
        "hardware": {"platform": platform.platform(), "machine": platform.machine()},
        "runs": [run_summary(r, threshold) for r in runs],
    }
    if sections is not None:
        out["sections"] = sections
    if len(runs) == 1:  # a single run's numbers also at top level, for `jq .generalize_step`
        out.update({k: v for k, v in out["runs"][0].items() if k != "summary_version"})
    return out


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Atomically write ``summary`` as indented JSON; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


__all__ = [
    "DEFAULT_THRESHOLD",
    "check_threshold",
    "report_summary",
    "run_summary",
    "write_summary",
]
