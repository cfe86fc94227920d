import json

import pytest
from typer.testing import CliRunner

from grokinterp.cli import app

runner = CliRunner()
TINY = [
    "--set",
    "task.p=11",
    "--set",
    "model.d_model=16",
    "--set",
    "model.d_mlp=32",
    "--set",
    "model.d_head=8",
    "--set",
    "model.n_heads=2",
    "--set",
    "train.steps=12",
    "--set",
    "train.checkpoint_every=5",
]


def _invoke(args):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_help_explains_each_command():
    code, out = _invoke(["--help"])
    assert code == 0
    for cmd in ("train", "ls", "run", "analyze"):
        assert cmd in out


def test_train_then_ls(tmp_path):
    code, out = _invoke(["train", "--preset", "demo", *TINY, "--out", str(tmp_path / "r"), "-q"])
    assert code == 0, out
    code, out = _invoke(["ls", str(tmp_path)])
    assert code == 0 and "mod_add" in out and "r" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'; available: "),
        (["train", "--preset", "demo", "--set", "train.lr=-3"], "train.lr must be > 0"),
        (
            ["train", "--preset", "demo", "--set", "task.name=mod_pow", "--out", "/tmp/never"],
            "unknown task 'mod_pow'",
        ),
        (["train", "--preset", "demo", "--set", "model.name=cnn"], "model.name='cnn' is not valid"),
        (["train"], "exactly one of --preset"),
        (["train", "--config", "/nonexistent.toml"], "config file not found"),
        (["ls", "/nonexistent"], "does not exist"),
        (["analyze", "/nonexistent"], "not a grokinterp run"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, match):
    code, out = _invoke(args)
    assert code == 2, out
    assert match in " ".join(out.split())
    assert "Traceback" not in out


def test_existing_run_is_protected_and_corrupt_checkpoint_named(tmp_path):
    out_dir = tmp_path / "r"
    assert _invoke(["train", "--preset", "demo", *TINY, "--out", str(out_dir), "-q"])[0] == 0
    code, out = _invoke(
        ["train", "--preset", "demo", *TINY, "--set", "train.lr=0.01", "--out", str(out_dir), "-q"]
    )
    assert code == 2 and "already holds a run" in out
    info = json.loads((out_dir / "run.json").read_text())
    info["format_version"] = 99
    (out_dir / "run.json").write_text(json.dumps(info))
    code, out = _invoke(["ls", str(out_dir)])
    assert "newer grokinterp" in " ".join(out.split())


def test_debug_shows_traceback():
    result = runner.invoke(app, ["--debug", "train", "--preset", "nope"])
    assert result.exit_code != 0 and result.exception is not None


def test_nanda2023_smoke(tmp_path):
    """The paper preset runs (200 steps; the full run is for the GPU)."""
    code, out = _invoke(
        [
            "train",
            "--preset",
            "nanda2023",
            "--set",
            "train.steps=200",
            "--set",
            "train.eval_every=100",
            "--set",
            "train.device=cpu",
            "--out",
            str(tmp_path / "n"),
            "-q",
        ]
    )
    assert code == 0, out
    rows = [
        json.loads(line) for line in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["step"] == 200 and rows[-1]["train_loss"] < rows[0]["train_loss"]
