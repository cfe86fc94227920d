"""The main job (``grokinterp run``): train → analyse every checkpoint → report, as one function.

The CLI prints what :func:`main_job` returns; notebooks and scripts call it directly
(``grokinterp.run("demo")``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grokinterp.analysis import applicable, over_training
from grokinterp.config import RunConfig, apply_overrides, load_preset
from grokinterp.experiments.tracking import log_analysis, parse_trackers
from grokinterp.report.html import ReportResult, build_report
from grokinterp.store import Run, is_run_dir
from grokinterp.training import train

__all__ = ["AnalysisStatus", "MainJob", "main_job"]


@dataclass
class AnalysisStatus:
    """What the main job did with one analysis: ``status`` is "computed", "cached",
    "does not apply" or "failed"; ``note`` says why or how many checkpoints."""

    name: str
    status: str
    seconds: float | None = None
    computed: int = 0
    note: str = ""


@dataclass
class MainJob:
    """The result of :func:`main_job`."""

    run: Run
    resumed: bool
    report: ReportResult
    analyses: list[AnalysisStatus] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # train, analyses, report, total


def main_job(
    preset: str | RunConfig = "demo",
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    progress: bool = True,
    light: bool = False,
    log: Sequence[str] | None = None,
) -> MainJob:
    """Train ``preset`` (resuming if ``out`` holds the run), analyse **every** checkpoint with
    every analysis that applies — with the same default settings as ``grokinterp analyze``, so a
    later ``analyze`` finds everything cached and the report never changes under the user — and
    write the HTML report. One failing analysis is recorded, not raised.

    ``log`` (``grokinterp run --log tensorboard,wandb``) sets ``train.log``: the training metrics
    and then the analysis curves go to those experiment trackers (:mod:`.tracking`)."""
    t0 = time.perf_counter()
    cfg = preset if isinstance(preset, RunConfig) else load_preset(preset)
    cfg = apply_overrides(cfg, list(overrides))
    if log is not None:
        cfg.train.log = parse_trackers(log)
    name = preset if isinstance(preset, str) else cfg.name
    out = Path(out) if out is not None else Path("checkpoints") / name
    resumed = is_run_dir(out)
    run = train(cfg, out, resume=resumed, progress=progress)
    t_train = time.perf_counter() - t0

    statuses = []
    t = time.perf_counter()
    for analysis, reason in applicable(run).items():
        if reason:
            statuses.append(AnalysisStatus(analysis, "does not apply", note=reason))
            continue
        try:
            res = over_training(run, [analysis], progress=progress, device=device)
        except Exception as e:  # one failing analysis must not stop the main job
            statuses.append(AnalysisStatus(analysis, "failed", note=f"{type(e).__name__}: {e}"))
            continue
        n = res.computed[analysis]
        statuses.append(
            AnalysisStatus(
                analysis,
                "computed" if n else "cached",
                res.seconds[analysis],
                n,
                f"{n} of {len(res.steps)} checkpoints computed"
                if n
                else f"{len(res.steps)} cached",
            )
        )
    done = [a.name for a in statuses if a.status in ("computed", "cached")]
    if cfg.train.log and done:
        log_analysis(run, cfg.train.log, analyses=done, device=device, progress=progress)
    t_analyses = time.perf_counter() - t
    t = time.perf_counter()
    report = build_report(run, light=light)
    t_report = time.perf_counter() - t
    seconds = {
        "train": t_train,
        "analyses": t_analyses,
        "report": t_report,
        "total": time.perf_counter() - t0,
    }
    return MainJob(run, resumed, report, statuses, seconds)
