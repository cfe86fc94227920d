"""Determinism on CPU (issue 15 item 2): the same command gives bit-identical checkpoints and
metrics whatever the thread count, and a run killed many times then resumed equals the
uninterrupted one bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grokinterp.config import apply_overrides, load_preset
from grokinterp.models import build_model
from grokinterp.store import Run
from grokinterp.tasks import make_task
from grokinterp.training import group as group_mod
from grokinterp.training import train
from grokinterp.training.numerics import cpu_determinism, loss_fn, seed_norms
from tests.conftest import TINY_OVERRIDES, tiny

GROKINTERP = [sys.executable, "-m", "grokinterp.cli"]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("OMP_NUM_THREADS", None)  # the thread count is --threads' business
    return subprocess.Popen(
        [*GROKINTERP, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw
    )


def _run_cli(args: list[str]) -> None:
    proc = _cli(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()


def _digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every checkpoint file (``sha256sum steps/*``)."""
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted((run_dir / "steps").glob("*.safetensors"))
    }


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "wall_time"} for m in Run.open(run_dir).metrics]


def _same_runs(dirs: dict, ref_key) -> None:
    ref = _digests(dirs[ref_key])
    assert len(ref) >= 4  # every early step is a checkpoint (log-spaced)
    for key, d in dirs.items():
        assert _digests(d) == ref, key
        assert _metrics(d) == _metrics(dirs[ref_key]), key


@pytest.mark.parametrize("engine", ["eager", "fast"])
def test_demo_identical_files_on_1_and_2_threads(tmp_path, engine):
    """The demo preset twice with 1 and twice with 2 threads: identical checkpoint files and
    metrics (before the fix, two 2-thread runs differed at step 1 by 5e-8)."""
    cfg = apply_overrides(load_preset("demo"), ["train.steps=3", f"train.engine={engine}"])
    dirs = {}
    for threads, k in ((1, "a"), (1, "b"), (2, "a"), (2, "b")):
        dirs[threads, k] = tmp_path / f"t{threads}{k}"
        cfg_t = apply_overrides(cfg, [f"train.threads={threads}"])
        run = train(cfg_t, dirs[threads, k], progress=False)
        assert run.config.train.threads == threads and run.info["engine"] == engine
    _same_runs(dirs, (1, "a"))


@pytest.mark.slow  # four processes (the 2-thread ones slow on a busy machine): `make test-slow`
def test_cli_demo_identical_files_on_1_and_2_threads(tmp_path):
    """The same, as the command a user types: ``grokinterp train --preset demo --threads N``."""
    base = ["train", "--preset", "demo", "-q", "--set", "train.steps=8"]
    dirs = {}
    for threads, k in ((1, "a"), (1, "b"), (2, "a"), (2, "b")):
        dirs[threads, k] = tmp_path / f"t{threads}{k}"
        _run_cli([*base, "--threads", str(threads), "--out", str(dirs[threads, k])])
        assert Run.open(dirs[threads, k]).config.train.threads == threads
    _same_runs(dirs, (1, "a"))


def test_embedding_gradient_is_deterministic_on_2_threads():
    """The op that made 2-thread runs differ: ``W_E[tokens]``'s backward (index_put_ with
    accumulation, atomics across threads). Inside the training scope it is ordered."""
    cfg = load_preset("demo")
    task = make_task(cfg.task.name, **cfg.task.params)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    grads = []
    for threads in (1, 2, 2, 2, 2, 2):
        with cpu_determinism(threads):
            model.zero_grad()
            loss_fn("cross_entropy", model(task.x_train)[:, -1], task.y_train).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for g in grads[1:]:
        for k in g:
            assert torch.equal(g[k], grads[0][k]), k


def test_norms_are_the_same_on_every_thread_count():
    """A whole-tensor reduction above 32 768 elements splits over threads; seed_norms does not."""
    torch.manual_seed(0)
    params = [torch.randn(1, 100_003), torch.randn(1, 300, 200), torch.randn(1, 7)]
    out = {}
    for threads in (1, 2, 3):
        with cpu_determinism(threads):
            out[threads] = seed_norms(params)
    for threads in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(out[1], out[threads], strict=True))


def test_threads_are_scoped_to_the_training(tmp_path):
    before = torch.get_num_threads()
    seen = []
    real = group_mod.SeedGroup.train_step

    def spy(self):
        seen.append((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))
        real(self)

    group_mod.SeedGroup.train_step = spy
    try:
        train(tiny(["train.threads=2", "train.steps=3"]), tmp_path / "r", progress=False)
    finally:
        group_mod.SeedGroup.train_step = real
    assert set(seen) == {(2, True)}
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()


KILL_SET = [*TINY_OVERRIDES, "train.steps=150", "train.batch_size=40"]
KILL_SET += ["train.grokfast={kind='ema'}", "train.lr=0.01"]


@pytest.mark.slow  # eight processes (~20 s each on a busy 2-core machine): `make test-slow`
def test_six_sigkills_then_resume_equal_the_uninterrupted_run(tmp_path):
    """``kill -9`` at random points (mid-step, mid-evaluation, mid-checkpoint), ``--resume``
    after each: the finished run equals the uninterrupted one bit for bit."""
    args = ["train", "--preset", "demo", "-q"]
    args += [a for s in KILL_SET for a in ("--set", s)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run_cli([*args, "--out", str(straight)])
    rng = random.Random(15)
    kills = 0
    while kills < 6:
        proc = _cli([*args, "--out", str(killed), "--resume"])
        rows = _rows(killed)
        target = rows + rng.randint(1, 6)
        deadline = time.monotonic() + 300
        while proc.poll() is None and _rows(killed) < target and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is not None:  # finished before the kill: start over from the straight run
            pytest.fail(f"the run finished before kill {kills + 1}: make it longer")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    _run_cli([*args, "--out", str(killed), "--resume"])
    assert Run.open(killed).info["status"] == "complete"
    assert _digests(killed) == _digests(straight)
    assert _metrics(killed) == _metrics(straight)


def _rows(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.mark.parametrize("engine", ["eager", "fast"])
def test_many_interruptions_in_process_are_bit_exact(tmp_path, monkeypatch, engine):
    """Five interruptions (KeyboardInterrupt inside a step) at random steps, each resumed, with
    1 or 2 threads per segment: equal to the uninterrupted run bit for bit."""
    cfg = tiny([f"train.engine={engine}", "train.steps=60", "train.grokfast={kind='ma', window=3}"])
    cfg = apply_overrides(cfg, ["train.batch_size=40"])
    straight = train(cfg, tmp_path / "a", progress=False)
    real_step = group_mod.SeedGroup.train_step
    rng = random.Random(7)
    for attempt in range(5):
        segment = apply_overrides(cfg, [f"train.threads={1 + attempt % 2}"])
        budget = {"n": rng.randint(1, 14)}

        def dying_step(self, budget=budget):
            budget["n"] -= 1
            if budget["n"] < 0:
                raise KeyboardInterrupt
            real_step(self)

        monkeypatch.setattr(group_mod.SeedGroup, "train_step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            train(segment, tmp_path / "b", resume=True, progress=False)
    monkeypatch.setattr(group_mod.SeedGroup, "train_step", real_step)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.info["engine"] == engine
    assert _digests(resumed.path) == _digests(straight.path)
    assert _metrics(resumed.path) == _metrics(straight.path)
    state = json.loads((resumed.path / "state" / "latest.json").read_text())["state"]
    assert state["step"] == 60


def test_threads_option_of_train_and_run(tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app

    args = ["train", "--preset", "demo", "-q", "--out", str(tmp_path / "r"), "--threads", "2"]
    args += [a for s in [*TINY_OVERRIDES, "train.steps=2"] for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Run.open(tmp_path / "r").config.train.threads == 2
    for cmd in ("train", "run"):
        bad = CliRunner().invoke(app, [cmd, "--preset", "demo", "--threads", "-1"])
        assert bad.exit_code == 2 and "--threads" in bad.output
    default = load_preset("demo").train.threads
    assert default == 1
