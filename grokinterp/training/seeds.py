"""Many seeds of one config at once (issue 9): ``grokinterp train --seeds 0-63``.

The S models are one :class:`~grokinterp.training.group.SeedGroup` of the training loop with
*stacked* parameters (every tensor gets a leading seed dimension), trained by the fast engine's
seed-batched functional forward, so one GEMM serves all seeds. Seeds never interact (the loss is
the sum of each seed's mean loss; the optimizer, Grokfast filters (Lee et al. 2024) and masks act
elementwise; Omnigrok's norm constraint (Liu, Michaud, Tegmark 2023) is per seed); early stopping
and divergence are per seed.

``train.seed`` is what varies (initialisation and minibatch order); the task split
(``task.seed``) is shared. Each seed is written as an ordinary run directory ``<out>/seed<k>``
(run.json, metrics.jsonl, dense checkpoints, the resume state), equal within float rounding to
training that seed alone; ``Run.open`` and ``grokinterp train --resume`` work on it as on any run.

Configs the batched engine does not cover (minibatches, an embedding merge, ``train.engine =
"eager"``), models without a functional forward (with a warning) and resumes train the seeds one
after another with the same loop, which gives the same result, only slower.
"""

from __future__ import annotations

import re
from pathlib import Path

from grokinterp.config import GrokinterpError, RunConfig, validate
from grokinterp.models.functional import FastForward
from grokinterp.store import Run, is_run_dir
from grokinterp.store.lock import writer_locks
from grokinterp.tasks import make_task
from grokinterp.training.engines import EngineUnavailable, warn_fallback
from grokinterp.training.group import SeedGroup
from grokinterp.training.loop import fit, numerics_scope, prepare_dir, train, train_locked


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"3"``, ``"0,2,5-7"`` → sorted distinct seeds."""
    seeds: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise GrokinterpError(
                f"--seeds {text!r}: use a list of integers and ranges such as 0-63 or 0,2,5-7"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise GrokinterpError(f"--seeds {text!r}: range {part} is empty")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed training is written: ``<out>/seed<seed>``."""
    return Path(out_dir) / f"seed{seed}"


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    cfg = config.copy()
    cfg.train.seed = seed
    cfg.name = f"{config.name}-seed{seed}"
    return cfg


def batched_blockers(config: RunConfig) -> list[str]:
    """Why ``config`` cannot be trained with stacked seeds (empty: it can)."""
    out = []
    tc = config.train
    if tc.batch_size is not None:
        out.append("train.batch_size (each seed draws its own minibatches)")
    if tc.merge_embedding_at is not None:
        out.append("train.merge_embedding_at")
    if tc.engine == "eager":
        out.append("train.engine = 'eager' (the module forward trains one seed at a time)")
    if config.model.name not in FastForward.SUPPORTED:
        out.append(f"model {config.model.name!r} has no fast forward")
    return out


def train_seeds(
    config: RunConfig,
    seeds: list[int],
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_batch: int | None = None,
    trust_pickle: bool = False,
) -> list[Run]:
    """Train ``config`` once per seed in ``seeds`` into ``<out_dir>/seed<k>``; returns the runs.

    Seeds are trained together with stacked weights, ``max_batch`` at a time (default: all);
    see the module docstring for what is trained one seed at a time. ``trust_pickle`` is passed
    to :func:`~grokinterp.training.train` for resumes of runs with a legacy pickled resume state.
    """
    validate(config)
    if not seeds:
        raise GrokinterpError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise GrokinterpError("--seeds: seeds must be distinct")
    if max_batch is not None and max_batch < 1:
        raise GrokinterpError("max_batch must be ≥ 1")
    make_task(config.task.name, **config.task.params)  # bad task parameters fail first
    out = Path(out_dir)
    configs = [seed_config(config, s) for s in seeds]
    dirs = [seed_dir(out, s) for s in seeds]
    if (resume and any(is_run_dir(d) for d in dirs)) or batched_blockers(config):
        return [
            train(
                c,
                d,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                trust_pickle=trust_pickle,
            )
            for c, d in zip(configs, dirs, strict=True)
        ]
    runs: list[Run] = []
    size = max_batch or len(seeds)
    for i in range(0, len(seeds), size):
        group_cfgs, group_dirs = configs[i : i + size], dirs[i : i + size]
        with writer_locks(group_dirs):  # one writer per run folder (store.lock)
            for c, d in zip(group_cfgs, group_dirs, strict=True):
                prepare_dir(c, d, resume=False, overwrite=overwrite)
            try:
                with numerics_scope(config):
                    group = SeedGroup(group_cfgs, "fast")
                    runs += fit(group, group_dirs, progress)
            except EngineUnavailable as e:  # a model variant the functional forward lacks
                warn_fallback(str(e))
                runs += [
                    train_locked(c, d, progress=progress, engine="eager")
                    for c, d in zip(group_cfgs, group_dirs, strict=True)
                ]
    return runs


__all__ = ["batched_blockers", "parse_seeds", "seed_config", "seed_dir", "train_seeds"]
