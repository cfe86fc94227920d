"""A 2×2 sweep of tiny runs on local Ray, killed after its first finished cell and restarted:
only the missing runs are trained, a half-trained run resumes, finished runs are untouched."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokinterp.store import has_resume_state

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TINY = [
    "task.p=11",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_head=8",
    "model.d_mlp=32",
    "train.steps=1000",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.checkpoint_log_steps=4",
    "train.early_stop_acc=none",
]


def _cmd(out: Path) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "grokinterp.cli",
        "sweep",
        "--preset",
        "demo",
        *sets,
        "--grid",
        "train.weight_decay=0.3,1",
        "--grid",
        "task.train_fraction=0.3,0.5",
        "--out",
        str(out),
        "--max-concurrent",
        "1",
        "--quiet",
        "--no-report",
    ]


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _snapshot(out: Path) -> dict[str, dict]:
    """Per run folder: its run.json status, whether it has resumable state, its metrics bytes."""
    snap = {}
    for d in sorted(p for p in out.iterdir() if (p / "run.json").is_file()):
        info = json.loads((d / "run.json").read_text())
        metrics = d / "metrics.jsonl"
        snap[d.name] = {
            "status": info["status"],
            "state": has_resume_state(d),
            "metrics": metrics.read_bytes() if metrics.is_file() else b"",
            "mtime": metrics.stat().st_mtime_ns if metrics.is_file() else None,
        }
    return snap


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # zombies are dead
    except OSError:
        return False


def _live_processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_killed_sweep_on_local_ray_restarts_only_missing_runs(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _cmd(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the driver and Ray's daemons
        env=env,
    )
    deadline = time.time() + 240
    try:
        while True:
            m = _manifest(out)
            # Kill once one run has finished and the next one is part-way (it has a checkpoint).
            if m and m["counts"]["done"] >= 1:
                snap = _snapshot(out)
                if any(s["status"] == "running" and s["state"] for s in snap.values()):
                    break
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "no run finished in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the kill: no clean-up code runs
        proc.wait()
    # Ray's workers are in their own sessions: they notice the dead raylet and exit within a few
    # seconds (training on meanwhile). Wait for them, then take the state the restart will see.
    workers = {
        int(f.stem.rsplit("_", 1)[1])
        for f in out.glob("ray/session_*/logs/python-core-worker-*_*.log")
    }
    assert workers
    gone_by = time.time() + 60
    while any(_alive(pid) for pid in workers):
        assert time.time() < gone_by, "Ray workers outlived the killed sweep"
        time.sleep(0.2)
    killed_manifest = _manifest(out)
    at_kill = _snapshot(out)
    complete = [n for n, s in at_kill.items() if s["status"] == "complete"]
    partial = [n for n, s in at_kill.items() if s["status"] != "complete" and s["state"]]
    all_runs = [r["name"] for c in killed_manifest["cells"] for r in c["runs"]]
    # Workers train on for a moment after the kill, so the part-way run may have finished by now;
    # the deterministic mid-run resume is covered by tests/test_sweep.py.
    assert len(all_runs) == 4 and 1 <= len(complete) < 4 and len(partial) <= 1
    for session in (out / "ray").glob("session_2*"):  # Ray's daemons died with the sweep
        assert not _live_processes_mentioning(session.name)

    restart = subprocess.run(_cmd(out), capture_output=True, env=env, timeout=400)
    stdout, stderr = restart.stdout.decode(), restart.stderr.decode()
    assert restart.returncode == 0, stderr[-3000:]
    missing = [n for n in all_runs if n not in complete]
    assert (
        f"ran {len(missing)} run(s) ({len(partial)} resumed), skipped {len(complete)} finished"
        in (" ".join(stdout.split()))
    )
    # Ray's start-up notices and the workers' output stay off the terminal, in OUT/ray/.
    assert "ray" not in stderr.lower(), stderr[-2000:]
    assert list((out / "ray").glob("session_*/logs/raylet.out"))

    m = _manifest(out)
    assert m["counts"] == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    runs = {r["name"]: r for c in m["cells"] for r in c["runs"]}
    after = _snapshot(out)
    for name in complete:  # untouched: same bytes, same modification time, trained once
        assert after[name]["metrics"] == at_kill[name]["metrics"]
        assert after[name]["mtime"] == at_kill[name]["mtime"]
        assert runs[name]["attempts"] == 1
    for name in missing:
        assert runs[name]["attempts"] == 2 if name in at_kill else runs[name]["attempts"] >= 1
        assert after[name]["status"] == "complete" and runs[name]["phase"] is not None
    for name in partial:  # continued from its checkpoint, no duplicated or lost steps
        assert runs[name]["resumed"] is True
        steps = [json.loads(line)["step"] for line in after[name]["metrics"].splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 1000
    for session in (out / "ray").glob("session_2*"):
        assert not _live_processes_mentioning(session.name)
