"""The runner behind ``grokinterp reproduce``: :func:`plan` (``--dry-run``) and
:func:`reproduce`, which runs the chosen papers in registry order under an optional time budget
and writes, per paper, ``<out>/<paper>/report.html`` (the run report of
:func:`grokinterp.report.html.build_report`, with a verdict card on top) and ``verdict.json``,
and for all of them ``<out>/VERDICTS.md`` (:mod:`grokinterp.experiments.reproductions.table`).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokinterp.config import GrokinterpError, RunConfig, apply_overrides
from grokinterp.experiments.reproductions.base import (
    Context,
    Paper,
    Setting,
    Verdict,
    check_size,
    jsonable,
)
from grokinterp.experiments.reproductions.table import (
    FAILED,
    NOT_RUN_BUDGET,
    SKIPPED_NO_GPU,
    PaperOutcome,
    table_rows,
    verdicts_markdown,
)
from grokinterp.store import atomic_write_text

__all__ = ["ReproduceResult", "plan", "reproduce", "select_papers"]


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did: one outcome per paper in registry order, where the verdict
    table went."""

    out: Path
    size: str
    outcomes: list[PaperOutcome]
    markdown: Path
    seconds: float

    def outcome(self, paper: str) -> PaperOutcome:
        return next(o for o in self.outcomes if o.paper == paper)


def _resolve_device(device: str) -> str:
    import torch

    from grokinterp.analysis.batch import resolve_device

    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise GrokinterpError(f"--device {device!r} is not valid; allowed: auto, cpu, cuda")
    dev = resolve_device(device)
    return "cuda" if dev.type == "cuda" and torch.cuda.is_available() else "cpu"


def _registry(registry: Mapping[str, Paper] | None) -> Mapping[str, Paper]:
    """``registry``, default the package's ``PAPERS`` (imported late: the package imports us)."""
    if registry is not None:
        return registry
    from grokinterp.experiments.reproductions import PAPERS

    return PAPERS


def _root(out: str | Path | None, size: str) -> Path:
    return Path(out) if out is not None else Path("checkpoints") / "reproductions" / size


def select_papers(papers: str | Sequence[str], registry: Mapping[str, Paper]) -> list[str]:
    """``"all"``, one key or a comma list (keys in any order; run in registry order)."""
    names = [p.strip() for p in (papers.split(",") if isinstance(papers, str) else papers)]
    names = [n for n in names if n]
    if not names:
        raise GrokinterpError(f"name a paper or 'all'; papers: {', '.join(registry)}")
    if "all" in names:
        return list(registry)
    bad = [n for n in names if n not in registry]
    if bad:
        raise GrokinterpError(
            f"unknown paper {', '.join(bad)}; papers: {', '.join(registry)} (or all)"
        )
    return [k for k in registry if k in names]


def plan(
    papers: str | Sequence[str] = "all",
    *,
    size: str = "cpu",
    device: str = "auto",
    seeds: int | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    registry: Mapping[str, Paper] | None = None,
) -> list[dict[str, Any]]:
    """What :func:`reproduce` would train, without training (``--dry-run``): per paper its
    setting, estimated minutes and the configs it starts from, each built and validated (a bad
    ``--set`` or setting fails here, on any machine: ``device="cuda"`` is not checked against
    the hardware)."""
    registry = _registry(registry)
    check_size(size)
    if device == "auto":
        dev = _resolve_device("auto")
    elif device in ("cpu", "cuda"):
        dev = device
    else:
        raise GrokinterpError(f"--device {device!r} is not valid; allowed: auto, cpu, cuda")
    root = _root(out, size)
    rows = []
    for key in select_papers(papers, registry):
        paper = registry[key]
        setting = paper.setting(size)
        n = seeds or setting.seeds
        ctx = Context(key, size, root / key, dev, list(range(n)), setting, list(overrides))
        cfgs = paper.configs(ctx) if paper.configs else {}
        rows.append(
            {
                "paper": key,
                "title": paper.title,
                "setting": setting.summary,
                "minutes": setting.minutes,
                "needs_gpu": setting.needs_gpu,
                "seeds": n,
                "configs": {
                    name: {
                        "task": c.task.name,
                        "model": c.model.name,
                        "steps": c.train.steps,
                        "device": c.train.device,
                        "dtype": c.train.dtype,
                        "batch_size": c.train.batch_size,
                    }
                    for name, c in cfgs.items()
                },
                "command": _command(key, size, dev, n, overrides),
            }
        )
    return rows


def _command(paper: str, size: str, device: str, n_seeds: int, overrides: Sequence[str]) -> str:
    sets = "".join(f" --set {o}" for o in overrides)
    return f"grokinterp reproduce {paper} --size {size} --device {device} --seeds {n_seeds}{sets}"


def reproduce(
    papers: str | Sequence[str] = "all",
    *,
    size: str = "cpu",
    device: str = "auto",
    seeds: int | None = None,
    out: str | Path | None = None,
    budget_minutes: float | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    progress: bool = False,
    registry: Mapping[str, Paper] | None = None,
    on_event: Callable[[str, PaperOutcome], None] | None = None,
) -> ReproduceResult:
    """Run each chosen paper's reproduction at ``size`` and write its report and verdict.

    Args:
        papers: ``"all"``, a key of ``PAPERS`` or a comma list; run in registry order.
        size: ``"cpu"`` (minutes on a laptop) or ``"paper"`` (the paper's setting, for a GPU).
        device: ``"auto"`` (CUDA when there is one), ``"cpu"`` or ``"cuda"``.
        seeds: number of seeds (seeds 0..N-1); default each setting's own.
        out: the root folder (default ``checkpoints/reproductions/<size>``).
        budget_minutes: stop starting papers once this much time has passed, and do not start a
            paper whose estimated minutes exceed what is left; those are "not run (budget)".
        overrides: ``section.key=value`` applied last to every config trained (smoke tests).
        force: run a ``paper`` size that needs a GPU on a machine without one.
        progress: progress bars while training and analysing.
        on_event: called as ``on_event("start" | "done", outcome)`` (the CLI prints lines).
    """
    registry = _registry(registry)
    check_size(size)
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise GrokinterpError(f"--seeds {seeds!r} must be an integer ≥ 1 (the number of seeds)")
    if budget_minutes is not None and not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise GrokinterpError(f"--budget-minutes {budget_minutes!r} must be a number > 0")
    chosen = select_papers(papers, registry)
    overrides = list(overrides)
    if overrides:  # a bad --set fails here, before anything trains
        apply_overrides(RunConfig(), [o for o in overrides if not o.startswith("task.")])
    dev = _resolve_device(device)
    root = _root(out, size)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcomes: dict[str, PaperOutcome] = {}
    for key in chosen:
        paper = registry[key]
        setting = paper.setting(size)
        n = seeds or setting.seeds
        base = PaperOutcome(
            key, paper.title, paper.claim, paper.paper_figure, "", seeds=n, device=dev,
            command=_command(key, size, dev, n, overrides), size=size,
        )  # fmt: skip
        skip = _skip(setting, dev, force, budget_minutes, time.perf_counter() - t0)
        if skip is not None:
            base.status, base.why = skip
            outcomes[key] = base
        else:
            if on_event:
                on_event("start", base)
            outcomes[key] = _run_paper(paper, base, setting, root, dev, n, overrides, progress)
        if on_event:
            on_event("done", outcomes[key])
    rows = table_rows(registry, outcomes, root, size)
    md = root / "VERDICTS.md"
    atomic_write_text(md, verdicts_markdown(rows, size))
    return ReproduceResult(root, size, rows, md, time.perf_counter() - t0)


def _skip(
    setting: Setting, device: str, force: bool, budget_minutes: float | None, elapsed: float
) -> tuple[str, str] | None:
    """``(status, why)`` when a paper is not started: the budget is spent or too small for its
    estimated minutes, or its size needs a GPU that is not here (and not ``force``)."""
    if budget_minutes is not None:
        budget = 60.0 * budget_minutes
        if elapsed >= budget or 60.0 * setting.minutes > budget - elapsed:
            return NOT_RUN_BUDGET, (
                f"estimated {setting.minutes:g} min, {max(budget - elapsed, 0) / 60:.1f} min of "
                f"the {budget_minutes:g}-minute budget left"
            )
    if setting.needs_gpu and device != "cuda" and not force:
        return SKIPPED_NO_GPU, (
            f"the paper size needs a GPU (estimated {setting.minutes:g} GPU minutes) and "
            "none is here; run with --device cuda on a GPU machine, or --force"
        )
    return None


def _run_paper(
    paper: Paper,
    base: PaperOutcome,
    setting: Setting,
    root: Path,
    device: str,
    n_seeds: int,
    overrides: list[str],
    progress: bool,
) -> PaperOutcome:
    """Run one paper; a failure is an outcome (the other papers still run), never raised —
    except a KeyboardInterrupt."""
    folder = root / paper.key
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        paper.key, base.size, folder, device, list(range(n_seeds)), setting, overrides, progress
    )
    t = time.perf_counter()
    try:
        results = jsonable(paper.run(ctx))
        verdict = paper.verdict(results)
    except Exception as e:  # noqa: BLE001 — one failing paper must not stop the others
        base.status = FAILED
        base.why = f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]
        base.seconds = time.perf_counter() - t
        _write_verdict(folder, base, setting, {}, ctx.notes, None)
        return base
    base.seconds = time.perf_counter() - t
    base.train_seconds = _train_seconds(ctx.used)
    base.status, base.ours, base.why = verdict.status, verdict.ours, verdict.why
    report = _write_report(ctx, paper, base, verdict)
    base.report = str(report) if report else None
    _write_verdict(folder, base, setting, results, ctx.notes, verdict)
    if report:  # the card carries the final time (report building included)
        _inject_card(report, paper, base, setting, ctx.notes)
    return base


def _train_seconds(folders: Sequence[Path]) -> float:
    """The summed ``wall_time_s`` of every run folder under ``folders`` (each counted once)."""
    total, seen = 0.0, set()
    for folder in folders:
        for meta in Path(folder).rglob("run.json"):
            if meta.parent in seen:
                continue
            seen.add(meta.parent)
            try:
                total += float(json.loads(meta.read_text(encoding="utf-8")).get("wall_time_s") or 0)
            except (OSError, ValueError, TypeError):
                continue
    return total


def _write_verdict(
    folder: Path,
    outcome: PaperOutcome,
    setting: Setting,
    results: Mapping[str, Any],
    notes: list[str],
    verdict: Verdict | None,
) -> None:
    from grokinterp import __version__

    data = {
        **outcome.to_dict(),
        "paper_says": verdict.paper if verdict else "",
        "setting": setting.summary,
        "estimated_minutes": setting.minutes,
        "needs_gpu": setting.needs_gpu,
        "notes": notes,
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "grokinterp_version": __version__,
    }
    data.pop("from_earlier", None)
    atomic_write_text(folder / "verdict.json", json.dumps(jsonable(data), indent=2))


def _write_report(ctx: Context, paper: Paper, outcome: PaperOutcome, verdict: Verdict):
    """The run report of the paper's runs (a comparison when several) at
    ``<out>/<paper>/report.html``; None (with a note) when it cannot be built."""
    if not ctx.report_runs:
        return None
    from grokinterp.report.html import build_report

    path = ctx.out / "report.html"
    try:
        build_report(
            ctx.report_runs,
            path,
            light=True,  # plotly from its CDN: reports small enough to commit
            title=f"{paper.title} — reproduction ({outcome.size} size): {verdict.status}",
        )
    except Exception as e:  # noqa: BLE001 — the verdict stands without its report
        ctx.notes.append(f"report not written: {type(e).__name__}: {e}")
        return None
    return path


_STATUS_COLOUR = {"reproduced": "#1a7f37", "partly": "#9a6700", "not": "#cf222e"}


def _inject_card(
    path: Path, paper: Paper, outcome: PaperOutcome, setting: Setting, notes: list[str]
) -> None:
    """Put the verdict — the paper's figure next to ours — at the top of the report page."""
    esc = html.escape
    colour = _STATUS_COLOUR.get(outcome.status, "#57606a")
    rows = [
        ("claim", paper.claim),
        ("paper", paper.paper_figure),
        ("ours", outcome.ours),
        ("why", outcome.why),
        ("setting", setting.summary),
        (
            "run",
            f"{outcome.seeds} seed(s) on {outcome.device}, {outcome.seconds or 0:.0f} s this call, "
            f"{outcome.train_seconds or 0:.0f} s of training in all; "
            f"{outcome.command}",
        ),
        *(("note", n) for n in notes),
    ]
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{esc(k)}</th>"
        f"<td>{esc(str(v))}</td></tr>"
        for k, v in rows
    )
    card = (
        f"<section class='verdict' style='border:2px solid {colour};border-radius:6px;"
        f"padding:0.6em 1em;margin:1em'><h2 style='margin-top:0'>{esc(paper.title)}: "
        f"<span style='color:{colour}'>{esc(outcome.status)}</span></h2>"
        f"<table>{body}</table></section>"
    )
    text = path.read_text(encoding="utf-8")
    m = re.search(r"<body[^>]*>", text)
    text = text[: m.end()] + card + text[m.end() :] if m else card + text
    atomic_write_text(path, text)
