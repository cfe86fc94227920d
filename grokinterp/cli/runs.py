"""Commands on runs: ``ls``, ``train``, ``run`` (the main job), ``analyze``, ``report``, ``import``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from grokinterp.cli.app import app, console, friendly, resolve_config
from grokinterp.config import (
    GrokinterpError,
    RunConfig,
    preset_names,
)

# ----------------------------------------------------------------------------- ls


def _acc(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def runs_table(paths: list[Path], title: str = "runs") -> Table:
    """:func:`grokinterp.api.run_overview` of each run, as a table that fits 80 columns."""
    from grokinterp.analysis.curves import DEFAULT_THRESHOLD
    from grokinterp.api import run_overview

    pct = f"{DEFAULT_THRESHOLD:.0%}"
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        caption=f"train / test: final accuracy; fit / gen.: first step at {pct} train / test "
        "accuracy; MB: size on disk",
    )
    # Names and numbers never wrap; only the run's path folds when the terminal is narrow, so
    # an 80-column `grokinterp ls` shows whole task and model names.
    table.add_column("run", overflow="fold", min_width=6)
    for col in ("task", "model"):
        table.add_column(col, no_wrap=True)
    for col in ("steps", "ckpts", "train", "test", "fit", "gen.", "MB"):
        table.add_column(col, justify="right", no_wrap=True)
    fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
    for path in paths:
        r = run_overview(path)
        if "error" in r:
            table.add_row(str(path), f"[red]unreadable: {escape(r['error'])}[/]", *[""] * 8)
            continue
        table.add_row(
            _short_path(path),
            f"{r['task']} {fmt(r['p']) if r['p'] is not None else ''}".strip(),
            r["model"],
            fmt(r["step"]),
            str(r["checkpoints"]),
            _acc(r["train_acc"]),
            _acc(r["test_acc"]),
            fmt(r["fit_step"]),
            fmt(r["generalize_step"]),
            f"{r['size_mb']:.1f}",
        )
    return table


def _short_path(path: Path) -> str:
    """The path relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command("ls")
@friendly
def ls_cmd(
    directory: Path = typer.Argument(Path("checkpoints"), help="Folder to search for runs."),
) -> None:
    """List runs: task, steps, final accuracies, fit / generalize steps (95% accuracy), size."""
    from grokinterp.api import find_runs

    try:
        if not directory.exists():
            raise GrokinterpError(f"{directory} does not exist")
        if not directory.is_dir():
            raise GrokinterpError(f"{directory} is a file, not a folder of runs")
        runs = find_runs(directory)
    except OSError as e:
        raise GrokinterpError(f"cannot search {directory}: {e.strerror or e}") from None
    if not runs:
        console.print(f"no runs under {directory}")
        return
    console.print(runs_table(runs))


# ----------------------------------------------------------------------------- train

THREADS_HELP = (
    "Torch threads while training (train.threads; default 1, 0 = one per core). The results "
    "are the same on every thread count."
)


def _with_threads(overrides: list[str] | None, threads: int | None) -> list[str]:
    """``--threads N`` as the override ``train.threads=N`` (after any --set)."""
    return [*(overrides or []), *([f"train.threads={threads}"] if threads is not None else [])]


LOG_HELP = (
    "Also log the metrics to experiment trackers: tensorboard, wandb, or tensorboard,wandb "
    "(train.log; logs in RUN/logs/; needs pip install 'grokinterp\\[trackers]')."
)


def _with_log(overrides: list[str], log: str | None) -> list[str]:
    """``--log tensorboard,wandb`` as the override ``train.log=["tensorboard", "wandb"]``
    (validated with the config: an unknown name is a one-line error)."""
    if log is None:
        return overrides
    import json

    names = [n.strip() for n in log.split(",") if n.strip()]
    return [*overrides, f"train.log={json.dumps(names)}"]


@app.command()
@friendly
def train(
    preset: str = typer.Option(
        None, "--preset", "-p", help=f"A shipped preset: {', '.join(preset_names())}."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="A .toml or .json RunConfig file."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a value: --set train.steps=200 --set task.p=59."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (default checkpoints/<preset or name>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever run is in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    seeds: str = typer.Option(
        None,
        "--seeds",
        help="Train many train.seed values at once (0-63 or 0,2,5-7): one run per seed in "
        "<out>/seed<k>, stacked weights on one device.",
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="With --resume of a run from an older grokinterp (pickled state/latest.pt): "
        "read it with the full unpickler if safe loading refuses it. That can run code "
        "stored in the file: only for files you trust.",
    ),
    threads: int = typer.Option(None, "--threads", min=0, help=THREADS_HELP),
    log: str = typer.Option(None, "--log", help=LOG_HELP),
) -> None:
    """Train a model with dense checkpoints into a run directory."""
    overrides = _with_log(_with_threads(overrides, threads), log)
    if resume and overwrite:
        raise GrokinterpError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            "--out, --overwrite deletes it; pass one"
        )
    cfg = resolve_config(preset, config, overrides)
    out = out or Path("checkpoints") / cfg.name
    try:
        _train_into(cfg, out, resume, overwrite, quiet, seeds, trust_pickle)
    except OSError as e:  # disk full, permissions, a path the OS refuses: one line, not a trace
        where = e.filename or out
        raise GrokinterpError(f"{where}: {e.strerror or e} (training into {out})") from e


def _train_into(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    seeds: str | None,
    trust_pickle: bool,
) -> None:
    if seeds is None:
        from grokinterp.store.lock import RunLock

        with RunLock(out):  # a second writer fails here, before the slow imports of training
            from grokinterp.training import train as train_run

            run = train_run(
                cfg,
                out,
                resume=resume,
                overwrite=overwrite,
                progress=not quiet,
                trust_pickle=trust_pickle,
            )
        console.print(runs_table([run.path], title="trained"))
    else:
        from grokinterp.training import parse_seeds, train_seeds

        runs = train_seeds(
            cfg,
            parse_seeds(seeds),
            out,
            resume=resume,
            overwrite=overwrite,
            progress=not quiet,
            trust_pickle=trust_pickle,
        )
        console.print(runs_table([r.path for r in runs], title=f"trained {len(runs)} seeds"))


# ----------------------------------------------------------------------------- run (main job)


@app.command("run")
@friendly
def run_cmd(
    preset: str = typer.Option("demo", "--preset", "-p", help="Preset to train."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (default checkpoints/<preset>)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a value: --set train.steps=200."
    ),
    light: bool = typer.Option(False, "--light", help="Link plotly.js instead of embedding it."),
    device: str = typer.Option(
        "auto", "--device", help="Where to analyse: auto (the GPU when there is one), cpu, cuda."
    ),
    threads: int = typer.Option(None, "--threads", min=0, help=THREADS_HELP),
    log: str = typer.Option(
        None, "--log", help=LOG_HELP[:-2] + "; the analysis curves follow the metrics there)."
    ),
) -> None:
    """The main job: train, analyse every checkpoint, write the report.

    Resumes the run if it exists; every analysis that applies runs on every checkpoint with the
    same settings as `grokinterp analyze`, so a later analyze is instant; prints a summary and the
    report's path."""
    main_job(preset, out, _with_log(_with_threads(overrides, threads), log), quiet, light, device)


# ----------------------------------------------------------------------------- analyze


@app.command()
@friendly
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    only: str = typer.Option(
        None, "--only", help="Comma-separated analyses (default: every one that applies)."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even what is cached."),
    device: str = typer.Option(
        "auto", "--device", help="auto (the GPU when there is one), cpu or cuda."
    ),
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Keep analysing new checkpoints while the run is still training (Ctrl-C stops).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    log: str = typer.Option(
        None,
        "--log",
        help="Push the per-checkpoint curves to experiment trackers (tensorboard, wandb, or "
        "tensorboard,wandb): the run's tracker runs in RUN/logs/, beside its training metrics.",
    ),
) -> None:
    """Compute analyses over every checkpoint of a run (batched, cached).

    Checkpoints are evaluated in batches, on the GPU when there is one, and cached per checkpoint
    in RUN/analysis/: a second call computes only checkpoints that are new, and an interrupted
    call keeps what it finished."""
    import time

    from grokinterp.store import Run
    from grokinterp.store.lock import is_being_written

    trackers = None
    if log is not None:
        from grokinterp.experiments.tracking import parse_trackers

        trackers = parse_trackers(log)  # a bad name fails before any computing
    run = Run.open(run_dir)
    while True:
        results = _analyze_once(run, only, force, device, quiet)
        # a run that nobody writes any more (finished, or killed mid-training) has nothing to wait for
        if not follow or not is_being_written(run_dir):
            break
        seen = len(run.steps)
        while len(run.steps) == seen and is_being_written(run_dir):
            time.sleep(2.0)
        force = False
    if trackers:
        from grokinterp.experiments.tracking import log_analysis

        curves = log_analysis(run, trackers, results, progress=not quiet)
        console.print(
            f"logged {len(curves)} analysis curves to {', '.join(trackers)} ({run.path / 'logs'})",
            highlight=False,
        )
    for name in results.params:
        _print_summary(run, name, results.of(name))


def _analyze_once(run, only: str | None, force: bool, device: str, quiet: bool):
    import grokinterp.analysis as analysis

    reasons = analysis.applicable(run)
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
    else:
        names = [n for n, r in reasons.items() if r is None]
        for name, reason in reasons.items():
            if reason is not None:
                console.print(f"[dim]skip {name}: {reason}[/]")
    results = analysis.over_training(run, names, progress=not quiet, force=force, device=device)
    table = Table(title=f"analyses of {run.name} ({len(results.steps)} checkpoints)")
    for col in ("analysis", "computed", "from cache", "time"):
        table.add_column(col, justify="left" if col == "analysis" else "right")
    for name in names:
        n = results.computed[name]
        table.add_row(name, str(n), str(len(results.steps) - n), f"{results.seconds[name]:.2f} s")
    console.print(table)
    if not any(results.computed.values()):
        console.print("[green]nothing recomputed[/]: every checkpoint was cached")
    return results


def _fmt_value(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt_value(a) for a in v) or "—"
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows.extend(_flatten(v, f"{prefix}{k} / "))
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _print_summary(run, name: str, results: dict) -> None:
    """An analysis's registered ``summarize`` dict, as a two-column table."""
    from grokinterp.analysis.registry import ANALYSES

    summarize = ANALYSES[name].summarize
    if summarize is None:
        return
    labels = ANALYSES[name].labels or {}
    table = Table(title=f"{name}: {run.name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in _flatten(summarize(run, results)):
        table.add_row(labels.get(key, key.replace("_", " ")), _fmt_value(value))
    console.print(table)


# ----------------------------------------------------------------------------- report + main job


def _fmt_seconds(s: float | None) -> str:
    return "—" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def report_table(result) -> Table:
    """Headline numbers of a report (one row per run) as a rich table."""
    from grokinterp.report.sections import fmt_pct, fmt_step

    table = Table(title=f"summary (threshold {fmt_pct(result.summary['threshold'])})")
    for col in ("run", "fit step", "generalize step", "delay", "ratio", "train acc", "test acc"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for s in result.summary["runs"]:
        ratio = s.get("ratio")
        table.add_row(
            s["run"],
            fmt_step(s["fit_step"]),
            fmt_step(s["generalize_step"]),
            fmt_step(s.get("delay")),
            f"{ratio:.1f}×" if ratio else "—",
            fmt_pct(s["final_train_acc"], 1),
            fmt_pct(s["final_test_acc"], 1),
        )
    return table


def _print_report_paths(result) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in result.status_counts().items())
    console.print(
        f"report: [bold]{result.html_path}[/] ({result.size_bytes / 1e6:.1f} MB, "
        f"{result.n_figures} figures; sections: {counts})\nsummary: {result.summary_path}",
        highlight=False,
    )


def main_job(
    preset: str,
    out: Path | None,
    overrides: list[str],
    quiet: bool,
    light: bool,
    device: str = "auto",
) -> None:
    """Print what :func:`grokinterp.experiments.pipeline.main_job` did (`grokinterp run`)."""
    from grokinterp.experiments.pipeline import main_job as run_main_job

    job = run_main_job(
        preset, out=out, overrides=overrides, device=device, progress=not quiet, light=light
    )
    title = f"{preset}: {'resumed' if job.resumed else 'trained'}"
    console.print(runs_table([job.run.path], title=title))
    table = Table(title="analyses (every checkpoint)")
    for col in ("analysis", "status", "time", "note"):
        table.add_column(col, justify="right" if col == "time" else "left")
    style = {"computed": "green", "cached": "green", "failed": "red", "does not apply": "dim"}
    for a in job.analyses:
        status = f"[{style[a.status]}]{a.status}[/]"
        table.add_row(a.name, status, _fmt_seconds(a.seconds), escape(a.note[:120]))
    console.print(table)
    console.print(report_table(job.report))
    _print_report_paths(job.report)
    sec = job.seconds
    console.print(
        f"wall time: {_fmt_seconds(sec['total'])} (train {_fmt_seconds(sec['train'])}, "
        f"analyses {_fmt_seconds(sec['analyses'])}, report {_fmt_seconds(sec['report'])})",
        highlight=False,
    )


@app.command("report")
@friendly
def report_cmd(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories (two or more: a comparison on shared axes), or a sweep directory.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="HTML file (default RUN/report.html; for several runs compare-<names>.html beside the "
        "first). summary.json (or <stem>.summary.json) is written beside it.",
    ),
    light: bool = typer.Option(
        False,
        "--light",
        help="Link plotly.js from its CDN instead of embedding it (~5 MB smaller).",
    ),
    pdf: bool = typer.Option(
        False, "--pdf", help="Also print the report to FILE.pdf with the system Chromium."
    ),
    png_dir: Path = typer.Option(
        None,
        "--png-dir",
        help="Also write every figure as PNG into DIR (needs kaleido, the 'export' extra).",
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        help="Accuracy that defines the fit and generalise steps "
        "(default grokinterp.analysis.curves.DEFAULT_THRESHOLD, 0.95).",
    ),
    no_recompute: bool = typer.Option(
        False, "--no-recompute", help="Report a corrupt analysis cache instead of recomputing it."
    ),
) -> None:
    """Write a self-contained HTML report (plotly.js embedded, works offline) and summary.json."""
    if len(runs) == 1 and (runs[0] / "sweep.json").is_file():
        from grokinterp.report.sweep import render_sweep_report

        html_out = out or runs[0] / "report.html"
        render_sweep_report(runs[0], html_out)
        console.print(f"sweep report: [bold]{html_out}[/]", highlight=False)
        return
    from grokinterp.analysis.curves import DEFAULT_THRESHOLD
    from grokinterp.report.html import build_report, export_pdf, export_pngs

    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    result = build_report(runs, out, light=light, threshold=threshold, recompute=not no_recompute)
    console.print(report_table(result))
    for sec in result.sections:
        if sec.status not in ("ok",):
            for note in sec.notes:
                console.print(f"[dim]{sec.title}: {note}[/]", highlight=False)
    _print_report_paths(result)
    if pdf:
        path = export_pdf(result.html_path, result.html_path.with_suffix(".pdf"))
        console.print(f"pdf: {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)
    if png_dir is not None:
        paths = export_pngs(result.sections, png_dir)
        console.print(f"png: {len(paths)} figures in {png_dir}", highlight=False)


@app.command("import")
@friendly
def import_cmd(
    kind: str = typer.Argument(
        ...,
        help="progress-measures (Nanda et al. 2023 code) or tl-demo (TransformerLens grokking demo).",
    ),
    file: Path = typer.Argument(..., help="The torch file to import."),
    out: Path = typer.Option(..., "--out", "-o", help="New run directory."),
    p: int = typer.Option(
        None, "--p", help="progress-measures: modulus (default: the file's config or vocabulary)."
    ),
    fn: str = typer.Option(
        None,
        "--fn",
        help="Operation: add, subtract, x2xyy2 (default: the file's config, else add).",
    ),
    frac_train: float = typer.Option(
        None, "--frac-train", help="progress-measures: train fraction (default: config, else 0.3)."
    ),
    seed: int = typer.Option(
        None, "--seed", help="progress-measures: data seed of the split (default: config, else 0)."
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Allow full unpickling (can run code from the file) when safe loading refuses it.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
) -> None:
    """Import a grokked model trained elsewhere as an ordinary run directory."""
    from grokinterp.store.importers import import_run

    params = {"p": p, "fn": fn}
    if kind == "progress-measures":
        params.update(frac_train=frac_train, seed=seed)
    elif frac_train is not None or seed is not None:
        raise GrokinterpError(
            "--frac-train/--seed apply to progress-measures only (tl-demo files store their split)"
        )
    run = import_run(kind, file, out, trust_pickle=trust_pickle, overwrite=overwrite, **params)
    console.print(runs_table([run.path], title=f"imported ({kind})"))
