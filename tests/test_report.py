"""The HTML report: header, summary card, sections, comparison, offline, corrupt caches, CLI."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import grokinterp.analysis as analysis
from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.analysis.registry import cache_path
from grokinterp.cli import app
from grokinterp.config import GrokinterpError, apply_overrides
from grokinterp.report import sections as S
from grokinterp.report.figures import training as tf
from grokinterp.report.html import build_report, plotly_cdn_url, summary_path_for
from grokinterp.report.sections import dynamics as SD
from grokinterp.report.sections import tickets as ST
from grokinterp.report.sections import training as STR
from grokinterp.report.summary import report_summary, run_summary
from grokinterp.store import Run
from grokinterp.training import train

# Light parameters so that every analysis runs in well under a second on the tiny run.
LIGHT = {"complexity": {"n_samples": 16, "n_directions": 4}, "rank": {"n_samples": 64}}


def _analyze_all(run: Run) -> list[str]:
    names = [n for n, why in analysis.applicable(run).items() if why is None]
    analysis.over_training(run, {n: LIGHT.get(n, {}) for n in names}, progress=False)
    return names


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tiny runs with different step grids (eval/checkpoint every 5/10 vs 3/6 steps)."""
    from grokinterp.config import load_preset

    base = [
        "task.p=11",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_head=8",
        "model.d_mlp=32",
        "train.steps=30",
        "train.checkpoint_log_steps=4",
        "train.early_stop_acc=none",
    ]
    root = tmp_path_factory.mktemp("runs")
    a = train(
        apply_overrides(
            load_preset("demo"),
            [*base, "train.eval_every=5", "train.checkpoint_every=10", "name=alpha"],
        ),
        root / "alpha",
        progress=False,
    )
    b = train(
        apply_overrides(
            load_preset("demo"),
            [*base, "train.eval_every=3", "train.checkpoint_every=6", "train.seed=1", "name=beta"],
        ),
        root / "beta",
        progress=False,
    )
    return a, b


@pytest.fixture
def fresh_run(tiny_runs, tmp_path):
    """A private copy of run alpha (tests may write caches and reports into it)."""
    import shutil

    shutil.copytree(tiny_runs[0].path, tmp_path / "alpha")
    return Run.open(tmp_path / "alpha")


# ----------------------------------------------------------------------------- summary


def _metrics(train_acc, test_acc, steps):
    return [
        {"step": s, "train_acc": a, "test_acc": b, "weight_norm_l2": 1.0}
        for s, a, b in zip(steps, train_acc, test_acc, strict=True)
    ]


def test_summary_steps_and_delay_follow_the_threshold(fresh_run, monkeypatch):
    rows = _metrics(
        [0.1, 0.5, 0.995, 1.0, 1.0, 1.0],
        [0.0, 0.1, 0.2, 0.95, 0.991, 1.0],
        [0, 10, 20, 100, 400, 800],
    )
    monkeypatch.setattr(Run, "metrics", property(lambda self: rows))
    s = run_summary(fresh_run)
    assert s["threshold"] == DEFAULT_THRESHOLD == 0.95  # the one definition (analysis.curves)
    assert (s["fit_step"], s["generalize_step"], s["delay"], s["ratio"]) == (20, 100, 80, 5.0)
    times = grok_times(rows)
    assert (s["fit_step"], s["generalize_step"], s["delay"]) == (
        times.fit_step,
        times.generalize_step,
        times.delay,
    )
    s99 = run_summary(fresh_run, threshold=0.99)
    assert (s99["fit_step"], s99["generalize_step"], s99["delay"]) == (20, 400, 380)
    assert s["final_test_acc"] == 1.0 and s["last_step"] == 800
    assert not {"step_memorization", "step_generalization", "delay_ratio"} & set(s)
    for row in rows[-3:]:
        row["test_acc"] = 0.5  # never generalises
    assert run_summary(fresh_run)["generalize_step"] is None
    assert run_summary(fresh_run)["delay"] is None and run_summary(fresh_run)["ratio"] is None
    for bad in (0, 1.5, -0.1, "x"):
        with pytest.raises(GrokinterpError, match="threshold"):
            run_summary(fresh_run, threshold=bad)
    with pytest.raises(GrokinterpError, match="runs is empty"):
        report_summary([])


def test_reading_helpers_on_known_curves():
    steps = [0, 100, 200, 300, 400, 500, 600]
    acc = [0.0, 0.05, 0.08, 0.3, 0.7, 0.95, 1.0]
    assert STR.climb_window(steps, acc, 0.1, 0.9) == (200, 500)
    assert STR.climb_window(steps, acc, 0.1, 1.01) is None
    assert STR.climb_window(steps, [0.5, *acc[1:]], 0.01, 0.9) is None  # starts above lo
    assert S.fmt_step(12345) == "12\u2009345" and S.fmt_step(None) == "—"
    assert S.fmt_pct(0.95) == "95%" and S.fmt_pct(None) == "—"


def test_training_reading_names_the_steps_from_the_data():
    steps = [0, 10, 20, 50, 100, 400, 1400, 2100, 3000]
    rows = _metrics(
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.02, 0.05, 0.05, 0.06, 0.08, 0.995, 1.0],
        steps,
    )
    for m, w in zip(rows, [30, 31, 35, 36, 34, 30, 25, 20, 18], strict=True):
        m["weight_norm_l2"] = float(w)
    summary = {"threshold": 0.99, "fit_step": 20, "generalize_step": 2100}
    text = STR.training_reading(rows, summary)
    assert "step 20 " in text and "step 2\u2009100" in text and "105.0× later" in text
    assert "between steps 1\u2009400 and 2\u2009100" in text
    assert "weight norm falls by 50%" in text and "step 50" in text
    assert text.count(". ") + text.endswith(".") == 2  # two sentences
    text = STR.training_reading(rows, {"threshold": 0.99, "fit_step": 20})
    assert "stays below 99%" in text


# ----------------------------------------------------------------------------- figures


def test_training_figures_overlay_runs_on_a_log_axis():
    a = _metrics([0.1, 0.5, 1.0], [0.0, 0.2, 0.9], [0, 10, 100])
    b = _metrics([0.1, 1.0, 1.0, 1.0], [0.0, 0.1, 0.5, 1.0], [0, 3, 30, 300])
    fig = tf.accuracy_figure({"a": a, "b": b}, marks={"a": (10, None), "b": (3, 300)})
    assert fig.layout.xaxis.type == "log"
    xs = {tr.name: list(tr.x) for tr in fig.data}
    assert xs["a · train"] == [10, 100] and xs["b · test"] == [3, 30, 300]  # step 0 left out
    assert len(fig.layout.shapes) == 1 + 3  # threshold line + three marks
    # On a log axis shapes take data coordinates but annotations log10 ones.
    assert sorted(sh.x0 for sh in fig.layout.shapes if sh.xref == "x") == [3, 10, 300]
    assert sorted(a.x for a in fig.layout.annotations if a.text.startswith(("fit", "gen"))) == [
        pytest.approx(np.log10(3)),
        pytest.approx(1.0),
        pytest.approx(np.log10(300)),
    ]
    assert tf.loss_figure({"a": a}).layout.yaxis.type == "log"
    with pytest.raises(GrokinterpError, match="metrics_by_run"):
        tf.accuracy_figure({})


def test_checkpoint_slider_shows_the_chosen_step():
    values = np.arange(12.0).reshape(4, 3)
    fig = tf.checkpoint_slider_figure([0, 10, 20, 30], values, title="t")
    assert [tr.visible for tr in fig.data] == [False, False, False, True]
    assert list(fig.data[-1].y) == [9.0, 10.0, 11.0]
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "10", "20", "30"] and slider.active == 3
    assert slider.steps[1].args[0]["visible"] == [False, True, False, False]
    small = tf.checkpoint_slider_figure(list(range(100)), np.ones((100, 2)), max_frames=5)
    assert [s.label for s in small.layout.sliders[0].steps] == ["0", "25", "50", "74", "99"]
    with pytest.raises(GrokinterpError, match="values must be"):
        tf.checkpoint_slider_figure([0, 1], np.ones((3, 2)))


# ----------------------------------------------------------------------------- reports


def _statuses(result):
    return {s.key: s.status for s in result.sections}


def test_report_of_a_run_without_analyses_lists_the_commands(fresh_run):
    result = build_report(fresh_run)
    assert result.html_path == fresh_run.path / "report.html"
    assert result.summary_path == fresh_run.path / "summary.json"
    st = _statuses(result)
    assert st["training"] == "ok"
    page = result.html_path.read_text()
    for name, why in analysis.applicable(fresh_run).items():
        if name in st:
            assert st[name] == ("not computed" if why is None else "not applicable"), name
        if why is None:
            assert f"grokinterp analyze {fresh_run.path} --only {name}" in page
    summary = json.loads(result.summary_path.read_text())
    assert summary["run"] == "alpha" and summary["threshold"] == 0.95
    assert summary["sections"]["training"]["status"] == "ok"
    assert set(summary) >= {"fit_step", "generalize_step", "delay", "ratio"}
    n_training = len({s.key: s for s in result.sections}["training"].figures)
    assert 3 <= n_training == result.n_figures == page.count('class="plotly-graph-div"')
    assert "alpha" in page and "mod_add" in page and "wall time" in page and "hardware" in page


def test_report_with_every_analysis_has_figures_and_readings(fresh_run):
    names = _analyze_all(fresh_run)
    assert {"fourier", "tickets", "rank", "complexity", "norms"} <= set(names)
    result = build_report(fresh_run)
    by_key = {s.key: s for s in result.sections}
    for name in names:
        sec = by_key[name]
        assert sec.status == "ok", (name, sec.notes)
        assert sec.figures, name
        sentences = [x for x in re.split(r"(?<=[.!?])\s+", sec.reading.strip()) if x]
        assert 1 <= len(sentences) <= 2, (name, sec.reading)
    # The Fourier reading names the key frequencies of the cache, and its slider exists.
    fourier = analysis.over_training(fresh_run, ["fourier"], progress=False)
    key = (np.nonzero(fourier["fourier/key_mask"][-1].numpy())[0] + 1).tolist()
    assert ", ".join(map(str, key)) in by_key["fourier"].reading
    assert any(f.layout.sliders for f in by_key["fourier"].figures)
    assert result.size_bytes > 3_000_000  # plotly.js embedded


def test_a_corrupt_cache_is_regenerated_or_reported_never_fatal(fresh_run):
    analysis.over_training(fresh_run, ["fourier"], progress=False)
    path = cache_path(fresh_run, "fourier")
    path.write_bytes(b"\x00garbage" * 10)
    reported = build_report(fresh_run, recompute=False)
    sec = {s.key: s for s in reported.sections}["fourier"]
    assert sec.status == "error" and "corrupt" in sec.notes[0] and "--force" in sec.notes[0]
    assert path.read_bytes().startswith(b"\x00garbage")  # reporting never writes
    regenerated = build_report(fresh_run)
    sec = {s.key: s for s in regenerated.sections}["fourier"]
    assert sec.status == "ok" and sec.figures and "recomputed" in sec.notes[0]
    assert analysis.registry.load_cached(fresh_run, "fourier") is not None
    # A cache whose tensors disagree with its step list is treated the same way.
    path.write_bytes(path.read_bytes()[:200])
    assert {s.key: s.status for s in build_report(fresh_run).sections}["fourier"] == "ok"


def test_unknown_analysis_and_broken_section_do_not_crash(fresh_run, monkeypatch):
    def broken(rd):
        raise RuntimeError("boom")

    monkeypatch.setitem(S.SECTIONS, "zz_broken", S.Section("zz_broken", "Broken", None, broken))
    # A cache left by an analysis this version does not know (e.g. a newer grokinterp's).
    fresh_run.analysis_dir.mkdir(exist_ok=True)
    (fresh_run.analysis_dir / "zz_future.safetensors").write_bytes(b"\x00")
    result = build_report(fresh_run)
    by_key = {s.key: s for s in result.sections}
    assert by_key["zz_future"].status == "unavailable"
    assert "has no 'zz_future' analysis" in by_key["zz_future"].notes[0]
    assert by_key["zz_broken"].status == "error" and "boom" in by_key["zz_broken"].notes[0]
    assert by_key["training"].status == "ok"


def test_comparison_report_overlays_runs_with_different_step_grids(tiny_runs, tmp_path):
    a, b = tiny_runs
    assert a.steps != b.steps
    import shutil

    a = Run.open(shutil.copytree(a.path, tmp_path / "alpha"))  # private copy: gets a cache
    analysis.over_training(a, ["fourier"], progress=False)
    out = tmp_path / "cmp.html"
    result = build_report([a, b], out)
    assert result.summary_path == tmp_path / "cmp.summary.json"
    summary = json.loads(result.summary_path.read_text())
    assert [r["run"] for r in summary["runs"]] == ["alpha", "beta"]
    training = {s.key: s for s in result.sections}["training"]
    acc = training.figures[0]
    xs = {tr.name: list(tr.x) for tr in acc.data}
    assert xs["alpha · test"] == [m["step"] for m in a.metrics if m["step"] > 0]
    assert xs["beta · test"] == [m["step"] for m in b.metrics if m["step"] > 0]
    assert "alpha" in training.reading and "beta" in training.reading
    page = out.read_text()
    assert page.count('class="plotly-graph-div"') == result.n_figures
    assert "Comparison of 2 runs" in page
    # Fourier computed for alpha only: the section is partial and says how to compute beta's.
    fourier = {s.key: s for s in result.sections}["fourier"]
    assert fourier.status == "partial" and f"grokinterp analyze {b.path} --only fourier" in page
    names = {tr.name for tr in fourier.figures[0].data}
    assert names == {"alpha · W_E", "alpha · W_L"}


def test_report_is_offline_unless_light(fresh_run, tmp_path):
    _analyze_all(fresh_run)
    full = build_report(fresh_run, tmp_path / "full.html")
    page = full.html_path.read_text()
    assert page.count('<script id="plotlyjs"') == 1
    outside = re.sub(r'<script id="plotlyjs".*?</script>', "", page, flags=re.S)
    assert not re.search(r"https?://", outside), re.findall(r"https?://\S{0,40}", outside)[:3]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", outside)
    light = build_report(fresh_run, tmp_path / "light.html", light=True)
    lpage = light.html_path.read_text()
    assert plotly_cdn_url() in lpage and '<script id="plotlyjs"' not in lpage
    assert light.size_bytes < full.size_bytes - 3_000_000
    assert summary_path_for(tmp_path / "light.html").is_file()


def test_bad_inputs_raise_clear_errors(fresh_run, tmp_path):
    with pytest.raises(GrokinterpError, match="not a grokinterp run"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(GrokinterpError, match="out="):
        build_report(fresh_run, tmp_path / "report.txt")
    with pytest.raises(GrokinterpError, match="unknown section"):
        build_report(fresh_run, only=["nope"])


# ----------------------------------------------------------------------------- CLI


def test_cli_report_writes_html_and_summary(fresh_run, tiny_runs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(fresh_run.path)])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "MB" in res.output
    assert (fresh_run.path / "report.html").is_file() and (
        fresh_run.path / "summary.json"
    ).is_file()
    out = tmp_path / "c.html"
    res = runner.invoke(
        app, ["report", str(tiny_runs[0].path), str(tiny_runs[1].path), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and "beta" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not a grokinterp run" in res.output


def test_cli_png_export_without_kaleido_says_what_to_install(fresh_run, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "kaleido" else real(n, *a)
    )
    res = CliRunner().invoke(app, ["report", str(fresh_run.path), "--png-dir", "x"])
    assert res.exit_code == 2 and "pip install kaleido" in res.output


def test_cli_sweep_directory_goes_to_the_sweep_report(tmp_path, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("grokinterp.report.sweep")
    fake.render_sweep_report = lambda d, o: calls.append((d, o))
    monkeypatch.setitem(sys.modules, "grokinterp.report.sweep", fake)
    (tmp_path / "sweep.json").write_text("{}")
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert calls == [(tmp_path, tmp_path / "report.html")]


def test_cli_run_main_job_trains_analyzes_and_reports(tmp_path):
    out = tmp_path / "demo"
    args = [
        "run",
        "--out",
        str(out),
        "--quiet",
        *sum(
            (
                ["--set", s]
                for s in (
                    "task.p=11",
                    "model.d_model=16",
                    "model.n_heads=2",
                    "model.d_head=8",
                    "model.d_mlp=32",
                    "train.steps=20",
                    "train.eval_every=5",
                    "train.checkpoint_every=10",
                    "train.checkpoint_log_steps=3",
                )
            ),
            [],
        ),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    assert "fourier" in res.output and "computed" in res.output and "report:" in res.output
    assert (out / "analysis" / "fourier.safetensors").is_file()
    res = CliRunner().invoke(app, args)  # second time: resumes (nothing to do), caches reused
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output and "cached" in res.output


def test_dynamics_and_ticket_readings_follow_planted_curves():
    import torch

    steps = torch.tensor([0, 100, 200, 300, 400, 500])
    metrics = [
        {"step": int(s), "test_acc": a} for s, a in zip(steps, [0, 0, 0.1, 0.9, 1, 1], strict=True)
    ]
    rd = S.RunData(run=None, label="x", summary={"generalize_step": 400})  # type: ignore[arg-type]
    rd._metrics = metrics

    def data(name, **series):
        res = {"steps": steps, **{f"{name}/{k}": torch.tensor(v) for k, v in series.items()}}
        return S.AnalysisData(name, "ok", res, params={"sparsity": 0.8})

    rank = data(
        "rank",
        **{
            "effective/a": [10.0, 10, 10, 10, 10, 9.9],  # flat
            "effective/b": [40.0, 40, 40, 10, 8, 8],  # drops half-way (to ≤ 24) at step 300
            "numerical/b": [64.0, 64, 60, 30, 20, 20],
        },
    )
    text = SD.rank_reading(rank, rd)
    # the fall inside the window around generalisation (steps 50–800), not a memorisation one
    assert "effective rank of b falls by 80%, half-way at step 300" in text
    assert "from 64 to 20" in text

    lc = data("complexity", **{"train/mean": [5.0, 2, 1, 6, 8, 2], "test/mean": [1.0] * 6})
    text = SD.complexity_reading(lc, rd)
    assert "falls to" in text and "rises to" in text and "falls again" in text
    assert "train 2.00, test 1.00" in text

    tk = data(
        "tickets",
        jaccard_ref=[0.2, 0.3, 0.5, 0.95, 1, 1],
        jaccard_init=[1.0, 0.6, 0.4, 0.3, 0.25, 0.2],
        jaccard_random=[0.11] * 6,
    )
    text = ST.tickets_reading(tk, rd)
    assert "keeping 20% of the weights" in text and "reaches 0.9 at step 300" in text
    assert "test accuracy reaches 95% at step 400" in text  # the report's one threshold
    assert "falls to 0.20 (chance level 0.11)" in text


def test_transfer_section_and_comparison(tiny_runs, tmp_path):
    """A GrokTransfer target (and its random-A ablation) of the tiny run: the section reads the
    key frequencies of the cache; the comparison overlays both runs."""
    from grokinterp.analysis.transfer import transfer_summary
    from grokinterp.experiments.transfer import transfer

    cfg = tiny_runs[0].config
    runs = [
        transfer(tiny_runs[0], cfg, weak_at=30, out_dir=tmp_path / "gt", random_a=ra)
        for ra in (False, True)
    ]
    for r in runs:
        analysis.over_training(r, ["transfer"], progress=False)
    one = {s.key: s for s in build_report(runs[0]).sections}["transfer"]
    assert one.status == "ok" and len(one.figures) == 5, one.notes
    results = analysis.over_training(runs[0], ["transfer"], progress=False)
    s = transfer_summary(runs[0], results, n_perm=2000)
    assert f"key frequencies are {', '.join(map(str, s['target_keys']))}" in one.reading
    both = build_report(runs, tmp_path / "cmp.html")
    sec = {s.key: s for s in both.sections}["transfer"]
    assert sec.status == "ok" and "transfer" in sec.reading and "random_a" in sec.reading
    labels = {tr.name for tr in sec.figures[1].data}
    assert labels == {
        "transfer · energy in E_W's key freqs",
        "random_a · energy in E_W's key freqs",
    }


# ----------------------------------------------------------------------------- figure fixes


def test_spectrum_heatmaps_end_at_the_last_checkpoint():
    """The W_E (and target) spectrum heatmap's step axis is [first, last] checkpoint: the heatmap's
    edge cells would otherwise run half a cell past the last step."""
    import torch

    from grokinterp.report.figures import fourier as ff
    from grokinterp.report.figures import transfer as ft

    steps = torch.tensor([0, 10, 100, 1000, 4000])
    norms = torch.rand(5, 6) + 0.1
    key = torch.zeros(5, 6, dtype=torch.bool)
    key[:, 2] = True
    fig = ff.fourier_spectrum_figure(
        {"steps": steps, "fourier/embed_norms": norms, "fourier/key_mask": key}
    )
    assert tuple(fig.layout.xaxis.range) == (0, 4000)
    assert list(fig.data[0].x) == steps.tolist()
    assert list(fig.data[1].x) == [4000] and fig.data[1].cliponaxis is False  # key freqs
    res = {
        "steps": steps,
        "transfer/spectrum": norms,
        "transfer/weak_key_mask": key.float(),
    }
    assert tuple(ft.transfer_spectrum_heatmap(res).layout.xaxis.range) == (0, 4000)


def test_loss_against_weight_norm_is_coloured_by_step_with_a_colorbar():
    rows = [
        {"step": s, "weight_norm_l2": w, "train_loss": tl, "test_loss": te}
        for s, w, tl, te in [(0, 10.0, 4.0, 4.0), (10, 12.0, 1.0, 5.0), (1000, 6.0, 0.1, 0.2)]
    ]
    fig = tf.norm_trajectory_figure(rows)
    assert len(fig.data) == 2
    for tr in fig.data:
        assert tr.marker.coloraxis == "coloraxis"
        colors = list(tr.marker.color)
        assert colors == sorted(colors) and colors[0] < colors[-1]  # later steps, higher colour
    bar = fig.layout.coloraxis.colorbar
    assert bar.title.text == "step"
    assert list(bar.ticktext)[-1] == "1,000"
    assert fig.layout.coloraxis.cmax >= max(fig.data[0].marker.color)


def test_every_threshold_in_a_report_is_the_reports_own(fresh_run, monkeypatch):
    """One definition of "it grokked": the summary, the accuracy figure's line and marks, the
    Fourier grokking window and the readings all use the report's threshold (here 90 %, where the
    planted curves cross at other steps than at 95 % or 99 %)."""
    _analyze_all(fresh_run)
    steps = [m["step"] for m in fresh_run.metrics]
    train_acc = [0.1, 0.5, 0.92, 0.96, 1.0] + [1.0] * (len(steps) - 5)
    test_acc = [0.0] * 4 + [0.5, 0.91, 0.97] + [1.0] * (len(steps) - 7)
    rows = _metrics(train_acc, test_acc, steps)
    monkeypatch.setattr(Run, "metrics", property(lambda self: rows))
    fit, gen = steps[2], steps[5]
    assert (grok_times(rows).fit_step, grok_times(rows).generalize_step) == (steps[3], steps[6])
    result = build_report(fresh_run, threshold=0.9)
    s = result.summary
    assert (s["threshold"], s["fit_step"], s["generalize_step"], s["delay"]) == (
        0.9,
        fit,
        gen,
        gen - fit,
    )
    by_key = {sec.key: sec for sec in result.sections}
    acc = by_key["training"].figures[0]
    lines = [sh for sh in acc.layout.shapes if sh.type == "line"]
    assert [sh.y0 for sh in lines if sh.y0 == sh.y1] == [0.9]
    assert sorted(sh.x0 for sh in lines if sh.x0 == sh.x1) == [fit, gen]
    assert "at step 2" in by_key["training"].reading and "90%" in by_key["training"].reading
    loss = by_key["fourier"].figures[0]  # restricted / excluded loss with the grokking window
    assert [(r.x0, r.x1) for r in loss.layout.shapes if r.type == "rect"] == [(fit, gen)]
    for sec in result.sections:
        for other in ("95%", "99%"):
            assert other not in sec.reading, (sec.key, sec.reading)
    page = result.html_path.read_text()
    body = re.sub(r'<script id="plotlyjs".*?</script>', "", page, flags=re.S)
    assert "≥ 90%" in body and "≥ 95%" not in body and "≥ 99%" not in body
