"""What every paper reproduction shares: the entry, its sizes, the verdict, the run context, and
the runner behind ``grokinterp reproduce``.

A reproduction (:class:`Paper`) is one module per paper in this package. It states the paper's
claim in one line and the paper's own figure (from ``REFERENCES.md``), a ``cpu`` and a ``paper``
:class:`Setting`, a ``run(ctx) -> results`` that trains what the claim needs, computes the
paper's measures and returns plain JSON data, and a ``verdict(results) -> Verdict`` that checks
the effect *quantitatively* on those numbers alone (so it is tested on planted results). ``configs(ctx)`` lists the configs ``run`` starts from, so
that ``--dry-run`` validates a size without training. The
runner (:func:`reproduce`) runs the chosen papers in registry order under an optional time
budget and writes, per paper, ``<out>/<paper>/report.html`` (the run report of
:func:`grokinterp.report.html.build_report`, with a verdict card on top) and ``verdict.json``,
and for all of them ``<out>/VERDICTS.md``.

Training goes through the ordinary run store, so a second ``reproduce`` reuses every finished
run and every cached analysis: only the verdicts, tables and reports are rebuilt.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.config import GrokinterpError, RunConfig, apply_overrides, load_preset, validate
from grokinterp.store import Run, atomic_write_text, is_run_dir

SIZES = ("cpu", "paper")
STATUSES = ("reproduced", "partly", "not")
# What a row of the verdict table says when a paper produced no verdict in this invocation.
NOT_RUN_BUDGET = "not run (budget)"
SKIPPED_NO_GPU = "skipped (no GPU)"
FAILED = "failed"

__all__ = [
    "FAILED",
    "NOT_RUN_BUDGET",
    "SIZES",
    "SKIPPED_NO_GPU",
    "STATUSES",
    "Context",
    "Paper",
    "PaperOutcome",
    "ReproduceResult",
    "Setting",
    "Verdict",
    "fmt_step",
    "grok",
    "jsonable",
    "plan",
    "reproduce",
    "status_of",
    "verdicts_markdown",
]


# ---------------------------------------------------------------------------------------------
# The entry of one paper
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Did the paper's effect show? ``status`` ∈ ``STATUSES``; ``ours`` / ``paper`` the two
    figures side by side (one line each); ``why`` the reason, always given (what held and
    what did not)."""

    status: str
    ours: str
    paper: str
    why: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise GrokinterpError(
                f"verdict status {self.status!r} is not valid; allowed: {', '.join(STATUSES)}"
            )

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "ours": self.ours, "paper": self.paper, "why": self.why}


@dataclass(frozen=True)
class Setting:
    """One size of a reproduction.

    ``summary``: task, model, optimiser, init scale, precision, data size, steps, seeds (one
    line, with what differs from the paper). ``seeds``: default number of seeds. ``minutes``:
    estimated minutes on the intended device (H200 GPU minutes for ``paper``, 2-core CPU
    minutes for ``cpu``). ``needs_gpu``: skipped on a machine without one unless forced.
    ``params``: the paper module's own knobs (steps, grids, thresholds)."""

    summary: str
    seeds: int = 1
    minutes: float = 1.0
    needs_gpu: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Paper:
    """One reproduction: see the module docstring."""

    key: str
    title: str
    claim: str
    paper_figure: str
    sizes: Mapping[str, Setting]
    run: Callable[[Context], dict[str, Any]]
    verdict: Callable[[Mapping[str, Any]], Verdict]
    # The configs ``run`` trains first (the runs derived from them — tickets, transfer targets,
    # grid cells — are built from these): validated without training by ``--dry-run``.
    configs: Callable[[Context], dict[str, RunConfig]] | None = None

    def setting(self, size: str) -> Setting:
        if size not in self.sizes:
            raise GrokinterpError(f"--size {size!r} is not valid; allowed: {', '.join(SIZES)}")
        return self.sizes[size]


# ---------------------------------------------------------------------------------------------
# Small helpers the paper modules share
# ---------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: tensors and numpy values become numbers or lists, paths
    strings, NaN / inf None (JSON has no NaN)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def grok(
    metrics: Sequence[Mapping[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
    test_threshold: float | None = None,
) -> dict:
    """``fit_step`` (train accuracy ≥ ``threshold``), ``generalize_step`` (test accuracy ≥
    ``test_threshold``, default the same), ``delay``, ``ratio`` of a run's metric rows
    (:func:`grokinterp.analysis.curves.grok_times`), the final accuracies and the last step.
    A separate test level is for tasks whose test accuracy tops out below 95 % (digits)."""
    fit = grok_times(metrics, threshold).fit_step
    level = threshold if test_threshold is None else test_threshold
    gen = grok_times(metrics, level).generalize_step
    last = metrics[-1] if metrics else {}
    return {
        "fit_step": fit,
        "generalize_step": gen,
        "delay": None if fit is None or gen is None else gen - fit,
        "ratio": None if fit is None or gen is None else gen / max(fit, 1),
        "threshold": level,
        "final_step": last.get("step"),
        "final_train_acc": last.get("train_acc"),
        "final_test_acc": last.get("test_acc"),
    }


def fmt_step(step: Any, censored_at: Any = None) -> str:
    """``12 340``; ``> 20 000`` when ``step`` is None and the budget was ``censored_at``;
    ``never`` when None without a budget."""
    if step is None:
        return f"> {int(censored_at):,}".replace(",", " ") if censored_at else "never"
    return f"{int(step):,}".replace(",", " ")


def status_of(full: Sequence[bool], partial: Sequence[bool] = ()) -> str:
    """``reproduced`` when every check in ``full`` holds, ``partly`` when at least one of
    ``full`` or ``partial`` holds, else ``not``."""
    if full and all(full):
        return "reproduced"
    if any(full) or any(partial):
        return "partly"
    return "not"


def most(flags: Sequence[bool], share: float = 2 / 3) -> bool:
    """At least ``share`` of ``flags`` hold (and there is one)."""
    return bool(flags) and sum(bool(f) for f in flags) >= share * len(flags) - 1e-9


def config_hash(*parts: Any) -> str:
    """8 hex digits identifying JSON-able ``parts`` (configs, grids): folder names that change
    when what is trained there changes, so that a changed ``--set`` never meets an old run."""
    text = json.dumps(jsonable(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# The context a paper's run() gets
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    """Where and how one paper runs: its folder ``out`` (``<root>/<paper>``), the ``size``, the
    ``device`` ("cpu" or "cuda"), the ``seeds``, the user's ``overrides`` (applied last to every
    config it trains) and the :class:`Setting`. ``report_runs`` collects the runs its
    report shows; ``notes`` what the run did that a reader should know."""

    paper: str
    size: str
    out: Path
    device: str
    seeds: list[int]
    setting: Setting
    overrides: list[str] = field(default_factory=list)
    progress: bool = False
    report_runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Run folders (or folders of runs) the verdict reads: their training time is the paper's
    # ``train_seconds``. ``train`` / ``train_seeds`` add theirs; a module adds the folders of
    # runs trained by other experiment functions (tickets, sweeps, the LU sweep).
    used: list[Path] = field(default_factory=list)

    @property
    def params(self) -> Mapping[str, Any]:
        return self.setting.params

    @property
    def shared(self) -> Path:
        """``<root>/shared``: runs two papers train alike (content-addressed by config)."""
        return self.out.parent / "shared"

    def config(self, preset: str | RunConfig, overrides: Sequence[str] = ()) -> RunConfig:
        """``preset`` (a name or a RunConfig) with ``overrides``, this context's device, the fast
        engine (functional forward, fused optimizer, CUDA graph when full-batch) and, last, the
        user's ``--set`` overrides."""
        cfg = preset.copy() if isinstance(preset, RunConfig) else load_preset(preset)
        cfg = apply_overrides(
            cfg, [*overrides, f"train.device={self.device}", "train.engine=fast", *self.overrides]
        )
        validate(cfg)
        return cfg

    def _path(self, cfg: RunConfig, name: str, shared: bool) -> Path:
        if shared:
            return self.shared / f"{name}-{config_hash(_identity(cfg))}"
        return self.out / name

    def train(self, cfg: RunConfig, name: str, shared: bool = False) -> Run:
        """Train ``cfg`` into ``<out>/<name>`` (``shared``: into ``<root>/shared/<name>-<hash>``,
        where another paper training the same config finds it). A finished run with this config
        is reused, a killed one resumed, a different one replaced (the folder is ours)."""
        from grokinterp.training import train

        path = self._path(cfg, name, shared)
        self.used.append(path)
        resume, overwrite = _reuse(path, cfg)
        return train(cfg, path, resume=resume, overwrite=overwrite, progress=self.progress)

    def train_seeds(self, cfg: RunConfig, name: str) -> list[Run]:
        """``cfg`` once per seed of the context in ``<out>/<name>/seed<k>``, the seeds packed on
        one device (:func:`grokinterp.training.train_seeds`: stacked weights, one GEMM for all;
        minibatch configs fall back to one seed after another)."""
        from grokinterp.training import seed_dir, train_seeds
        from grokinterp.training.seeds import seed_config

        dirs = [seed_dir(self.out / name, s) for s in self.seeds]
        self.used.extend(dirs)
        checks = [_reuse(d, seed_config(cfg, s)) for d, s in zip(dirs, self.seeds, strict=True)]
        overwrite = any(o for _, o in checks)
        resume = not overwrite and any(r for r, _ in checks)
        return train_seeds(
            cfg, self.seeds, self.out / name, resume=resume, overwrite=overwrite,
            progress=self.progress,
        )  # fmt: skip

    def analyse(self, run: Run, analyses: Sequence[str] | Mapping[str, Mapping[str, Any]]):
        """:func:`grokinterp.analysis.over_training` on this context's device (batched over
        checkpoints, cached in the run)."""
        from grokinterp.analysis import over_training

        return over_training(run, analyses, device=self.device, progress=self.progress)

    def summary(self, run: Run, name: str, results: Mapping[str, Any]) -> dict[str, Any]:
        """The registered ``summarize`` of analysis ``name`` on ``results`` (an over_training
        result holding it)."""
        from grokinterp.analysis import ANALYSES

        of = {k[len(name) + 1 :]: v for k, v in results.items() if k.startswith(name + "/")}
        if "steps" in results:
            of["steps"] = results["steps"]
        return ANALYSES[name].summarize(run, of)


def _identity(cfg: RunConfig) -> dict[str, Any]:
    """What makes two runs the same run: the config without its name and notes."""
    d = cfg.to_dict()
    d.pop("name", None)
    d.pop("notes", None)
    return d


def _reuse(path: Path, cfg: RunConfig) -> tuple[bool, bool]:
    """``(resume, overwrite)`` for training ``cfg`` into ``path``: resume a run of the same
    config (a longer budget or another device included), replace anything else."""
    from grokinterp.training.loop import RESUMABLE_CHANGES

    if not path.exists():
        return False, False
    if not is_run_dir(path):
        return False, True
    try:
        old = Run.open(path).config.to_dict()
    except GrokinterpError:
        return False, True
    new = cfg.to_dict()
    for section in ("task", "model", "train"):
        for key in set(old[section]) | set(new[section]):
            if (section, key) in RESUMABLE_CHANGES:
                continue
            if old[section].get(key) != new[section].get(key):
                return False, True
    return True, False


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


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
    if registry is None:
        from grokinterp.experiments.reproductions import PAPERS as registry
    if size not in SIZES:
        raise GrokinterpError(f"--size {size!r} is not valid; allowed: {', '.join(SIZES)}")
    if device == "auto":
        dev = _resolve_device("auto")
    elif device in ("cpu", "cuda"):
        dev = device
    else:
        raise GrokinterpError(f"--device {device!r} is not valid; allowed: auto, cpu, cuda")
    root = Path(out) if out is not None else Path("checkpoints") / "reproductions" / size
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
    if registry is None:
        from grokinterp.experiments.reproductions import PAPERS as registry
    if size not in SIZES:
        raise GrokinterpError(f"--size {size!r} is not valid; allowed: {', '.join(SIZES)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise GrokinterpError(f"--seeds {seeds!r} must be an integer ≥ 1 (the number of seeds)")
    if budget_minutes is not None and not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise GrokinterpError(f"--budget-minutes {budget_minutes!r} must be a number > 0")
    chosen = select_papers(papers, registry)
    overrides = list(overrides)
    if overrides:  # a bad --set fails here, before anything trains
        apply_overrides(RunConfig(), [o for o in overrides if not o.startswith("task.")])
    dev = _resolve_device(device)
    root = Path(out) if out is not None else Path("checkpoints") / "reproductions" / size
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    budget = None if budget_minutes is None else 60.0 * budget_minutes
    outcomes: dict[str, PaperOutcome] = {}
    for key in chosen:
        paper = registry[key]
        setting = paper.setting(size)
        n = seeds or setting.seeds
        base = PaperOutcome(
            key, paper.title, paper.claim, paper.paper_figure, "", seeds=n, device=dev,
            command=_command(key, size, dev, n, overrides), size=size,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        if budget is not None and (elapsed >= budget or 60.0 * setting.minutes > budget - elapsed):
            base.status = NOT_RUN_BUDGET
            base.why = (
                f"estimated {setting.minutes:g} min, {max(budget - elapsed, 0) / 60:.1f} min of "
                f"the {budget_minutes:g}-minute budget left"
            )
            outcomes[key] = base
            if on_event:
                on_event("done", base)
            continue
        if setting.needs_gpu and dev != "cuda" and not force:
            base.status = SKIPPED_NO_GPU
            base.why = (
                f"the paper size needs a GPU (estimated {setting.minutes:g} GPU minutes) and "
                "none is here; run with --device cuda on a GPU machine, or --force"
            )
            outcomes[key] = base
            if on_event:
                on_event("done", base)
            continue
        if on_event:
            on_event("start", base)
        outcomes[key] = _run_paper(paper, base, setting, root, dev, n, overrides, progress)
        if on_event:
            on_event("done", outcomes[key])
    rows = _table_rows(registry, outcomes, root, size)
    md = root / "VERDICTS.md"
    atomic_write_text(md, verdicts_markdown(rows, size))
    return ReproduceResult(root, size, rows, md, time.perf_counter() - t0)


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


def _table_rows(
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
