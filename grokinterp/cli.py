"""The ``grokinterp`` command line (Typer).

Usage errors (bad config values, unknown names, a missing or corrupt run) print one line and exit
with code 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich.console import Console
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
    """Turn GrokinterpError into a one-line message and exit code 2 (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GrokinterpError as e:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {e}", highlight=False)
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
    cfg = load_preset(preset) if preset else load_config(config)
    return apply_overrides(cfg, overrides or [])


# ----------------------------------------------------------------------------- ls


def _first(rows: list[dict], key: str, thr: float) -> int | None:
    return next((m["step"] for m in rows if m.get(key, 0) >= thr), None)


def runs_table(paths: list[Path], title: str = "runs") -> Table:
    from grokinterp.store import Run

    table = Table(title=title)
    for col in (
        "run",
        "task",
        "model",
        "steps",
        "ckpts",
        "train acc",
        "test acc",
        "train≥99%",
        "test≥99%",
        "size",
    ):
        table.add_column(col, justify="right" if col not in ("run", "task", "model") else "left")
    for path in paths:
        try:
            run = Run.open(path)
        except GrokinterpError as e:
            table.add_row(str(path), f"[red]unreadable: {e}[/]", *[""] * 8)
            continue
        rows = run.metrics
        last = rows[-1] if rows else {}
        fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
        table.add_row(
            str(path),
            f"{run.config.task.name} {run.config.task.params.get('p', '')}".strip(),
            run.config.model.name,
            fmt(last.get("step")),
            str(len(run.steps)),
            f"{last.get('train_acc', 0):.3f}",
            f"{last.get('test_acc', 0):.3f}",
            fmt(_first(rows, "train_acc", 0.99)),
            fmt(_first(rows, "test_acc", 0.99)),
            f"{run.size_bytes() / 1e6:.1f} MB",
        )
    return table


def find_runs(root: Path) -> list[Path]:
    if (root / "run.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("run.json"))


@app.command("ls")
@friendly
def ls_cmd(
    directory: Path = typer.Argument(Path("checkpoints"), help="Folder to search for runs."),
) -> None:
    """List runs: task, steps, final accuracies, first steps at 99% train/test accuracy, size."""
    if not directory.exists():
        raise GrokinterpError(f"{directory} does not exist")
    runs = find_runs(directory)
    if not runs:
        console.print(f"no runs under {directory}")
        return
    console.print(runs_table(runs))


# ----------------------------------------------------------------------------- train


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
) -> None:
    """Train a model with dense checkpoints into a run directory."""
    from grokinterp.training import train as train_run

    cfg = resolve_config(preset, config, overrides)
    out = out or Path("checkpoints") / cfg.name
    run = train_run(cfg, out, resume=resume, overwrite=overwrite, progress=not quiet)
    console.print(runs_table([run.path], title="trained"))


# ----------------------------------------------------------------------------- run (main job)


@app.command("run")
@friendly
def run_cmd(
    preset: str = typer.Option("demo", "--preset", "-p", help="Preset to train."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (default checkpoints/<preset>)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """The main job: train the demo (resuming if it exists), analyze, and summarise."""
    from grokinterp.store import is_run_dir
    from grokinterp.training import train as train_run

    cfg = load_preset(preset)
    out = out or Path("checkpoints") / preset
    run = train_run(cfg, out, resume=is_run_dir(out), progress=not quiet)
    console.print(runs_table([run.path], title=f"{preset}: trained"))


# ----------------------------------------------------------------------------- analyze


@app.command()
@friendly
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    only: str = typer.Option(
        None, "--only", help="Comma-separated analyses (default: every one that applies)."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even if cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Compute analyses over every checkpoint of a run (cached in RUN/analysis/)."""
    import grokinterp.analysis as analysis
    from grokinterp.store import Run

    run = Run.open(run_dir)
    reasons = analysis.applicable(run)
    names = (
        [n.strip() for n in only.split(",")]
        if only
        else [n for n, r in reasons.items() if r is None]
    )
    for name, reason in reasons.items():
        if name not in names and not only:
            console.print(f"[dim]skip {name}: {reason}[/]")
    results = analysis.over_training(run, names, progress=not quiet, force=force)
    for name in names:
        summarize = ANALYSIS_SUMMARIES.get(name)
        if summarize is not None:
            console.print(
                summarize(
                    run,
                    {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(name + "/")},
                )
            )
        else:
            console.print(f"[green]{name}[/]: computed over {len(results['steps'])} checkpoints")


# Analyses may register a function (run, results) -> rich renderable printed by `analyze`.
ANALYSIS_SUMMARIES: dict = {}


# --- helper commands go below this line ---


def _fourier_table(run, results):
    from grokinterp.analysis.fourier_training import fourier_table

    return fourier_table(run, results)


ANALYSIS_SUMMARIES["fourier"] = _fourier_table


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
            sparsity,
            out,
            "ticket",
            scope,
            steps,
            seed,
            rounds,
            overrides or [],
            overwrite,
            not quiet,
        )
        console.print(runs_table([child.path], title="retrained ticket"))
        return
    chosen = [k.strip() for k in kinds.split(",")] if kinds else list(KINDS)
    result = compare_tickets(
        run,
        step,
        sparsity,
        out,
        chosen,
        scope,
        steps,
        seed,
        rounds,
        0.95,
        overrides or [],
        overwrite,
        not quiet,
    )
    table = Table(
        title=f"grokking ticket (step {step}, sparsity {sparsity:g}) vs controls — first step with acc ≥ 95%"
    )
    for col in (
        "kind",
        "sparsity",
        "t_mem",
        "t_gen",
        "t_gen/t_mem",
        "final test acc",
        "final L1",
        "final L2",
    ):
        table.add_column(col, justify="left" if col == "kind" else "right")
    fmt = lambda v, f="{}": "—" if v is None else f.format(v)  # noqa: E731
    for r in result.rows:
        table.add_row(
            r["kind"],
            f"{r['sparsity']:.2f}",
            fmt(r["t_mem"]),
            fmt(r["t_gen"]),
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
