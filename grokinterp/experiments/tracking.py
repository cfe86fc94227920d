"""Analysis curves in the experiment trackers: :func:`log_analysis` pushes the per-checkpoint
curves of a run's analyses (Fourier sparsity and restricted / excluded loss, Nanda et al. 2023;
rank; local complexity, Humayun et al. 2024; subnetwork norms, Merrill et al. 2023; ...) to the
TensorBoard / W&B run that holds its training metrics (:mod:`grokinterp.training.trackers`).

A curve is a tensor of :class:`~grokinterp.analysis.Results` with one value per checkpoint
(``"fourier/restricted_loss"``: ``[checkpoints]``), logged as ``analysis/fourier/restricted_loss``
at each checkpoint's training step, so it shares the x-axis of ``train_loss``. Per-layer curves
(``[checkpoints, L]`` with ``L ≤ MAX_SERIES``) become ``.../0``, ``.../1``, ...; larger per-checkpoint
tensors (frequency spectra, per-neuron values, masks) are not curves and are left out.

Training may not import the analyses (layers), so this glue lives here, above both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from grokinterp.config import GrokinterpError
from grokinterp.config.schema import TRACKERS
from grokinterp.store import Run
from grokinterp.training.trackers import has_tracker_run, open_run_trackers, tracker_tag

if TYPE_CHECKING:
    from grokinterp.analysis import Results

__all__ = ["MAX_SERIES", "PREFIX", "analysis_curves", "log_analysis", "parse_trackers"]

PREFIX = "analysis/"
MAX_SERIES = 8  # per-layer curves of at most this many entries are logged one curve each
# Keys that repeat the checkpoint step itself (it is the x-axis already).
_SKIP = {"step"}


def parse_trackers(text: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard,wandb"`` (or a list) → ``["tensorboard", "wandb"]``, each known and once."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [str(p).strip() for p in parts if str(p).strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise GrokinterpError(
            f"--log {', '.join(unknown)}: unknown tracker; allowed: {', '.join(TRACKERS)}"
        )
    return list(dict.fromkeys(names))


def analysis_curves(results: Mapping[str, torch.Tensor], steps: Sequence[int]) -> dict[str, list]:
    """The curves of ``results`` (see the module docstring): tracker tag → one float per step."""
    n = len(steps)
    curves: dict[str, list] = {}
    for key, value in results.items():
        if key == "steps" or key.rsplit("/", 1)[-1] in _SKIP or not isinstance(value, torch.Tensor):
            continue
        if (
            value.dtype in (torch.bool, torch.uint8)
            or value.is_complex()
            or value.shape[:1] != (n,)
        ):
            continue  # masks and packed bits are not curves
        if value.ndim == 1:
            curves[tracker_tag(PREFIX + key)] = value.double().tolist()
        elif value.ndim == 2 and value.shape[1] <= MAX_SERIES:
            for j in range(value.shape[1]):
                curves[tracker_tag(f"{PREFIX}{key}/{j}")] = value[:, j].double().tolist()
    return curves


def log_analysis(
    run: Run | str | Path,
    trackers: Sequence[str] | str | None = None,
    results: Results | None = None,
    *,
    analyses: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, int]:
    """Push ``run``'s analysis curves to its tracker run(s); returns ``{tag: points logged}``.

    ``trackers``: "tensorboard", "wandb" (a list, or comma-separated); default the run's
    ``train.log``. ``results``: what :func:`grokinterp.api.analyze` returned; default every
    analysis that applies (or ``analyses``), computed or read from the run's cache. The curves
    land in the tracker run of the training (TensorBoard: ``<run>/logs/tensorboard``, appended;
    W&B: the run id in ``<run>/logs/wandb.json``, resumed), at each checkpoint's step. A
    tracker the run was not trained with gets a new tracker run holding its metrics.jsonl rows
    too (as if it had been logged while training), then the curves.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    names = parse_trackers(trackers) if trackers is not None else list(run.config.train.log)
    if not names:
        raise GrokinterpError(
            f"no tracker to log to: {run.path} was trained without train.log; pass "
            f"--log {','.join(TRACKERS)} (or trackers=[...])"
        )
    if results is None:
        from grokinterp.analysis import applicable, over_training

        if analyses is None:
            analyses = [n for n, why in applicable(run).items() if why is None]
        results = over_training(run, list(analyses), device=device, progress=progress)
    steps = [int(s) for s in results.steps]
    curves = analysis_curves(results, steps)
    for name in names:
        # A tracker run made now (the run was trained without it) first gets the training
        # metrics from metrics.jsonl, so it holds the same curves as one logged while training.
        # Otherwise purge_step=None: no new TensorBoard session, the training events stay.
        new = not has_tracker_run(run.path, name)
        opened = open_run_trackers(
            [name], run.path, run.config, purge_step=0 if new else None, progress=progress
        )
        failed = True
        try:
            for row in run.metrics if new else ():
                opened.log(row)
            for i, step in enumerate(steps):
                opened.log_values({tag: values[i] for tag, values in curves.items()}, step)
            failed = False
        finally:
            opened.close(failed=failed)
    return {tag: len(values) for tag, values in curves.items()}
