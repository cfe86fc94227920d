"""Grokking-ticket experiments: retrain a ticket, its controls, and compare them.

Minegishi, Iwasawa & Matsuo, "Bridging Lottery Ticket and Grokking" (arXiv 2310.19470): take the
magnitude mask m of a run at a checkpoint after generalization (sparsity k = fraction removed,
default 0.6, one global threshold over all weight matrices incl. embedding and unembedding),
rewind to the run's initial weights θ₀ and train θ₀⊙m with m held fixed. Their finding: the
ticket reaches high test accuracy much sooner than the dense network, tickets taken before
generalization do not, and neither does a dense θ₀ rescaled to the ticket's L1 or L2 norm, a
random mask, or pruning at initialization (SNIP, GraSP, SynFlow).

Every retraining is an ordinary run directory (dense checkpoints, metrics) whose
``RunConfig.parent`` is the parent run, with ``train.init_state`` / ``train.mask`` pointing at
safetensors files written into the *parent's* ``analysis/ticket_inputs/<tag>/`` folder. All
kinds share the parent's config — task split, seed, optimizer, step budget — except the initial
weights and the mask:

=========  ==================================================================================
kind       initial weights / mask
=========  ==================================================================================
dense      θ₀ (the parent's step-0 weights), no mask — the dense baseline, same budget
ticket     θ₀⊙m, m fixed (m = magnitude mask of the checkpoint ``at``)
dense_l2   r₂·θ₀ dense, r₂ = ‖θ₀⊙m‖₂ / ‖θ₀‖₂ (one global factor on the mask's tensors)
dense_l1   r₁·θ₀ dense, r₁ = ‖θ₀⊙m‖₁ / ‖θ₀‖₁
random     θ₀⊙m_r, m_r uniformly random with the same sparsity and scope (seeded)
snip       θ₀⊙m_s, m_s from SNIP scores of θ₀ on the full training set (Lee et al. 2019)
grasp      θ₀⊙m_g, GraSP scores (Wang et al. 2020)
synflow    θ₀⊙m_f, iterative SynFlow, ``rounds`` rounds (Tanaka et al. 2020)
=========  ==================================================================================

Timing follows the paper (its t_mem / t_gen, τ = t_gen / t_mem) through
:func:`grokinterp.analysis.curves.grok_times`: ``fit_step`` / ``generalize_step`` = first
evaluated step with train / test accuracy ≥ ``DEFAULT_THRESHOLD`` (95 %), ``delay`` their
difference, ``ratio`` = generalize_step / max(fit_step, 1).

CPU-sized Minegishi setting (``CPU_OVERRIDES``): the ``minegishi2024-mlp`` preset (p = 67, 40 %
train, d_mlp 48, sum, out-projection, no biases, AdamW lr 1e-3, betas (0.9, 0.98), wd 1, full
batch) with d_embed = d_model = 128 instead of 500 and a 2 500-step budget. Measured on a shared
2-core CPU with one torch thread: ~15 ms per step, 45 s for the parent run; the dense run reaches
95 % train accuracy at step 300 and 95 % test accuracy at step 1 740 (the full-width preset:
~32 ms per step, generalize_step ≈ 2 050). ``grokinterp tickets RUN --compare`` on it (8 runs) took 5 min;
the ticket from the final checkpoint at sparsity 0.6 reached 95 % test accuracy at step 320, the
L2- / L1-matched dense controls at 1 530 / 1 040, and random / SNIP / GraSP / SynFlow masks did not
within the budget.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from torch import Tensor

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.analysis.pruning import pruning_mask
from grokinterp.analysis.tickets import (
    apply_mask,
    extract_ticket,
    mask_sparsity,
    model_parameters,
    norm_ratio,
    random_mask,
    rescale_to_norm,
    resolve_step,
    save_mask,
)
from grokinterp.config import GrokinterpError, RunConfig, apply_overrides
from grokinterp.report.figures.tickets import ticket_curves_figure
from grokinterp.store import Run, atomic_write_text, is_run_dir, save_tensors
from grokinterp.training import loss_fn as _trainer_loss
from grokinterp.training import train

KINDS = ("dense", "ticket", "dense_l2", "dense_l1", "random", "snip", "grasp", "synflow")

# CPU-sized variant of the minegishi2024-mlp preset (see the module docstring).
CPU_OVERRIDES = ["model.d_embed=128", "model.d_model=128", "train.steps=2500", "train.device=cpu"]

__all__ = [
    "KINDS",
    "CPU_OVERRIDES",
    "TicketComparison",
    "ticket_inputs",
    "retrain_ticket",
    "compare_tickets",
    "summarize_run",
]


def _tag(step: int, sparsity: float, scope: str) -> str:
    return f"step{step:08d}-s{sparsity:g}-{scope}"


def ticket_inputs(
    run: Run,
    kind: str,
    at: int | str = "final",
    sparsity: float = 0.6,
    scope: str = "global",
    seed: int = 0,
    rounds: int = 100,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Any]]:
    """Initial weights, mask (None for dense kinds) and a description for one ``kind``.

    ``at`` and ``sparsity`` define the ticket m (also needed by the norm-matched controls, whose
    norms are matched to θ₀⊙m). Returns ``(init_params, mask, info)``.
    """
    if kind not in KINDS:
        raise GrokinterpError(f"kind={kind!r} is not valid; allowed: {', '.join(KINDS)}")
    step = resolve_step(run, at)
    theta0 = model_parameters(run, 0)
    info: dict[str, Any] = {"kind": kind, "at": step, "sparsity": float(sparsity), "scope": scope}
    if kind == "dense":
        return theta0, None, info
    ticket = extract_ticket(run, step, sparsity, scope, save=True)
    if kind in ("dense_l2", "dense_l1"):
        p = 2 if kind == "dense_l2" else 1
        info["norm_ratio"] = norm_ratio(theta0, ticket, p)
        return rescale_to_norm(theta0, ticket, p), None, info
    if kind == "ticket":
        mask = ticket
    elif kind == "random":
        mask = random_mask(theta0, sparsity, scope, seed=seed)
        info["seed"] = seed
    else:
        task = run.task()
        model = run.model(0)
        model.train()
        lf = functools.partial(_trainer_loss, run.config.train.loss)
        x, y = task.x_train, task.y_train
        if task.input_kind == "vector":
            x = x.to(next(model.parameters()).dtype)
        mask = pruning_mask(
            kind, model, x, y, sparsity, scope, seed=seed, rounds=rounds, loss_fn=lf
        )
        if kind == "synflow":
            info["rounds"] = rounds
    info["mask_sparsity"] = mask_sparsity(mask)
    return apply_mask(theta0, mask), mask, info


def _child_config(
    run: Run,
    init_path: Path,
    mask_path: Path | None,
    kind: str,
    info: Mapping[str, Any],
    steps: int | None,
    overrides: Sequence[str],
) -> RunConfig:
    cfg = run.config.copy()
    cfg.train.init_state = str(init_path.resolve())
    cfg.train.mask = str(mask_path.resolve()) if mask_path else None
    if steps is not None:
        cfg.train.steps = int(steps)
    cfg.parent = str(run.path.resolve())
    cfg.name = f"{run.config.name}-{kind}"
    cfg.notes = f"grokking-ticket experiment ({kind}): " + json.dumps(dict(info), sort_keys=True)
    return apply_overrides(cfg, list(overrides))


def _write_inputs(
    run: Run, kind: str, init: dict, mask: dict | None, info: dict
) -> tuple[Path, Path | None]:
    folder = run.analysis_dir / "ticket_inputs" / _tag(info["at"], info["sparsity"], info["scope"])
    suffix = f"-seed{info['seed']}" if "seed" in info else ""
    suffix += f"-r{info['rounds']}" if "rounds" in info else ""
    meta = {k: str(v) for k, v in info.items()}
    init_path = folder / f"init-{kind}{suffix}.safetensors"
    save_tensors(init_path, init, metadata=meta)
    mask_path = None
    if mask is not None:
        mask_path = save_mask(folder / f"mask-{kind}{suffix}.safetensors", mask, metadata=meta)
    return init_path, mask_path


def retrain_ticket(
    run: Run | str | Path,
    at: int | str = "final",
    *,
    sparsity: float = 0.6,
    out_dir: str | Path | None = None,
    kind: str = "ticket",
    scope: str = "global",
    steps: int | None = None,
    seed: int = 0,
    rounds: int = 100,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> Run:
    """Train one ticket (or control ``kind``) of ``run`` as a new run in ``out_dir``.

    ``kind="ticket"`` rewinds to the run's step-0 weights and trains θ₀⊙m with the magnitude
    mask of checkpoint ``at`` held fixed (pruned weights stay exactly 0; the trainer masks the
    gradients before the update and the weights after it). Other kinds: module docstring.
    ``steps`` overrides the budget (default: the parent's ``train.steps``); ``overrides`` are
    extra ``section.key=value`` settings. A complete run with the same config already in
    ``out_dir`` is reused as is; a different one is an error unless ``overwrite``.
    The new run's ``config.parent`` is the parent run's path.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    init, mask, info = ticket_inputs(run, kind, at, sparsity, scope, seed, rounds)
    init_path, mask_path = _write_inputs(run, kind, init, mask, info)
    cfg = _child_config(run, init_path, mask_path, kind, info, steps, overrides)
    if out_dir is None:
        out_dir = (
            run.path.parent / f"{run.path.name}-tickets" / _tag(info["at"], sparsity, scope) / kind
        )
    out = Path(out_dir)
    if not overwrite and is_run_dir(out):
        existing = Run.open(out)
        if existing.info.get("status") == "complete" and existing.config.to_dict() == cfg.to_dict():
            return existing
    return train(cfg, out, overwrite=overwrite, progress=progress)


def summarize_run(run: Run, label: str, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """One comparison row: ``fit_step``, ``generalize_step`` (first step with train / test acc
    ≥ threshold, :func:`~grokinterp.analysis.curves.grok_times`), ``delay``, ``ratio`` (the
    paper's τ = t_gen / t_mem), final test acc, final L1 / L2 norms (all parameters, from the
    last metrics row)."""
    rows = run.metrics
    if not rows:
        raise GrokinterpError(f"run {run.path} has no metrics")
    times = grok_times(rows, threshold)
    last = rows[-1]
    return {
        "kind": label,
        "sparsity": mask_sparsity_of(run),
        "fit_step": times.fit_step,
        "generalize_step": times.generalize_step,
        "delay": times.delay,
        "ratio": times.ratio,
        "threshold": times.threshold,
        "final_test_acc": last["test_acc"],
        "final_train_acc": last["train_acc"],
        "final_step": last["step"],
        "final_l1": last.get("weight_norm_l1"),
        "final_l2": last.get("weight_norm_l2"),
        "wall_s": run.info.get("wall_time_s"),
        "run": str(run.path),
    }


def mask_sparsity_of(run: Run) -> float:
    """Fraction of masked-out entries among the mask's tensors (0.0 for a run without mask)."""
    if not run.config.train.mask:
        return 0.0
    from grokinterp.analysis.tickets import load_mask

    return mask_sparsity(load_mask(run.config.train.mask))


@dataclass
class TicketComparison:
    """Result of :func:`compare_tickets`: table rows, curves, the figure and the runs."""

    rows: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    figure: go.Figure
    runs: dict[str, Run] = field(default_factory=dict)
    out_dir: Path | None = None

    def table(self) -> str:
        """A plain-text table (the CLI prints a rich one)."""
        cols = [
            "kind",
            "sparsity",
            "fit_step",
            "generalize_step",
            "ratio",
            "final_test_acc",
            "final_l1",
            "final_l2",
        ]
        lines = [" | ".join(f"{c:>14}" for c in cols)]
        for r in self.rows:
            lines.append(" | ".join(f"{_fmt(r[c]):>14}" for c in cols))
        return "\n".join(lines)

    def to_frame(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("kind")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def compare_tickets(
    run: Run | str | Path,
    at: int | str = "final",
    *,
    sparsity: float = 0.6,
    out_dir: str | Path | None = None,
    kinds: Sequence[str] = KINDS,
    scope: str = "global",
    steps: int | None = None,
    seed: int = 0,
    rounds: int = 100,
    threshold: float = DEFAULT_THRESHOLD,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> TicketComparison:
    """Train the ticket and every control with the parent's seed and the same step budget.

    Each kind becomes ``out_dir/<kind>/`` (default
    ``<run>-tickets/step<at>-s<sparsity>-<scope>/``); complete runs already there with the same
    config are reused. Writes ``compare.json`` (the table) and ``compare.html`` (test accuracy
    over steps for all kinds) into ``out_dir`` and returns a :class:`TicketComparison`.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise GrokinterpError(f"kinds={bad or kinds!r} is not valid; allowed: {', '.join(KINDS)}")
    step = resolve_step(run, at)
    out = (
        Path(out_dir)
        if out_dir is not None
        else run.path.parent / f"{run.path.name}-tickets" / _tag(step, sparsity, scope)
    )
    runs, rows, curves = {}, [], {}
    for kind in kinds:
        child = retrain_ticket(
            run,
            step,
            sparsity=sparsity,
            out_dir=out / kind,
            kind=kind,
            scope=scope,
            steps=steps,
            seed=seed,
            rounds=rounds,
            overrides=overrides,
            overwrite=overwrite,
            progress=progress,
        )
        runs[kind] = child
        rows.append(summarize_run(child, kind, threshold))
        ms = child.metrics
        curves[kind] = {
            "step": [m["step"] for m in ms],
            "test_acc": [m["test_acc"] for m in ms],
            "train_acc": [m["train_acc"] for m in ms],
        }
    fig = ticket_curves_figure(
        curves,
        threshold=threshold,
        show_train=True,
        title=f"{run.config.name}: ticket from step {step} at sparsity {sparsity:g} vs controls",
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "compare.json",
        json.dumps({"parent": str(run.path.resolve()), "rows": rows}, indent=2),
    )
    fig.write_html(out / "compare.html", include_plotlyjs=True)
    return TicketComparison(rows, curves, fig, runs, out)
