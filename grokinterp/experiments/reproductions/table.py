"""The verdict table of ``grokinterp reproduce``: one :class:`PaperOutcome` per paper, rows of
earlier invocations filled in from their ``verdict.json``, and ``VERDICTS.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokinterp.experiments.reproductions.base import STATUSES, Paper

# What a row of the verdict table says when a paper produced no verdict in this invocation.
NOT_RUN_BUDGET = "not run (budget)"
SKIPPED_NO_GPU = "skipped (no GPU)"
FAILED = "failed"

__all__ = [
    "FAILED",
    "NOT_RUN_BUDGET",
    "SKIPPED_NO_GPU",
    "PaperOutcome",
    "table_rows",
    "verdicts_markdown",
]


@dataclass
class PaperOutcome:
    """One row of the verdict table: a verdict, or why there is none (``status`` is then
    ``NOT_RUN_BUDGET``, ``SKIPPED_NO_GPU`` or ``FAILED``)."""

    paper: str
    title: str
    claim: str
    paper_figure: str
    status: str
    ours: str = ""
    why: str = ""
    seeds: int = 0
    device: str = ""
    seconds: float | None = None
    # Training wall time of every run the verdict reads, from the runs' own records (run.json
    # wall_time_s): the device time spent on them, whichever invocation trained them.
    train_seconds: float | None = None
    report: str | None = None
    command: str = ""
    size: str = ""
    from_earlier: bool = False  # read from an earlier invocation's verdict.json

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _earlier(folder: Path, size: str) -> PaperOutcome | None:
    """The outcome an earlier invocation wrote to ``folder/verdict.json`` (same size), if any."""
    path = folder / "verdict.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("size") != size:
        return None
    fields = PaperOutcome.__dataclass_fields__
    return PaperOutcome(**{k: v for k, v in data.items() if k in fields}, from_earlier=True)


def table_rows(
    registry: Mapping[str, Paper], outcomes: Mapping[str, PaperOutcome], root: Path, size: str
) -> list[PaperOutcome]:
    """One row per paper in registry order: this invocation's outcome; else (budget, or not
    chosen this time) the verdict an earlier invocation wrote into the same folder."""
    rows = []
    for key in registry:
        now = outcomes.get(key)
        if now is not None and now.status in (*STATUSES, FAILED):
            rows.append(now)
            continue
        earlier = _earlier(root / key, size)
        if earlier is not None and earlier.status in STATUSES:
            rows.append(earlier)
        elif now is not None:
            rows.append(now)
    return rows


def _md(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def verdicts_markdown(rows: Sequence[PaperOutcome], size: str) -> str:
    """The verdict table as Markdown (``VERDICTS.md``; paste into RESULTS.md)."""
    head = (
        f"# Reproductions ({size} size)\n\n"
        "Written by `grokinterp reproduce`; one row per paper. *s*: wall-clock of the paper in "
        "the invocation that produced the row (training, analyses, report; runs and analyses "
        "found finished are reused, so a repeat is quick; rows of earlier invocations are "
        "marked †); *train s*: the training wall time of all the runs it reads, from their "
        "own records, whichever invocation trained them.\n\n"
        "| paper | claim | paper's figure | our figure | seeds | device | s | train s | verdict | why | command |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in rows:
        secs = "" if r.seconds is None else f"{r.seconds:.0f}"
        train = "" if r.train_seconds is None else f"{r.train_seconds:.0f}"
        mark = " †" if r.from_earlier else ""
        lines.append(
            f"| {_md(r.title)} | {_md(r.claim)} | {_md(r.paper_figure)} | {_md(r.ours) or '—'} "
            f"| {r.seeds or ''} | {_md(r.device)} | {secs}{mark} | {train} | **{_md(r.status)}** "
            f"| {_md(r.why)} | `{_md(r.command)}` |"
        )
    return head + "\n".join(lines) + "\n"
