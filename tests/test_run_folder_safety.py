"""Trustworthy run folders (issue 15 items 4-5): one writer per run folder (an OS lock that a
killed writer releases), one-line errors naming the file for every corrupt or partial file, and
runs killed at awkward moments that ``--resume`` can still continue."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from grokinterp.cli import app, runs_table
from grokinterp.config import GrokinterpError
from grokinterp.store import Run, RunFolderWarning, read_metrics, save_tensors
from grokinterp.store import state as state_mod
from grokinterp.store.lock import (
    LOCK_FILE,
    RunLock,
    clear_run_dir,
    is_being_written,
    is_vacant_dir,
)
from grokinterp.training import train

from .conftest import TINY_OVERRIDES, tiny

GROKINTERP = Path(sys.executable).with_name("grokinterp")
TINY = [a for o in TINY_OVERRIDES for a in ("--set", o)]
# A tiny run that trains "forever" (killed by the test) with few disk writes.
LIVE = [*TINY, "--set", "train.checkpoint_every=1000", "--set", "train.eval_every=50"]
runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _one_line_error(code: int, out: str) -> str:
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run (30 steps), to copy and damage."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny(), out, progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- the writer lock


def test_second_writer_fails_at_once_and_a_killed_writer_releases_the_lock(tmp_path):
    out = tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    first = subprocess.Popen(
        [str(GROKINTERP), "train", "-p", "demo", *LIVE, "--set", "train.steps=10000000"]
        + ["-q", "-o", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not (out / "steps" / "00000000.safetensors").is_file():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first writer never wrote its step 0"
            time.sleep(0.05)
        before = json.loads((out / "run.json").read_text())
        # a second process: `train --resume` (a real CLI process) ...
        second = subprocess.run(
            [str(GROKINTERP), "train", "-p", "demo", *LIVE, "--resume", "-q", "-o", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        line = _one_line_error(second.returncode, second.stderr + second.stdout)
        assert f"{out} is being written by another process (pid {first.pid})" in line
        # ... and `train --overwrite` from this (pytest) process: refused, nothing deleted
        line = _one_line_error(*_cli("train", "-p", "demo", *LIVE, "--overwrite", "-q", "-o", out))
        assert f"is being written by another process (pid {first.pid})" in line
        with pytest.raises(GrokinterpError, match="being written by another process"):
            train(tiny(), out, overwrite=True, progress=False)
        assert first.poll() is None  # the first writer never noticed
        assert json.loads((out / "run.json").read_text())["config"] == before["config"]
        assert (out / "steps" / "00000000.safetensors").is_file()
        assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
        assert is_being_written(out)
        # readers keep working on the live run
        assert Run.open(out).steps[0] == 0
        code, listing = _cli("ls", out)
        assert code == 0 and "live" in listing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not is_being_written(out)  # the OS dropped the dead writer's lock
    # kill -9 released the lock: a new --resume continues (or restarts) the run
    code, text = _cli(
        "train", "-p", "demo", *LIVE, "--set", "train.steps=40", "--resume", "-q", "-o", out
    )
    assert code == 0, text
    run = Run.open(out)
    assert run.info["status"] == "complete"
    assert not (out / LOCK_FILE).exists()
    assert not list(out.rglob("*.tmp*"))


def test_lock_is_reentrant_for_its_thread_and_refuses_other_threads(tmp_path):
    out = tmp_path / "r"
    with RunLock(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with RunLock(out):  # e.g. a multi-seed group that falls back to train() per seed
            pass
        assert (out / LOCK_FILE).exists()  # still held by the outer one
        errors = []

        def other():
            try:
                with RunLock(out):
                    pass
            except GrokinterpError as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and "being written by another thread" in errors[0]
    assert not out.exists()  # the lock made the folder and nothing was written: removed again


def test_overwrite_deletes_only_under_the_lock(tmp_path, tiny_run):
    run = _copy(tiny_run, tmp_path / "r")
    with pytest.raises(RuntimeError, match="without holding"):
        clear_run_dir(run)
    assert (run / "run.json").is_file()
    train(tiny(["train.steps=10"]), run, overwrite=True, progress=False)
    assert Run.open(run).info["final_step"] == 10


def test_resume_and_overwrite_together_is_an_error(tmp_path, tiny_run):
    run = _copy(tiny_run, tmp_path / "r")
    line = _one_line_error(
        *_cli("train", "-p", "demo", *TINY, "--resume", "--overwrite", "-o", run)
    )
    assert "--resume and --overwrite" in line
    assert Run.open(run).info["status"] == "complete"


def test_bad_out_paths_are_one_line_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, why in [
        (a_file, "is a file"),
        (a_file / "sub", "Not a directory"),
        (tmp_path / ("x" * 300), "file name too long"),
    ]:
        line = _one_line_error(*_cli("train", "-p", "demo", *TINY, "-q", "-o", out))
        assert why in line and str(out)[:40] in line, line
    assert a_file.read_text() == "x"


# ----------------------------------------------------------------------------- killed writers


def test_kill_before_the_first_checkpoint_can_be_resumed(tmp_path, tiny_run):
    cfg = tiny()
    # killed after run.json (and the step-0 metrics line) but before the step-0 checkpoint
    out = tmp_path / "early"
    Run.create(out, cfg, {"split_hash": "x"})
    (out / "metrics.jsonl").write_text('{"step": 0, "train_loss": 2.4}\n')
    train(cfg, out, resume=True, progress=False)
    assert Run.open(out).info["status"] == "complete"
    # killed between the step-0 weights and the first resume state
    out = tmp_path / "early2"
    Run.create(out, cfg, {"split_hash": "x"})
    save_tensors(out / "steps" / "00000000.safetensors", Run.open(tiny_run).load_state(0))
    train(cfg, out, resume=True, progress=False)
    assert Run.open(out).info["status"] == "complete"
    # killed before run.json: an empty steps/ and a stale temporary run.json
    out = tmp_path / "early3"
    (out / "steps").mkdir(parents=True)
    (out / ".run.json.tmp4242").write_text("{")
    assert is_vacant_dir(out)
    train(cfg, out, resume=True, progress=False)
    assert Run.open(out).info["status"] == "complete"
    # but a long run whose resume state was deleted is never silently restarted
    out = _copy(tiny_run, tmp_path / "late")
    for f in (out / "state").iterdir():
        f.unlink()
    with pytest.raises(GrokinterpError, match="latest.json is missing"):
        train(cfg, out, resume=True, progress=False)
    assert len(Run.open(out).steps) > 1


def test_kill_between_the_resume_state_writes_resumes_from_the_previous_state(
    tmp_path, tiny_run, monkeypatch
):
    out = _copy(tiny_run, tmp_path / "r")
    step = json.loads((out / "state" / "latest.json").read_text())["state"]["step"]
    real = state_mod.atomic_write_text

    def killed(path, text):
        raise KeyboardInterrupt  # the kill: new tensors on disk, the JSON still the old one

    monkeypatch.setattr(state_mod, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        state_mod.save_resume_state(out, {"step": 999, "x": torch.ones(3)})
    monkeypatch.setattr(state_mod, "atomic_write_text", real)
    assert (out / state_mod.PREVIOUS_TENSORS).is_file()
    assert state_mod.load_resume_state(out)["step"] == step
    train(tiny(["train.steps=40"]), out, resume=True, progress=False)
    assert Run.open(out).info["final_step"] == 40
    assert not (out / state_mod.PREVIOUS_TENSORS).exists()


def test_stale_temporary_files_are_removed_by_the_next_writer_only(tmp_path, tiny_run):
    out = _copy(tiny_run, tmp_path / "r")
    (out / "analysis").mkdir(exist_ok=True)
    stale = [
        out / ".run.json.tmp123",
        out / ".metrics.jsonl.tmp123",
        out / "steps" / ".00000030.safetensors.tmp123",
        out / "state" / ".latest.json.tmp77",
        out / "state" / ".latest.safetensors.tmp77",
    ]
    kept = [out / "analysis" / ".fourier.json.tmp55", out / ".report.html.tmp55"]
    for f in stale + kept:
        f.write_text("partial")
    assert Run.open(out).metrics  # readers leave them alone
    assert all(f.exists() for f in stale)
    with Run.open(out).writer_lock():
        assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)  # analyze/report write these without the lock


# ----------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[]", "holds a JSON list"),
        (b"{}", "no format_version/config"),
        (b'{"format_version": 1}', "no format_version/config"),
        (b"\xff\xfe garbage", "not UTF-8"),
        (b'{"format_version": 1, "config": ', "run.json is corrupt"),
        (b'{"format_version": 99, "config": {}}', "newer grokinterp"),
        (b'{"format_version": "1", "config": {}}', "format_version '1'"),
        (b'{"format_version": 0, "config": {}}', "format_version 0"),
        (b'{"format_version": 1, "config": []}', "config must be an object"),
        (b'{"format_version": 1, "config": {"task": 5}}', "bad config"),
        (b'{"format_version": 1, "config": {"bogus": {}}}', "bad config"),
    ],
)
def test_corrupt_run_json_is_a_one_line_error_naming_it(tmp_path, tiny_run, content, message):
    out = _copy(tiny_run, tmp_path / "r")
    (out / "run.json").write_bytes(content)
    with pytest.raises(GrokinterpError) as err:
        Run.open(out)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(out) in str(err.value)
    line = _one_line_error(*_cli("report", out))
    assert str(out) in line


def test_wrong_types_inside_config_and_info_fields(tmp_path, tiny_run):
    out = _copy(tiny_run, tmp_path / "r")
    good = json.loads((out / "run.json").read_text())
    for path, value in [
        (("config", "train", "steps"), "many"),
        (("config", "train", "lr"), [1]),
        (("config", "model", "d_model"), -3),
        (("final_step",), "30"),
        (("status",), 5),
        (("stopped_early",), "no"),
    ]:
        info = json.loads(json.dumps(good))
        node = info
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (out / "run.json").write_text(json.dumps(info))
        with pytest.raises(GrokinterpError) as err:
            Run.open(out)
        assert str(out / "run.json") in str(err.value) and "\n" not in str(err.value), path


def test_metrics_bad_middle_line_is_an_error_torn_last_line_a_warning(tmp_path, tiny_run):
    out = _copy(tiny_run, tmp_path / "r")
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    for bad in (
        "garbage\n",
        "42\n",
        '{"step": "3"}\n',
        '{"train_acc": 1}\n',
        '{"step": 1, "x": [1]}\n',
    ):
        metrics.write_text("".join(lines[:2]) + bad + "".join(lines[2:]))
        with pytest.raises(GrokinterpError, match=f"{metrics}:3: bad metrics line"):
            read_metrics(metrics)
    metrics.write_bytes(b"".join(x.encode() for x in lines[:2]) + b"\xff\xff\n")
    with pytest.raises(GrokinterpError, match=":3: bad metrics line .*UTF-8"):
        read_metrics(metrics)
    # a torn last line (a kill mid-append): skipped with a warning, the rest is read
    metrics.write_text("".join(lines) + '{"step": 31, "train_lo')
    with pytest.warns(RunFolderWarning, match="torn last line"):
        rows = read_metrics(metrics)
    assert len(rows) == len(lines)
    with warnings.catch_warnings():  # a complete last line without its newline is kept
        warnings.simplefilter("error")
        metrics.write_text("".join(lines).rstrip("\n"))
        assert len(read_metrics(metrics)) == len(lines)
    # the CLI: ls shows the run as unreadable, report fails with one line naming file:line
    metrics.write_text(lines[0] + "42\n" + "".join(lines[1:]))
    assert _cli("ls", out)[0] == 0
    wide = Console(width=400, record=True, file=io.StringIO())
    wide.print(runs_table([out]))
    listing = wide.export_text()
    assert "unreadable" in listing and "metrics.jsonl:2" in listing
    assert "metrics.jsonl:2" in _one_line_error(*_cli("report", out))


def test_garbage_checkpoint_is_a_one_line_error_naming_it(tmp_path, tiny_run):
    out = _copy(tiny_run, tmp_path / "r")
    run = Run.open(out)
    step = run.steps[-1]
    for content in (b"", b"garbage" * 20, run.step_path(0).read_bytes()[:-50]):
        run.step_path(step).write_bytes(content)
        with pytest.raises(GrokinterpError) as err:
            run.model(step)
        assert str(run.step_path(step)) in str(err.value) and "\n" not in str(err.value)
    save_tensors(run.step_path(step), {"x": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(GrokinterpError, match="no floating-point weights"):
        run.model(step)
    save_tensors(run.step_path(step), {"x": torch.zeros(2)})
    with pytest.raises(GrokinterpError, match="does not fit the run's model"):
        run.model(step)


def test_overwrite_never_deletes_a_live_run_inside_the_folder(tmp_path, tiny_run):
    parent = tmp_path / "sweep"
    child = _copy(tiny_run, parent / "cell")
    (child / LOCK_FILE).write_text("")
    holder = subprocess.Popen(  # another process holds the child's lock (no grokinterp import)
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(child / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GrokinterpError, match="cell inside it is being written"):
            train(tiny(), parent, overwrite=True, progress=False)
        assert Run.open(child).info["status"] == "complete"
    finally:
        holder.kill()
        holder.wait()
    train(tiny(["train.steps=5"]), parent, overwrite=True, progress=False)  # released: allowed
    assert not child.exists()


def test_written_files_follow_the_umask(tmp_path):
    """Checkpoints, caches and state are readable by the group/others when the umask allows it
    (safetensors alone creates 0600 files), and private when it does not."""
    import stat

    from grokinterp.store import save_tensors

    before = os.umask(0o022)
    try:
        save_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(2)})
        os.umask(0o077)
        save_tensors(tmp_path / "b.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o600
