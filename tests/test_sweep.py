"""Sweeps without Ray (the in-process executor): grid expansion, manifest, failures, resume,
report and figures. The Ray path (kill and restart on local Ray) is in test_sweep_ray.py."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import grokinterp.training as training_pkg
from grokinterp.cli import app
from grokinterp.config import GrokinterpError
from grokinterp.experiments.sweep import (
    GridAxis,
    expand_grid,
    parse_grid,
    parse_seeds,
    run_sweep,
)
from grokinterp.report.figures.sweep import (
    PHASE_COLORS,
    delay_heatmap_figure,
    phase_diagram_figure,
    phase_table_figure,
    sweep_curves_figure,
    sweep_table_rows,
)
from grokinterp.report.sweep import read_manifest, render_sweep_report
from grokinterp.store import Run

GRID = ["train.weight_decay=0.3,1", "task.train_fraction=0.3,0.5"]


# ----------------------------------------------------------------------------- parsing


def test_parse_grid_values_labels_and_brackets():
    a = parse_grid("train.weight_decay=0.1,0.3,1")
    assert a == GridAxis("train.weight_decay", (0.1, 0.3, 1), ("0.1", "0.3", "1"))
    b = parse_grid("train.betas=[0.9,0.98], [0.9,0.99]")
    assert b.values == ([0.9, 0.98], [0.9, 0.99]) and b.labels == ("[0.9,0.98]", "[0.9,0.99]")
    assert parse_grid("model.act_fn=relu,gelu").values == ("relu", "gelu")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("train.weight_decay", "section.key=v1"),
        ("weight_decay=1,2", "section.key"),
        ("train.lr=", "empty value"),
        ("train.lr=1,,2", "empty value"),
        ("train.lr=1,1", "repeats"),
    ],
)
def test_parse_grid_errors(spec, match):
    with pytest.raises(GrokinterpError, match=match):
        parse_grid(spec)


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,7") == [0, 2, 7]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds(None) is None and parse_seeds([3, 1]) == [3, 1]
    for bad in ("4-1", "a", "1,1", "-1"):
        with pytest.raises(GrokinterpError, match="seeds"):
            parse_seeds(bad)


def test_expand_grid_cells_names_and_configs(tiny_config):
    cells = expand_grid(
        tiny_config, [parse_grid("train.weight_decay=0.1,1"), parse_grid("task.p=7,11,13")]
    )
    assert len(cells) == 6  # first axis slowest
    assert [c.labels["task.p"] for c in cells] == ["7", "11", "13"] * 2
    c = cells[4]
    assert c.name == "weight_decay=1__p=11" and c.overrides == ["train.weight_decay=1", "task.p=11"]
    assert c.runs[0].config.train.weight_decay == 1 and c.runs[0].config.task.params["p"] == 11
    assert c.runs[0].seed is None and c.runs[0].config.train.seed == tiny_config.train.seed
    # seeds: one run per seed, train.seed only (the data split stays the preset's task.seed)
    cells = expand_grid(tiny_config, [parse_grid("train.lr=1e-3")], parse_seeds("3-4"))
    runs = cells[0].runs
    assert [r.name for r in runs] == ["lr=1e-3__seed=3", "lr=1e-3__seed=4"]
    assert [r.config.train.seed for r in runs] == [3, 4]
    assert {r.config.task.params["seed"] for r in runs} == {tiny_config.task.params["seed"]}
    # equal short names fall back to the full key
    cells = expand_grid(tiny_config, [parse_grid("task.seed=0,1"), parse_grid("train.seed=5")])
    assert cells[1].name == "task.seed=1__train.seed=5"


def test_expand_grid_errors(tiny_config):
    with pytest.raises(GrokinterpError, match="cell weight_decay=-1"):
        expand_grid(tiny_config, [parse_grid("train.weight_decay=1,-1")])
    with pytest.raises(GrokinterpError, match="unknown key"):
        expand_grid(tiny_config, [parse_grid("train.nope=1")])
    with pytest.raises(GrokinterpError, match="either with --seeds"):
        expand_grid(tiny_config, [parse_grid("train.seed=1,2")], [0, 1])
    with pytest.raises(GrokinterpError, match="twice"):
        expand_grid(tiny_config, [parse_grid("train.lr=1"), parse_grid("train.lr=2")])


# ----------------------------------------------------------------------------- serial sweeps


def _run(base, out, **kw):
    return run_sweep(base, kw.pop("grid", GRID), out, progress=False, use_ray=False, **kw)


def test_failing_run_fails_its_cell_not_the_sweep_and_is_retried(
    tmp_path, tiny_config, monkeypatch
):
    real_train = training_pkg.train

    def flaky(cfg, out, **kw):
        if cfg.train.weight_decay == 1 and cfg.task.params["train_fraction"] == 0.3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(cfg, out, **kw)

    monkeypatch.setattr(training_pkg, "train", flaky)
    res = _run(tiny_config, tmp_path / "s", report=False)
    assert res.failed == ["weight_decay=1__train_fraction=0.3"]
    m = read_manifest(tmp_path / "s")
    assert m["counts"] == {"pending": 0, "running": 0, "done": 3, "failed": 1}
    bad = m["cells"][2]
    assert bad["status"] == "failed" and bad["phase"] is None
    assert bad["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "Traceback" in bad["runs"][0]["traceback"]
    assert bad["overrides"] == ["train.weight_decay=1", "task.train_fraction=0.3"]
    for cell in (m["cells"][0], m["cells"][1], m["cells"][3]):
        assert cell["status"] == "done" and cell["phase"] in ("confusion", "memorization")
        run = cell["runs"][0]
        assert run["fit_step"] is None or run["fit_step"] > 0
        assert {"generalize_step", "delay", "ratio"} <= set(run) and "t_train" not in run
    # Restart without the failure: only the failed run is trained again.
    monkeypatch.setattr(training_pkg, "train", real_train)
    res = _run(tiny_config, tmp_path / "s", report=False)
    assert res.executed == ["weight_decay=1__train_fraction=0.3"] and not res.failed
    assert len(res.skipped) == 3
    m = read_manifest(tmp_path / "s")
    assert m["counts"]["done"] == 4 and m["cells"][2]["runs"][0]["attempts"] == 2
    assert m["cells"][2]["error"] is None and "traceback" not in m["cells"][2]["runs"][0]
    # A version-1 manifest (t_train / t_test, delay = their ratio) continues and is rewritten.
    old = json.loads((tmp_path / "s" / "sweep.json").read_text())
    old["version"] = 1
    for cell in old["cells"]:
        for r in cell["runs"]:
            r["t_train"], r["t_test"] = r.pop("fit_step"), r.pop("generalize_step")
            r["delay"] = r.pop("ratio")
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(old))
    res = _run(tiny_config, tmp_path / "s", report=False)
    assert not res.executed and len(res.skipped) == 4
    again = read_manifest(tmp_path / "s")
    keys = ("status", "phase", "fit_step", "generalize_step", "delay", "ratio", "final_test_acc")

    def times(manifest):
        return [
            [c["phase"], c["median_ratio"], c["median_fit_step"]]
            + [{k: r.get(k) for k in keys} for r in c["runs"]]
            for c in manifest["cells"]
        ]

    assert again["version"] == 2 and times(again) == times(m)


def test_killed_sweep_restarts_where_it_stopped(tmp_path, tiny_config):
    out = tmp_path / "s"
    done_at_kill = []

    def kill_after_first(kind, rec):
        if kind == "done":
            done_at_kill.append(rec["name"])
            raise KeyboardInterrupt  # what a kill looks like to the driver

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_config, out, on_event=kill_after_first, report=False)
    m = read_manifest(out)
    assert m["counts"] == {"pending": 3, "running": 0, "done": 1, "failed": 0}
    first = out / done_at_kill[0]
    first_metrics = (first / "metrics.jsonl").read_bytes()
    first_mtime = (first / "metrics.jsonl").stat().st_mtime_ns
    # A second run killed mid-training: 20 of its 30 steps done, status still "running".
    partial = m["cells"][1]["runs"][0]["name"]
    cfg = expand_grid(tiny_config, [parse_grid(g) for g in GRID])[1].runs[0].config
    cfg.train.steps = 20
    training_pkg.train(cfg, out / partial, progress=False).update_info(status="running")

    res = _run(tiny_config, out, report=False)
    all_runs = [r["name"] for c in m["cells"] for r in c["runs"]]
    assert res.skipped == done_at_kill
    assert res.executed == [n for n in all_runs if n not in done_at_kill]
    assert res.resumed == [partial]
    assert (first / "metrics.jsonl").read_bytes() == first_metrics
    assert (first / "metrics.jsonl").stat().st_mtime_ns == first_mtime
    run = Run.open(out / partial)
    steps = [r["step"] for r in run.metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 30 and run.info["status"] == "complete"
    m = read_manifest(out)
    assert m["counts"]["done"] == 4
    assert [r["resumed"] for c in m["cells"] for r in c["runs"] if r["name"] == partial] == [True]
    # Continue-from-manifest with no config: nothing left to do.
    res = run_sweep(None, None, out, progress=False, use_ray=False, report=False)
    assert res.executed == [] and len(res.skipped) == 4


def test_restart_refuses_a_different_sweep_and_foreign_folders(tmp_path, tiny_config):
    out = tmp_path / "s"
    _run(tiny_config, out, grid=["train.weight_decay=0.3"], report=False)
    with pytest.raises(GrokinterpError, match="differs in the grid"):
        _run(tiny_config, out, grid=["train.weight_decay=0.3,1"])
    other = tiny_config.copy()
    other.train.lr = 0.5
    with pytest.raises(GrokinterpError, match="differs in train.lr"):
        _run(other, out, grid=["train.weight_decay=0.3"])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(GrokinterpError, match="not a sweep folder"):
        _run(tiny_config, tmp_path / "junk")
    with pytest.raises(GrokinterpError, match="no sweep.json"):
        run_sweep(None, None, tmp_path / "nothing", use_ray=False)
    # a live sweep on the same folder (here: our parent process's pid) is refused
    import os
    import socket

    (out / ".sweep.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getppid()})
    )
    with pytest.raises(GrokinterpError, match="another sweep"):
        _run(tiny_config, out, grid=["train.weight_decay=0.3"])


def test_cli_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--preset",
            "demo",
            "--grid",
            "train.weight_decay=0.1,1",
            "-o",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 2
    assert "pip install 'grokinterp[sweep]'" in result.output
    assert not (tmp_path / "s").exists()  # nothing written before the check


# ----------------------------------------------------------------------------- report, figures


def _cells():
    """A 2×2 grid with known phases; cell (wd=1, f=0.5) has 2 seeds, one failed cell."""

    def run(phase, ratio=None, status="done", error=None):
        gen = None if ratio is None else int(100 * ratio)
        delay = None if gen is None else gen - 100
        times = {"fit_step": 100, "generalize_step": gen, "delay": delay, "ratio": ratio}
        return {"phase": phase, "status": status, "error": error, **times}

    mk = lambda wd, f, runs, status="done": {  # noqa: E731
        "values": {"train.weight_decay": wd, "task.train_fraction": f},
        "labels": {"train.weight_decay": str(wd), "task.train_fraction": str(f)},
        "runs": runs,
        "status": status,
    }
    return [
        mk(0.1, 0.3, [run("memorization")]),
        mk(0.1, 0.5, [run(None, status="failed", error="boom")], "failed"),
        mk(1, 0.3, [run("grokking", 10.0)]),
        mk(1, 0.5, [run("comprehension", 2.0), run("grokking", 8.0)]),
    ]


def test_phase_diagram_places_each_phase_in_its_square():
    fig = phase_diagram_figure(_cells(), "train.weight_decay", "task.train_fraction")
    hm = fig.data[0]
    assert list(hm.x) == ["0.1", "1"] and list(hm.y) == ["0.3", "0.5"]
    z = np.asarray(hm.z, dtype=float)
    # rows = train_fraction, columns = weight_decay; codes = index in PHASES, 4 = failed
    assert z[0, 0] == 2 and z[0, 1] == 1 and z[1, 0] == 4 and z[1, 1] == 0  # tie → comprehension
    assert hm.text[1][1] == "compr. 1/2" and hm.text[1][0] == "failed"
    assert len(hm.colorbar.ticktext) == len(PHASE_COLORS)
    # pooling over an axis that is not plotted: one column per weight decay
    fig = phase_diagram_figure(_cells(), "train.weight_decay")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (1, 2) and z[0, 0] == 2 and z[0, 1] == 1  # 2 grokking of 3 at wd=1
    fig = phase_diagram_figure(_cells(), "train.weight_decay", where={"task.train_fraction": 0.3})
    assert np.asarray(fig.data[0].z, dtype=float).tolist() == [[2.0, 1.0]]
    with pytest.raises(GrokinterpError, match="not a grid key"):
        phase_diagram_figure(_cells(), "train.lr")
    with pytest.raises(GrokinterpError, match="selects no cell"):
        phase_diagram_figure(_cells(), "train.weight_decay", where={"task.train_fraction": 0.9})


def test_delay_heatmap_table_and_curves():
    fig = delay_heatmap_figure(_cells(), "train.weight_decay", "task.train_fraction")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 0]) and np.isnan(z[1, 0])  # memorization, failed: no delay
    assert z[0, 1] == pytest.approx(1.0) and z[1, 1] == pytest.approx(np.log10(5.0))  # median(2,8)
    header, rows = sweep_table_rows(_cells())
    assert header[:2] == ["train.weight_decay", "task.train_fraction"]
    assert rows[3][2:5] == ["2/2", "done", "comprehension"]
    assert header[9:12] == ["fit step", "generalize step", "ratio"]
    assert rows[3][9:12] == ["100", "500", "5"]  # medians of (200, 800) and (2, 8)
    assert rows[1][2] == "0/1" and rows[1][-1] == "boom"
    # a version-1 manifest's runs (t_train, t_test, delay = the ratio) draw the same
    legacy = [
        {
            **c,
            "runs": [
                {
                    **{k: r[k] for k in ("phase", "status", "error")},
                    **{"t_train": r["fit_step"], "t_test": r["generalize_step"]},
                    "delay": r["ratio"],
                }
                for r in c["runs"]
            ],
        }
        for c in _cells()
    ]
    old = delay_heatmap_figure(legacy, "train.weight_decay", "task.train_fraction")
    np.testing.assert_array_equal(np.asarray(old.data[0].z, dtype=float), z)
    assert sweep_table_rows(legacy) == (header, rows)
    assert len(phase_table_figure(_cells()).data[0].cells.values) == len(header)
    fig = sweep_curves_figure(
        {"a": [{"step": [0, 1], "train_acc": [0, 1], "test_acc": [0, 0.5]}]}, threshold=0.9
    )
    assert len(fig.data) == 2
    with pytest.raises(GrokinterpError, match="non-empty"):
        sweep_curves_figure({})


def test_sweep_report_is_one_self_contained_page(tmp_path, tiny_config):
    res = _run(tiny_config, tmp_path / "s", grid=["train.weight_decay=0.3,1"], seeds="0-1")
    assert res.report == tmp_path / "s" / "report.html"
    page = res.report.read_text()
    assert "<script src" not in page and "* plotly.js v" in page  # plotly.js is embedded
    assert page.count("Plotly.newPlot") >= 3  # phase diagram, delay, curves
    assert "<table>" in page and page.count("<tr>") == 3  # header + 2 cells
    assert res.cells[0]["runs"][1]["name"] == "weight_decay=0.3__seed=1"
    out = render_sweep_report(tmp_path / "s", tmp_path / "elsewhere.html")
    assert out.is_file()
    with pytest.raises(GrokinterpError, match="not a sweep folder"):
        render_sweep_report(tmp_path, tmp_path / "x.html")


def test_report_facets_over_the_axes_not_plotted(tmp_path):
    """A hand-written 3-axis manifest: x, y chosen by the caller, one diagram per other value."""
    grid = {"train.lr": [1, 2], "train.weight_decay": [0.1, 1, 3], "task.p": [7, 11]}
    cells = []
    for i, (lr, wd, p) in enumerate(
        (a, b, c)
        for a in grid["train.lr"]
        for b in grid["train.weight_decay"]
        for c in grid["task.p"]
    ):
        values = {"train.lr": lr, "train.weight_decay": wd, "task.p": p}
        cells.append(
            {
                "index": i,
                "name": f"c{i}",
                "values": values,
                "labels": {k: str(v) for k, v in values.items()},
                "status": "done",
                "runs": [{"name": f"c{i}", "status": "done", "phase": "grokking", "delay": 4.0}],
            }
        )
    manifest = {
        "format": "grokinterp-sweep",
        "version": 1,
        "spec": {
            "grid": [{"key": k, "values": v, "labels": list(map(str, v))} for k, v in grid.items()],
            "threshold": 0.9,
            "ratio": 3.0,
        },
        "counts": {"done": len(cells)},
        "cells": cells,
    }
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    page = render_sweep_report(tmp_path, axes=["train.weight_decay", "task.p"]).read_text()
    assert page.count("phase diagram (train.lr=") == 2  # one per learning rate
    assert page.count("Plotly.newPlot") == 4 and page.count("<tr>") == 1 + 12
    with pytest.raises(GrokinterpError, match="grid keys"):
        render_sweep_report(tmp_path, axes=["train.steps"])
