"""Fast start (issue 16, item 3): the commands that need no model never import TransformerLens.

Importing TransformerLens pulls in transformers, datasets and pandas (seconds, even on a fast
machine), so ``grokinterp --help``, ``ls``, ``report`` of an analysed run and the sweep's
bookkeeping must not import it; ``--help`` and ``ls`` not even torch. Each command runs in a fresh
interpreter (``python -c``) that then reports which heavy modules it holds: these tests check the
import structure, not the time (times: ``benchmarks/bench_startup.py``, RESULTS.md "Start-up").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny

HEAVY = ("torch", "transformer_lens", "transformers", "datasets", "pandas")

# Runs the grokinterp command line (argv after the output file), then writes its exit code and
# which HEAVY modules are loaded, as JSON, to the output file.
CLI_PROBE = """
import json, sys
out, sys.argv = sys.argv[1], ["grokinterp", *sys.argv[2:]]
from grokinterp.cli import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}, f)
""".replace("HEAVY", repr(HEAVY))


def _probe(code: str, args: list[str], cwd: Path) -> tuple[dict, str]:
    """Run ``python -c code OUT *args`` in ``cwd``: (the JSON it wrote to OUT, its output)."""
    out = cwd / f"probe{len(list(cwd.glob('probe*.json')))}.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.is_file(), text
    return json.loads(out.read_text()), text


def _cli(args: list[str], cwd: Path) -> set[str]:
    """The heavy modules ``grokinterp *args`` (run in ``cwd``) imported."""
    res, text = _probe(CLI_PROBE, args, cwd)
    assert res["code"] == 0, text
    return set(res["loaded"])


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """A folder ``runs/`` holding one tiny run with every analysis that applies cached."""
    from grokinterp.analysis import applicable, over_training
    from grokinterp.training import train

    root = tmp_path_factory.mktemp("fast_start")
    run = train(tiny(["train.steps=20"]), root / "runs" / "tiny", progress=False)
    names = [n for n, reason in applicable(run).items() if reason is None]
    assert len(names) >= 4
    over_training(run, names, progress=False, device="cpu")
    return root


def test_help_and_ls_import_neither_torch_nor_transformer_lens(analysed):
    for args in (["--help"], ["train", "--help"], ["report", "--help"], ["ls", "runs"]):
        loaded = _cli(args, analysed)
        assert not loaded, f"grokinterp {' '.join(args)} imported {sorted(loaded)}"


def test_report_from_the_cache_does_not_import_transformer_lens(analysed):
    caches = sorted((analysed / "runs" / "tiny" / "analysis").glob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in caches}
    loaded = _cli(["report", "runs/tiny", "--light"], analysed)
    assert not loaded & {"transformer_lens", "transformers", "datasets", "pandas"}, loaded
    assert (analysed / "runs" / "tiny" / "report.html").is_file()
    summary = json.loads((analysed / "runs" / "tiny" / "summary.json").read_text())
    assert summary["runs"][0]["run"] == "tiny"
    # read from the cache: nothing was recomputed or rewritten
    assert {p: p.stat().st_mtime_ns for p in caches} == before


def test_sweep_bookkeeping_does_not_import_transformer_lens(tmp_path):
    """Continuing a finished sweep (every run skipped: labels, manifest, report) and reporting it
    happen in the driver, which must not wait for TransformerLens; only the runs train."""
    from grokinterp.experiments.sweep import run_sweep

    out = tmp_path / "sweep"
    base = tiny(["train.steps=10", "train.checkpoint_every=10"])
    run_sweep(base, ["train.weight_decay=0.5,1"], out, use_ray=False, progress=False, report=False)
    code = """
import json, sys
from grokinterp.experiments.sweep import run_sweep
res = run_sweep(None, None, sys.argv[2], use_ray=False, progress=False, report=True)
assert len(res.skipped) == 2 and not res.executed, (res.skipped, res.executed)
with open(sys.argv[1], "w") as f:
    json.dump({"code": 0, "loaded": [m for m in HEAVY if m in sys.modules]}, f)
""".replace("HEAVY", repr(HEAVY))
    res, text = _probe(code, [str(out)], tmp_path)
    assert "transformer_lens" not in res["loaded"], text
    assert (out / "report.html").is_file()


def test_every_analysis_module_is_loaded_by_the_registry():
    """The analysis modules are imported on the registry's first read
    (:func:`grokinterp.analysis.load_analyses`): a module missing from that list would register
    only when something happened to import it, and one importing ``grokinterp.models`` at its top
    would make every report wait for TransformerLens."""
    import grokinterp.analysis as analysis
    from grokinterp.analysis.registry import ANALYSES

    loaded = set(analysis.load_analyses.__code__.co_names)
    for path in sorted(Path(analysis.__file__).parent.glob("*.py")):
        source = path.read_text()
        if re.search(r"^@register_analysis\(", source, re.MULTILINE):
            assert path.stem in loaded, f"add {path.stem} to grokinterp.analysis.load_analyses()"
        tops = [line for line in source.splitlines() if line.startswith(("from ", "import "))]
        heavy = [line for line in tops if "grokinterp.models" in line or "transformer_lens" in line]
        assert not heavy, f"{path.name}: import grokinterp.models inside the functions ({heavy})"
    assert {"fourier", "complexity", "norms", "rank", "tickets", "transfer"} <= set(ANALYSES)


def test_complexity_knows_every_model_activation():
    """complexity.ACTIVATION_TYPES lists torch's activation classes without importing
    grokinterp.models (TransformerLens); it must still cover every activation the models build."""
    from grokinterp.analysis.complexity import ACTIVATION_TYPES
    from grokinterp.models import ACTIVATION_TYPES as MODEL_ACTIVATIONS

    assert set(MODEL_ACTIVATIONS) <= set(ACTIVATION_TYPES)
