"""Headline numbers of a run (``summary.json``): when it memorised, when it generalised.

Following Power et al. 2022 ("Grokking: generalization beyond overfitting on small algorithmic
datasets") and Nanda et al. 2023 ("Progress measures for grokking via mechanistic
interpretability"), grokking is the gap between the step at which the *training* accuracy
saturates (memorisation) and the step at which the *test* accuracy does (generalisation).

Definitions used here (all on the evaluated steps of ``metrics.jsonl``):

- ``step_memorization``: first evaluated step with train accuracy ≥ ``threshold``;
- ``step_generalization``: first evaluated step with test accuracy ≥ ``threshold``;
- ``delay_ratio``: ``step_generalization / step_memorization`` (None when either is missing
  or memorisation happens at step 0).

The default ``threshold`` is 0.99 (99 %), as in the grokking literature's "near-perfect"
accuracy; it is a parameter everywhere (``grokinterp report --threshold``).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokinterp.config import GrokinterpError
from grokinterp.store import Run, atomic_write_text, first_step_reaching

DEFAULT_THRESHOLD = 0.99
SUMMARY_VERSION = 1


def check_threshold(threshold: float) -> float:
    """Validate an accuracy threshold (a fraction in (0, 1])."""
    if not isinstance(threshold, int | float) or not 0 < float(threshold) <= 1:
        raise GrokinterpError(f"threshold={threshold!r} is not valid; allowed: a number in (0, 1]")
    return float(threshold)


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
    t_mem = first_step_reaching(rows, "train_acc", threshold)
    t_gen = first_step_reaching(rows, "test_acc", threshold)
    ratio = t_gen / t_mem if t_mem and t_gen is not None else None
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
        "step_memorization": t_mem,
        "step_generalization": t_gen,
        "delay_ratio": _clean(round(ratio, 3)) if ratio is not None else None,
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
    if len(runs) == 1:  # a single run's numbers also at top level, for `jq .step_generalization`
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
