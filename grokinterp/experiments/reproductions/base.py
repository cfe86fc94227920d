"""What every paper reproduction shares: the entry, its sizes, the verdict and the run context.

A reproduction (:class:`Paper`) is one module per paper in this package. It states the paper's
claim in one line and the paper's own figure (from ``REFERENCES.md``), a ``cpu`` and a ``paper``
:class:`Setting`, a ``run(ctx) -> results`` that trains what the claim needs, computes the
paper's measures and returns plain JSON data, and a ``verdict(results) -> Verdict`` that checks
the effect *quantitatively* on those numbers alone (so it is tested on planted results).
``configs(ctx)`` lists the configs ``run`` starts from, so that ``--dry-run`` validates a size
without training. The runner behind ``grokinterp reproduce`` is
:mod:`grokinterp.experiments.reproductions.runner`; the verdict table,
:mod:`grokinterp.experiments.reproductions.table`.

Training goes through the ordinary run store (:meth:`Context.train`), so a second ``reproduce``
reuses every finished run and every cached analysis: only the verdicts, tables and reports are
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.config import GrokinterpError, RunConfig, apply_overrides, load_preset, validate
from grokinterp.store import Run, is_run_dir

SIZES = ("cpu", "paper")
STATUSES = ("reproduced", "partly", "not")

__all__ = [
    "SIZES",
    "STATUSES",
    "Context",
    "Paper",
    "Setting",
    "Verdict",
    "check_size",
    "config_hash",
    "fmt_step",
    "grok",
    "jsonable",
    "most",
    "status_of",
]


def check_size(size: str, sizes: Sequence[str] | Mapping[str, Any] = SIZES) -> None:
    """A one-line error for a ``--size`` that is not one of ``sizes``."""
    if size not in sizes:
        raise GrokinterpError(f"--size {size!r} is not valid; allowed: {', '.join(SIZES)}")


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
        check_size(size, self.sizes)
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


def failed_checks(checks: Sequence[Mapping[str, bool]]) -> str:
    """``"failed checks: a, b"``: the names of the checks that fail on any seed (one mapping of
    check name → held per seed), for a verdict's "why"."""
    return "failed checks: " + ", ".join(sorted({k for c in checks for k, v in c.items() if not v}))


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
