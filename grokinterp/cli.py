"""The ``grokinterp`` command line (Typer).

Usage errors (bad config values, unknown names, a missing or corrupt run) print one line and exit
with code 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grokinterp.config import (
    GrokinterpError,
    RunConfig,
    apply_overrides,
    load_config,
    load_preset,
    preset_names,
)

app = typer.Typer(
    help=(
        "grokinterp: train small models with dense checkpoints and watch how the generalising "
        "circuit of grokking forms (Fourier structure, tickets, rank, local complexity, norms)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full Python tracebacks on errors."),
) -> None:
    _state["debug"] = debug


def friendly(fn):
    """Turn GrokinterpError — and an operating-system error on a path the user gave (too long,
    not a directory, no permission, disk full) — into a one-line message and exit code 2
    (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (GrokinterpError, OSError) as e:
            if _state["debug"]:
                raise
            if isinstance(e, OSError) and not isinstance(e, GrokinterpError):
                where = f": {e.filename}" if e.filename else ""
                e = GrokinterpError(f"{e.strerror or type(e).__name__}{where}")
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def resolve_config(
    preset: str | None, config: Path | None, overrides: list[str] | None
) -> RunConfig:
    """The RunConfig from exactly one of --preset / --config, with --set overrides applied."""
    if (preset is None) == (config is None):
        raise GrokinterpError(
            f"give exactly one of --preset NAME or --config FILE (presets: {', '.join(preset_names())})"
        )
    cfg = load_preset(preset) if preset is not None else load_config(config)
    return apply_overrides(cfg, overrides or [])


# ----------------------------------------------------------------------------- ls


def _acc(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def runs_table(paths: list[Path], title: str = "runs") -> Table:
    from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
    from grokinterp.store import Run

    pct = f"{DEFAULT_THRESHOLD:.0%}"
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        caption=f"acc: final accuracy; fit / generalize: first step at {pct} train / test "
        "accuracy; MB: size on disk",
    )
    numeric = ("steps", "ckpts", "train acc", "test acc", "fit", "generalize", "MB")
    for col in ("run", "task", "model"):
        table.add_column(col, overflow="fold", ratio=1)
    for col in numeric:
        table.add_column(col, justify="right", max_width=10 if col == "generalize" else 6)
    for path in paths:
        try:
            run = Run.open(path)
            rows = run.metrics
            n_steps = len(run.steps)
            size = run.size_bytes()
        except (GrokinterpError, OSError) as e:
            table.add_row(str(path), f"[red]unreadable: {escape(str(e))}[/]", *[""] * 8)
            continue
        last = rows[-1] if rows else {}
        times = grok_times(rows, DEFAULT_THRESHOLD)
        fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
        table.add_row(
            _short_path(path),
            f"{run.config.task.name} {run.config.task.params.get('p', '')}".strip(),
            run.config.model.name,
            fmt(last.get("step")),
            str(n_steps),
            _acc(last.get("train_acc")),
            _acc(last.get("test_acc")),
            fmt(times.fit_step),
            fmt(times.generalize_step),
            f"{size / 1e6:.1f}",
        )
    return table


def _short_path(path: Path) -> str:
    """The path relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def find_runs(root: Path) -> list[Path]:
    if (root / "run.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("run.json"))


@app.command("ls")
@friendly
def ls_cmd(
    directory: Path = typer.Argument(Path("checkpoints"), help="Folder to search for runs."),
) -> None:
    """List runs: task, steps, final accuracies, fit / generalize steps (95% accuracy), size."""
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
) -> None:
    """Train a model with dense checkpoints into a run directory."""
    overrides = _with_threads(overrides, threads)
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
) -> None:
    """The main job: train (resuming if the run exists), analyze every checkpoint with every
    analysis that applies, write the HTML report, print a summary and the report's path."""
    main_job(preset, out, _with_threads(overrides, threads), quiet, light, device)


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
) -> None:
    """Compute analyses over every checkpoint of a run, batched over checkpoints (on the GPU when
    there is one) and cached per checkpoint in RUN/analysis/: a second call computes only
    checkpoints that are new, and an interrupted call keeps what it finished."""
    import time

    from grokinterp.store import Run
    from grokinterp.store.lock import is_being_written

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


# --- helper commands go below this line ---


@app.command("transfer")
@friendly
def transfer_cmd(
    weak: str = typer.Option(
        ..., "--weak", help="Weak model: a preset or config file to train, or a run directory."
    ),
    target: str = typer.Option(..., "--target", help="Target preset or config file."),
    weak_at: str = typer.Option(
        None,
        "--weak-at",
        help="Checkpoint of E_W: STEP, acc=X (first checkpoint with test acc ≥ X), best, final "
        "[default: acc=0.3 for token targets, final for mlp targets; acc=0.25 with --cpu].",
    ),
    merge_at: int = typer.Option(
        None, "--merge-at", help="Fold A·B into a full W_E after this step."
    ),
    random_a: bool = typer.Option(False, "--random-a", help="Ablation: A random (E_W's norm)."),
    compare: bool = typer.Option(
        False, "--compare", help="Train scratch, transfer and random-A targets; print the table."
    ),
    grokfast: bool = typer.Option(
        False, "--grokfast", help="With --compare: add a Grokfast-EMA scratch target."
    ),
    steps: int = typer.Option(None, "--steps", help="Step budget of every target run."),
    cpu: bool = typer.Option(
        False, "--cpu", help="CPU-sized GrokTransfer mod-add settings (p=59, small target)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a target value: --set train.lr=3e-3."
    ),
    weak_overrides: list[str] = typer.Option(
        None, "--weak-set", help="Override a value of the weak preset."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (weak/, targets, inputs/)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing target runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """GrokTransfer (Xu et al. 2025): initialise a target's embedding A·B with A = a weak model's E_W.

    Token targets (transformer, embed_mlp) take a token weak model's embedding; an mlp target
    (XOR-cluster data: --weak groktransfer-weak-xor --target groktransfer-xor) takes the first
    layer W_in of an mlp weak model as A for its factorized first layer.
    """
    from grokinterp.experiments import transfer as gt

    if grokfast and not compare:
        raise GrokinterpError("--grokfast adds the Grokfast-EMA target to --compare; pass both")
    if compare and random_a:
        raise GrokinterpError("--compare already trains the random-A ablation; drop --random-a")
    if cpu and gt.resolve_config(target, overrides or []).model.name == "mlp":
        raise GrokinterpError(
            "--cpu sets CPU-sized mod-add settings; the XOR presets are CPU-sized already "
            "(groktransfer-xor: dimension 2000); drop --cpu"
        )
    t_over = [*(gt.CPU_TARGET_OVERRIDES if cpu else []), *(overrides or [])]
    w_over = [*(gt.CPU_WEAK_OVERRIDES if cpu else []), *(weak_overrides or [])]
    if cpu and Path(weak, "run.json").is_file():
        w_over = list(weak_overrides or [])  # an existing weak run is used as it is
    out = out or Path("checkpoints") / f"groktransfer-{Path(target).stem}{'-cpu' if cpu else ''}"
    weak_at = weak_at or (gt.CPU_WEAK_AT if cpu else None)  # None: by the target's model
    at = int(weak_at) if weak_at and weak_at.strip().isdigit() else weak_at
    if not compare:
        run = gt.transfer(
            weak,
            target,
            weak_at=at,
            out_dir=out,
            merge_at=merge_at,
            random_a=random_a,
            target_overrides=t_over,
            weak_overrides=w_over,
            steps=steps,
            overwrite=overwrite,
            progress=not quiet,
        )
        from grokinterp.analysis.transfer import transfer_info

        info = transfer_info(run) or {}
        console.print(runs_table([run.path], title="GrokTransfer target"))
        console.print(
            f"E_W from {info['weak_run']} at step {info['weak_step']} "
            f"(test acc {info['weak_test_acc']:.3f}); analyse with "
            f"`grokinterp analyze {run.path} --only transfer`"
        )
        return
    res = gt.compare_transfer(
        weak,
        target,
        weak_at=at,
        out_dir=out,
        steps=steps,
        grokfast=grokfast,
        merge_at=merge_at,
        target_overrides=t_over,
        weak_overrides=w_over,
        overwrite=overwrite,
        progress=not quiet,
    )
    table = Table(
        title=f"GrokTransfer vs baselines — E_W: {res.weak_run} step {res.weak_step} "
        f"(test acc {res.weak_test_acc:.3f})",
        caption=f"fit / generalize step: first step with train / test accuracy ≥{res.threshold:.0%}"
        "; delay = generalize − fit (the paper's time gap); s: wall-clock seconds",
        box=box.SIMPLE_HEAD,
    )
    for col in (
        "target",
        "fit step",
        "generalize step",
        "delay",
        "test acc",
        "s to generalize",
        "s total",
    ):
        table.add_column(col, justify="left" if col == "target" else "right")
    fmt = lambda v, f="{}": "—" if v is None else f.format(v)  # noqa: E731
    for r in res.rows:
        table.add_row(
            r["kind"],
            fmt(r["fit_step"]),
            fmt(r["generalize_step"]),
            fmt(r["delay"]),
            f"{r['final_test_acc']:.3f}",
            fmt(r["wall_to_generalize_s"], "{:.1f}"),
            f"{r['wall_total_s']:.1f}",
        )
    console.print(table)
    console.print(
        "wall times: training steps only; transfer/random_a include the weak run up to E_W's step. "
        f"Wrote {res.out_dir / 'compare.json'}"
    )


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


@app.command("sweep")
@friendly
def sweep_cmd(
    preset: str = typer.Option(None, "--preset", "-p", help="Base preset of every run."),
    config: Path = typer.Option(None, "--config", "-c", help="Base .toml/.json RunConfig."),
    grid: list[str] = typer.Option(
        None, "--grid", "-g", help="A grid axis: --grid train.weight_decay=0.1,0.3,1 (repeatable)."
    ),
    seeds: str = typer.Option(
        None, "--seeds", help="One run per seed in every cell: 0-4 or 0,1,7 (sets train.seed)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Sweep folder (runs, sweep.json, logs)."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a base value: --set train.steps=1500."
    ),
    address: str = typer.Option(
        None, "--address", help="Join a Ray cluster (auto, HOST:6379, ray://HOST:10001)."
    ),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", help="Ray num_gpus per run."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray num_cpus per run."),
    max_concurrent: int = typer.Option(None, "--max-concurrent", help="At most N runs at once."),
    threshold: float = typer.Option(
        None, "--threshold", help="Phase accuracy threshold (analysis.phases.PHASE_THRESHOLD, 0.9)."
    ),
    ratio: float = typer.Option(
        None, "--ratio", help="Grokking if generalize step ≥ R·fit step (R=3)."
    ),
    report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/report.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train a grid of runs as Ray tasks and label each cell's phase of grokking.

    Rerun the same command (or `sweep --out DIR` alone) to continue a killed sweep: finished
    runs are skipped, half-trained ones resume. --address joins a Ray cluster.
    """
    from grokinterp.experiments.sweep import INSTALL_HINT, run_sweep
    from grokinterp.report.figures.sweep import sweep_table_rows

    try:
        import ray  # noqa: F401
    except ImportError:
        err_console.print(f"error: {INSTALL_HINT}", markup=False, style="bold red")
        raise typer.Exit(2) from None

    base = resolve_config(preset, config, overrides) if (preset or config) else None
    if base is None and overrides:
        raise GrokinterpError("--set needs --preset or --config")
    if (
        base is not None
        and gpus_per_run > 0
        and not any(o.startswith("train.device") for o in overrides or [])
    ):
        base.train.device = "cuda"  # Ray gives each task its GPU through CUDA_VISIBLE_DEVICES
    result = run_sweep(
        base,
        grid,
        out,
        seeds,
        preset=preset,
        address=address,
        cpus_per_run=cpus_per_run,
        gpus_per_run=gpus_per_run,
        max_concurrent=max_concurrent,
        threshold=threshold,
        ratio=ratio,
        progress=not quiet,
        report=report,
    )
    axes = [a["key"] for a in result.manifest["spec"]["grid"]]
    header, rows = sweep_table_rows(result.cells, axes)
    # Per-phase fractions only for multi-seed sweeps, the error column only if a run failed.
    multi = any(len(c["runs"]) > 1 for c in result.cells)
    drop = (
        {"runs", "comprehension", "grokking", "memorization", "confusion"} if not multi else set()
    ) | ({"error"} if not any(r[-1] for r in rows) else set())
    keep = [i for i, col in enumerate(header) if col not in drop]
    table = Table(title=f"sweep {result.path}")
    for i in keep:
        col = header[i]
        table.add_column(col.split(".")[-1], justify="left" if col == "error" else "right")
    for row in rows:
        table.add_row(*[row[i] for i in keep])
    console.print(table)
    console.print(
        f"ran {len(result.executed)} run(s) ({len(result.resumed)} resumed), skipped "
        f"{len(result.skipped)} finished, {len(result.failed)} failed; manifest "
        f"{result.path / 'sweep.json'}" + (f"; report {result.report}" if result.report else "")
    )


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


@app.command("tickets")
@friendly
def tickets_cmd(
    run_dir: Path = typer.Argument(..., help="Parent run directory."),
    at: str = typer.Option("final", "--at", help="Checkpoint step of the ticket, or 'final'."),
    sparsity: float = typer.Option(
        0.6, "--sparsity", help="Fraction of weights removed (Minegishi's k)."
    ),
    scope: str = typer.Option("global", "--scope", help="global (one threshold) or layerwise."),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train θ₀⊙m with the mask fixed, as a new run."
    ),
    compare: bool = typer.Option(
        False, "--compare", help="Train the ticket and every control; print the table."
    ),
    steps: int = typer.Option(
        None, "--steps", help="Step budget of the retrained runs (default: the parent's)."
    ),
    kinds: str = typer.Option(
        None, "--kinds", help="Comma list for --compare (default: all kinds)."
    ),
    rounds: int = typer.Option(100, "--rounds", help="SynFlow rounds."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-mask control."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output run (--retrain) or folder (--compare)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a value of the retrained runs."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Grokking tickets (Minegishi et al.): extract a magnitude mask, retrain it, compare controls."""
    from grokinterp.analysis.tickets import (
        extract_ticket,
        magnitude_mask,
        mask_jaccard,
        model_parameters,
        resolve_step,
        ticket_path,
    )
    from grokinterp.store import Run

    run = Run.open(run_dir)
    step = resolve_step(run, at)
    mask = extract_ticket(run, step, sparsity, scope)
    if not retrain and not compare:
        t0 = magnitude_mask(model_parameters(run, 0), sparsity, scope)
        table = Table(title=f"ticket of {run.path} at step {step}, sparsity {sparsity:g} ({scope})")
        for col in ("tensor", "shape", "kept", "kept fraction"):
            table.add_column(col, justify="left" if col == "tensor" else "right")
        for k in sorted(mask):
            m = mask[k]
            table.add_row(
                k, "×".join(map(str, m.shape)), str(int(m.sum())), f"{float(m.float().mean()):.3f}"
            )
        console.print(table)
        console.print(
            f"Jaccard with the step-0 ticket: {mask_jaccard(mask, t0):.3f}; saved {ticket_path(run, step, sparsity, scope)}"
        )
        return
    from grokinterp.experiments.tickets import KINDS, compare_tickets, retrain_ticket

    if retrain and not compare:
        child = retrain_ticket(
            run,
            step,
            sparsity=sparsity,
            out_dir=out,
            kind="ticket",
            scope=scope,
            steps=steps,
            seed=seed,
            rounds=rounds,
            overrides=overrides or [],
            overwrite=overwrite,
            progress=not quiet,
        )
        console.print(runs_table([child.path], title="retrained ticket"))
        return
    chosen = [k.strip() for k in kinds.split(",")] if kinds else list(KINDS)
    result = compare_tickets(
        run,
        step,
        sparsity=sparsity,
        out_dir=out,
        kinds=chosen,
        scope=scope,
        steps=steps,
        seed=seed,
        rounds=rounds,
        overrides=overrides or [],
        overwrite=overwrite,
        progress=not quiet,
    )
    table = Table(
        title=f"grokking ticket (step {step}, sparsity {sparsity:g}) vs controls",
        caption=f"fit / generalize step: first step with train / test accuracy ≥ "
        f"{result.rows[0]['threshold']:.0%}; ratio = generalize / fit; test acc, L1, L2: final",
        box=box.SIMPLE_HEAD,
    )
    for col in ("kind", "sparsity", "fit step", "generalize step", "ratio", "test acc", "L1", "L2"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    fmt = lambda v, f="{}": "—" if v is None else f.format(v)  # noqa: E731
    for r in result.rows:
        table.add_row(
            r["kind"],
            f"{r['sparsity']:.2f}",
            fmt(r["fit_step"]),
            fmt(r["generalize_step"]),
            fmt(r["ratio"], "{:.2f}"),
            f"{r['final_test_acc']:.3f}",
            fmt(r["final_l1"], "{:.1f}"),
            fmt(r["final_l2"], "{:.2f}"),
        )
    console.print(table)
    console.print(f"wrote {result.out_dir / 'compare.json'} and {result.out_dir / 'compare.html'}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
