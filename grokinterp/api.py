"""The Python API: one function for every ``grokinterp`` command, returning data.

Each mirrors its CLI command (same names, same defaults); everything beyond the first one or
two arguments is keyword-only. The CLI is a thin face over these functions, so what a notebook
gets is exactly what the terminal shows::

    import grokinterp as gi
    job = gi.run("demo")                       # grokinterp run
    res = gi.analyze(job.run, ["fourier"])     # grokinterp analyze RUN --only fourier
    gi.report(job.run, light=True)             # grokinterp report RUN --light
    gi.ls()                                    # grokinterp ls
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light modules at the top (no torch, no TransformerLens): `grokinterp ls` and `--help` go
# through this module. What trains, analyses or renders is imported by the function that needs
# it, and run / train / train_seeds / import_run on first access (``__getattr__`` below).
from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.config import GrokinterpError, RunConfig
from grokinterp.store import Run

if TYPE_CHECKING:
    from grokinterp.analysis import Results
    from grokinterp.experiments.pipeline import main_job as run
    from grokinterp.report.html import ReportResult
    from grokinterp.store.importers import import_run
    from grokinterp.training import train, train_seeds

__all__ = [
    "analyze",
    "import_run",
    "find_runs",
    "log_analysis",
    "ls",
    "report",
    "reproduce",
    "reproduction_plan",
    "run_overview",
    "run",
    "sweep",
    "tickets",
    "train",
    "train_seeds",
    "transfer",
]


# ``grokinterp run`` (:func:`grokinterp.experiments.pipeline.main_job`): train (resuming if the run
# exists), analyse every checkpoint with every analysis that applies, write the report.
# ``train`` / ``train_seeds`` are :mod:`grokinterp.training`'s, ``import_run`` the store's.
_LAZY = {
    "run": ("grokinterp.experiments.pipeline", "main_job"),
    "train": ("grokinterp.training", "train"),
    "train_seeds": ("grokinterp.training", "train_seeds"),
    "import_run": ("grokinterp.store.importers", "import_run"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.open(run)


def analyze(
    run: Run | str | Path,
    analyses: Sequence[str] | dict[str, dict] | None = None,
    *,
    steps: Sequence[int] | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> Results:
    """``grokinterp analyze``: ``analyses`` (default: every one that applies) over every
    checkpoint, batched and cached (see :func:`grokinterp.analysis.over_training`)."""
    from grokinterp.analysis import applicable, over_training

    run = _open(run)
    if analyses is None:
        analyses = [n for n, reason in applicable(run).items() if reason is None]
    return over_training(run, analyses, steps, device=device, force=force, progress=progress)


def log_analysis(
    run: Run | str | Path,
    trackers: Sequence[str] | str | None = None,
    results: Results | None = None,
    **kwargs: Any,
) -> dict[str, int]:
    """``grokinterp analyze RUN --log tensorboard,wandb``: push the per-checkpoint analysis curves
    (Gini, restricted / excluded loss, rank, complexity, norms, ...) to the run's TensorBoard /
    W&B run, beside its training metrics; ``trackers`` defaults to the run's ``train.log``
    (keyword arguments of :func:`grokinterp.experiments.tracking.log_analysis`)."""
    from grokinterp.experiments.tracking import log_analysis as push

    return push(_open(run), trackers, results, **kwargs)


def report(
    runs: Run | str | Path | Sequence[Run | str | Path],
    out: str | Path | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    light: bool = False,
    recompute: bool = True,
) -> ReportResult:
    """``grokinterp report``: the HTML report of one run (or a comparison) and summary.json."""
    from grokinterp.report.html import build_report

    return build_report(runs, out, light=light, threshold=threshold, recompute=recompute)


def run_overview(path: str | Path) -> dict[str, Any]:
    """One run's line of ``grokinterp ls``: path, task, model, status, last step, checkpoints,
    final accuracies, ``fit_step``/``generalize_step`` at the default threshold, size; an
    unreadable run gets ``error`` instead."""
    try:
        r = Run.open(path)
        metrics = r.metrics
        n_checkpoints, size = len(r.steps), r.size_bytes()
    except (GrokinterpError, OSError) as e:
        return {"path": str(path), "error": str(e)}
    last = metrics[-1] if metrics else {}
    times = grok_times(metrics)
    return {
        "path": str(path),
        "task": r.config.task.name,
        "p": r.config.task.params.get("p"),
        "model": r.config.model.name,
        "status": r.info.get("status"),
        "step": last.get("step"),
        "checkpoints": n_checkpoints,
        "train_acc": last.get("train_acc"),
        "test_acc": last.get("test_acc"),
        "fit_step": times.fit_step,
        "generalize_step": times.generalize_step,
        "threshold": times.threshold,
        "size_mb": size / 1e6,
    }


def find_runs(root: str | Path) -> list[Path]:
    """``root`` itself if it is a run, else every run folder below it, sorted."""
    root = Path(root)
    if not root.exists():
        raise GrokinterpError(f"{root} does not exist")
    if (root / "run.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("run.json"))


def ls(root: str | Path = "checkpoints") -> list[dict[str, Any]]:
    """``grokinterp ls``: :func:`run_overview` of every run under ``root``."""
    return [run_overview(p) for p in find_runs(root)]


def tickets(run: Run | str | Path, at: int | str = "final", **kwargs: Any):
    """``grokinterp tickets --compare``: train the grokking ticket of checkpoint ``at`` and its
    controls (keyword arguments of :func:`grokinterp.experiments.tickets.compare_tickets`)."""
    from grokinterp.experiments.tickets import compare_tickets

    return compare_tickets(_open(run), at, **kwargs)


def transfer(weak: str | Path | Run | RunConfig, target: str | Path | RunConfig, **kwargs: Any):
    """``grokinterp transfer``: one GrokTransfer target, or with ``compare=True`` the comparison
    with scratch and random-A (keyword arguments of :func:`grokinterp.experiments.transfer.transfer`
    / :func:`~grokinterp.experiments.transfer.compare_transfer`)."""
    from grokinterp.experiments import transfer as gt

    if kwargs.pop("compare", False):
        return gt.compare_transfer(weak, target, **kwargs)
    return gt.transfer(weak, target, **kwargs)


def sweep(base: RunConfig | None, grid: Sequence[str] | None, out_dir: str | Path, **kwargs: Any):
    """``grokinterp sweep``: train every cell of ``grid`` × seeds (on Ray), label their phases
    (keyword arguments of :func:`grokinterp.experiments.sweep.run_sweep`)."""
    from grokinterp.experiments.sweep import run_sweep

    return run_sweep(base, grid, out_dir, **kwargs)


def reproduce(papers: str | Sequence[str] = "all", **kwargs: Any):
    """``grokinterp reproduce``: run the seed papers' reproductions (``"all"``, a key or a comma
    list) at ``size="cpu" | "paper"`` and write each paper's report.html and verdict.json and
    VERDICTS.md (keyword arguments of :func:`grokinterp.experiments.reproductions.reproduce`)."""
    from grokinterp.experiments.reproductions import reproduce as run_reproductions

    return run_reproductions(papers, **kwargs)


def reproduction_plan(papers: str | Sequence[str] = "all", **kwargs: Any) -> list[dict[str, Any]]:
    """``grokinterp reproduce --dry-run``: what would be trained, every config validated
    (keyword arguments of :func:`grokinterp.experiments.reproductions.plan`)."""
    from grokinterp.experiments.reproductions import plan

    return plan(papers, **kwargs)
