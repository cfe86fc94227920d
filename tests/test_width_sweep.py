"""Model-wise grokking (Davies et al. 2023): the width grid file, and the phase plot over width."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from grokinterp.config import GrokinterpError, apply_overrides, load_preset
from grokinterp.experiments.grid import (
    expand_grid,
    grid_file_names,
    load_grid_file,
    parse_grid,
    parse_seeds,
)
from grokinterp.report.figures.sweep import phase_diagram_figure
from grokinterp.report.sweep import render_sweep_report

WIDTHS = [8, 16, 32, 64, 128, 256, 512]


def test_shipped_width_grid_expands_to_validated_runs():
    assert "width-demo" in grid_file_names()
    g = load_grid_file("width-demo")
    assert g.preset == "demo" and g.seeds == "0-2"
    assert parse_grid(g.grid[0]).values == tuple(WIDTHS)
    base = apply_overrides(load_preset(g.preset), list(g.overrides))
    cells = expand_grid(base, g.grid, parse_seeds(g.seeds))
    assert [c.values["model.d_mlp"] for c in cells] == WIDTHS
    assert all(len(c.runs) == 3 for c in cells)
    run = cells[3].runs[2]
    assert run.name == "d_mlp=64__seed=2"
    assert run.config.model.d_mlp == 64 and run.config.train.seed == 2
    assert run.config.train.early_stop_acc is None  # the whole budget at every width
    assert run.config.model.d_model == load_preset("demo").model.d_model  # only the width moves


def test_grid_file_errors_name_the_file(tmp_path):
    with pytest.raises(GrokinterpError, match="not found; shipped: .*width-demo"):
        load_grid_file("no-such-grid")
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "demo"\n')
    with pytest.raises(GrokinterpError, match=r"bad.toml: needs a \[grid\]"):
        load_grid_file(bad)
    bad.write_text('preset = "demo"\ncolor = 1\n[grid]\n"model.d_mlp" = [8]\n')
    with pytest.raises(GrokinterpError, match="unknown key"):
        load_grid_file(bad)
    bad.write_text('[grid]\n"model.d_mlp" = [8]\n')
    with pytest.raises(GrokinterpError, match="exactly one of preset or config"):
        load_grid_file(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('preset = "demo"\nseeds = [0, 3]\n[grid]\n"model.act_fn" = ["relu", "gelu"]\n')
    g = load_grid_file(ok)
    assert parse_grid(g.grid[0]).values == ("relu", "gelu") and g.seeds == "0,3"


def test_cli_grid_file_error_is_one_line(tmp_path):
    from grokinterp.cli import app

    res = CliRunner().invoke(app, ["sweep", "--grid-file", "nope", "-o", str(tmp_path / "s")])
    assert res.exit_code != 0 and "grid file 'nope' not found" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "s").exists()


# Known answer: a synthetic model-wise sweep. Small widths cannot fit the training set
# (confusion), then memorise, then grok, and the widest generalise with the fit (comprehension).
PHASE_OF = {
    8: "confusion",
    16: "memorization",
    32: "memorization",
    64: "grokking",
    128: "grokking",
    256: "comprehension",
    512: "comprehension",
}


def width_cells(fractions=(None,)):
    cells = []
    order = [512, 8, 64, 16, 128, 32, 256]  # not in numeric order, nor in label order
    for frac in fractions:
        for w in order:
            values = {"model.d_mlp": w} | ({"task.train_fraction": frac} if frac else {})
            phase = PHASE_OF[w] if frac != 0.3 else "memorization"
            cells.append(
                {
                    "index": len(cells),
                    "name": f"d_mlp={w}",
                    "values": values,
                    "labels": {k: str(v) for k, v in values.items()},
                    "status": "done",
                    "runs": [
                        {"name": f"d_mlp={w}__seed={s}", "status": "done", "phase": phase}
                        for s in range(3)
                    ],
                }
            )
    return cells


def test_phase_plot_uses_width_as_its_axis():
    fig = phase_diagram_figure(width_cells(), "model.d_mlp")
    heat = fig.data[0]
    assert list(heat.x) == [str(w) for w in WIDTHS]  # numeric order: 8 < 16 < ... < 512
    phases = ["comprehension", "grokking", "memorization", "confusion"]
    assert [phases[int(c)] for c in heat.z[0]] == [PHASE_OF[w] for w in WIDTHS]
    assert heat.text[0][3] == "grok 3/3" and fig.layout.xaxis.title.text == "model.d_mlp"
    # two axes: width × data fraction
    fig2 = phase_diagram_figure(width_cells((0.3, 0.5)), "model.d_mlp", "task.train_fraction")
    h2 = fig2.data[0]
    assert list(h2.y) == ["0.3", "0.5"] and list(h2.x) == [str(w) for w in WIDTHS]
    assert {phases[int(c)] for c in h2.z[0]} == {"memorization"}
    assert [phases[int(c)] for c in h2.z[1]] == [PHASE_OF[w] for w in WIDTHS]


def test_sweep_report_over_width(tmp_path):
    cells = width_cells()
    manifest = {
        "format": "grokinterp-sweep",
        "version": 2,
        "spec": {
            "preset": "demo",
            "grid": [{"key": "model.d_mlp", "values": WIDTHS, "labels": list(map(str, WIDTHS))}],
            "seeds": [0, 1, 2],
            "threshold": 0.9,
            "ratio": 3.0,
        },
        "counts": {"done": 21},
        "cells": cells,
    }
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    page = render_sweep_report(tmp_path).read_text()
    assert "Phase diagram" in page and "model.d_mlp" in page
    assert page.count("Plotly.newPlot") >= 2  # phase plot over width, delay heatmap
