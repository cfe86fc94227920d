"""No file the package reads can run code (issue 15.1): a malicious pickle planted in place of
every file a command reads — run.json, metrics.jsonl, a checkpoint, the resume state, an analysis
cache, a ticket mask, an imported model — never runs without ``--trust-pickle``; the command either
fails with a one-line error (exit 2) or, for a cache, recomputes it."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from typer.testing import CliRunner

from grokinterp.cli import app
from grokinterp.training import train

from .conftest import tiny


class _Boom:
    """Unpickling this writes a marker file: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nocode") / "r"
    run = train(tiny(["train.steps=20"]), out, progress=False)
    result = CliRunner().invoke(app, ["analyze", str(out), "--only", "fourier,tickets", "-q"])
    assert result.exit_code == 0, result.output
    return run


def _invoke(args):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


# (file to replace, relative to the run; command run on the planted run, "{run}" substituted)
CASES = [
    ("run.json", ["report", "{run}", "--no-recompute"]),
    ("run.json", ["ls", "{run}"]),
    ("metrics.jsonl", ["report", "{run}", "--no-recompute"]),
    ("steps/00000020.safetensors", ["analyze", "{run}", "--only", "fourier", "--force", "-q"]),
    (
        "state/latest.safetensors",
        ["train", "--config", "{run}/run.json", "--out", "{run}", "--resume"],
    ),
    ("state/latest.json", ["train", "--config", "{run}/run.json", "--out", "{run}", "--resume"]),
    ("state/latest.pt", ["train", "--config", "{run}/run.json", "--out", "{run}", "--resume"]),
    ("analysis/fourier.safetensors", ["analyze", "{run}", "--only", "fourier", "-q"]),
    ("analysis/tickets.safetensors", ["report", "{run}"]),
]


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
@pytest.mark.parametrize("rel, command", CASES, ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_planted_pickle_never_runs(tmp_path, analysed_run, rel, command, writer):
    run = shutil.copytree(analysed_run.path, tmp_path / "r")
    marker = tmp_path / "marker"
    target = run / rel
    if rel.endswith("latest.pt"):  # an old run: the legacy pickle only
        for f in ("latest.json", "latest.safetensors"):
            (run / "state" / f).unlink()
    if writer == "pickle":
        target.write_bytes(pickle.dumps({"x": _Boom(marker)}))
    else:
        torch.save({"x": _Boom(marker)}, target)
    result = _invoke([a.replace("{run}", str(run)) for a in command])
    assert not marker.exists(), f"{rel}: the planted code ran"
    assert "Traceback" not in result.output
    if rel.startswith("analysis/"):  # a corrupt cache is recomputed (or reported), never fatal
        assert result.exit_code == 0, result.output
    elif command[0] == "ls":  # ls lists the run as unreadable instead of failing
        assert result.exit_code == 0 and "unreadable" in result.output, result.output
    else:
        assert result.exit_code == 2, result.output


@pytest.mark.parametrize("kind", ["progress-measures", "tl-demo"])
def test_planted_pickle_in_an_imported_file_needs_trust(tmp_path, kind):
    marker = tmp_path / "marker"
    planted = tmp_path / "model.pth"
    torch.save({"model": _Boom(marker)}, planted)
    result = _invoke(["import", kind, str(planted), "--out", str(tmp_path / "imp")])
    assert result.exit_code == 2 and "--trust-pickle" in result.output, result.output
    assert not marker.exists()
