"""Commands that orchestrate several runs: ``transfer`` (GrokTransfer), ``sweep`` (Ray grids) and
``tickets`` (grokking tickets and their controls)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from grokinterp.cli.app import app, console, err_console, friendly, resolve_config
from grokinterp.cli.runs import LOG_HELP, _with_log, runs_table
from grokinterp.config import (
    GrokinterpError,
)


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
        help="Checkpoint of E_W: STEP, acc=X (first checkpoint with test acc ≥ X), best, final.",
        # shown by Typer as "[default: …]" (square brackets in the help text are Rich markup)
        show_default="acc=0.3 for token targets, final for mlp targets; acc=0.25 with --cpu",
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


@app.command("sweep")
@friendly
def sweep_cmd(
    preset: str = typer.Option(None, "--preset", "-p", help="Base preset of every run."),
    config: Path = typer.Option(None, "--config", "-c", help="Base .toml/.json RunConfig."),
    grid: list[str] = typer.Option(
        None, "--grid", "-g", help="A grid axis: --grid train.weight_decay=0.1,0.3,1 (repeatable)."
    ),
    grid_file: str = typer.Option(
        None,
        "--grid-file",
        help="A sweep written down (TOML: preset, seeds, set, [grid]) or a shipped one "
        "(width-demo); --preset/--config replace its base, --grid/--set add to it.",
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
    log: str = typer.Option(
        None,
        "--log",
        help=LOG_HELP[:-2] + "; one tracker run per run, W&B group = the sweep folder's name).",
    ),
) -> None:
    """Train a grid of runs as Ray tasks and label each cell's phase of grokking.

    Rerun the same command (or `sweep --out DIR` alone) to continue a killed sweep: finished
    runs are skipped, half-trained ones resume. --address joins a Ray cluster.
    """
    if grid_file:  # before the Ray check: a bad file is reported without Ray
        from grokinterp.experiments.grid import load_grid_file

        gf = load_grid_file(grid_file)
        if not (preset or config):
            preset, config = gf.preset, Path(gf.config) if gf.config else None
        grid = [*gf.grid, *(grid or [])]
        seeds = seeds or gf.seeds
        overrides = [*gf.overrides, *(overrides or [])]
    from grokinterp.experiments.sweep import INSTALL_HINT, run_sweep
    from grokinterp.report.figures.sweep import sweep_table_rows

    try:
        import ray  # noqa: F401
    except ImportError:
        err_console.print(f"error: {INSTALL_HINT}", markup=False, style="bold red")
        raise typer.Exit(2) from None

    overrides = _with_log(overrides or [], log)
    base = resolve_config(preset, config, overrides) if (preset or config) else None
    if base is None and overrides:
        raise GrokinterpError("--set/--log need --preset or --config")
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


_VERDICT_STYLE = {"reproduced": "green", "partly": "yellow", "not": "red", "failed": "red"}


@app.command("reproduce")
@friendly
def reproduce_cmd(
    papers: str = typer.Argument(
        "all",
        help="A paper, a comma list (nanda2023,lee2024) or all: nanda2023, minegishi2024, "
        "lee2024, xu2024, fan2024, humayun2024, liu2022, merrill2023.",
    ),
    size: str = typer.Option(
        "cpu", "--size", help="cpu (minutes on a laptop) or paper (the paper's setting, a GPU)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seeds: int = typer.Option(
        None, "--seeds", help="Number of seeds (0..N-1); default: each setting's own."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Root folder [default: checkpoints/reproductions/SIZE]."
    ),
    budget_minutes: float = typer.Option(
        None,
        "--budget-minutes",
        help="Start no paper once this much time has passed or whose estimate exceeds what is "
        "left; those are reported as not run (budget).",
    ),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Override a value of every run trained: --set train.steps=50."
    ),
    force: bool = typer.Option(
        False, "--force", help="Run a paper size that needs a GPU on a machine without one."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Build and validate the configs, print the plan; train nothing."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Reproduce the seed papers' headline effects and print a verdict table.

    Per paper: trains its setting, computes the paper's measures, writes OUT/PAPER/report.html
    and verdict.json; for all of them OUT/VERDICTS.md. Finished runs and analyses are reused.
    """
    from grokinterp.api import reproduce, reproduction_plan

    if dry_run:
        rows = reproduction_plan(
            papers, size=size, device=device, seeds=seeds, out=out, overrides=overrides or []
        )
        table = Table(title=f"reproduce --size {size}: plan (nothing trained)", box=box.SIMPLE_HEAD)
        for col in ("paper", "est. min", "seeds", "runs it starts from (steps, dtype, batch)"):
            table.add_column(col, justify="right" if col in ("est. min", "seeds") else "left")
        for r in rows:
            runs = "; ".join(
                f"{name}: {c['steps']} {c['dtype']} {c['batch_size'] or 'full'} on {c['device']}"
                for name, c in r["configs"].items()
            )
            gpu = " (GPU)" if r["needs_gpu"] else ""
            table.add_row(r["paper"], f"{r['minutes']:g}{gpu}", str(r["seeds"]), runs)
        console.print(table)
        total = sum(r["minutes"] for r in rows)
        console.print(f"estimated {total:g} min in all; every config validated")
        return

    def on_event(kind: str, o) -> None:
        if kind == "start":
            err_console.print(f"→ {o.paper} ({o.size} size, {o.seeds} seed(s), {o.device})")
        else:
            style = _VERDICT_STYLE.get(o.status, "dim")
            secs = "" if o.seconds is None else f" in {o.seconds:.0f} s"
            err_console.print(
                f"  {o.paper}: [{style}]{o.status}[/]{secs}" + (f" — {o.why}" if o.why else ""),
                highlight=False,
            )

    res = reproduce(
        papers,
        size=size,
        device=device,
        seeds=seeds,
        out=out,
        budget_minutes=budget_minutes,
        overrides=overrides or [],
        force=force,
        progress=not quiet,
        on_event=on_event,
    )
    # Every column on a wide terminal; on a narrow one the claim and the paper's figure are left
    # to VERDICTS.md and the reports (nine columns in 80 characters are unreadable).
    wide = console.width >= 160
    cols = ["paper", *(["claim", "paper's figure"] if wide else []), "ours", "seeds", "device"]
    table = Table(title=f"reproductions ({res.size} size) — {res.out}", show_lines=True)
    for col in (*cols, "s", "train s", "verdict", "why"):
        table.add_column(col, justify="right" if col in ("seeds", "s", "train s") else "left")
    for o in res.outcomes:
        style = _VERDICT_STYLE.get(o.status, "dim")
        secs = "" if o.seconds is None else f"{o.seconds:.0f}" + (" †" if o.from_earlier else "")
        cells = [o.title, *([o.claim, o.paper_figure] if wide else []), o.ours or "—"]
        table.add_row(
            *cells,
            str(o.seeds or ""),
            o.device,
            secs,
            "" if o.train_seconds is None else f"{o.train_seconds:.0f}",
            f"[{style}]{o.status}[/]",
            o.why,
        )
    console.print(table)
    console.print(
        f"wrote {res.markdown} and a report.html + verdict.json per paper under {res.out} "
        f"({res.seconds:.0f} s)"
        + ("; † = from an earlier invocation" if any(o.from_earlier for o in res.outcomes) else ""),
        highlight=False,
    )
