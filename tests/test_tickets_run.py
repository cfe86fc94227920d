"""Tickets on real (tiny) runs: extraction, the driver analysis, fixed masks under AdamW, retraining."""

from __future__ import annotations

import json

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis.tickets import (
    extract_ticket,
    jaccard_matrix,
    load_mask,
    magnitude_mask,
    mask_jaccard,
    model_parameters,
    random_mask,
    random_mask_like,
    save_mask,
    ticket_path,
)
from grokinterp.config import GrokinterpError, RunConfig, TaskConfig, TrainConfig
from grokinterp.config import ModelConfig as MC
from grokinterp.store import Run, load_resume_state, load_tensors, save_tensors
from grokinterp.training import train


def tiny_config(steps: int = 60, **train_kw) -> RunConfig:
    return RunConfig(
        task=TaskConfig("mod_add", {"p": 11, "train_fraction": 0.5, "seed": 0}),
        model=MC(name="embed_mlp", d_embed=48, d_model=48, d_mlp=24, mlp_out=True, bias=True),
        train=TrainConfig(
            steps=steps, lr=3e-3, warmup_steps=0, eval_every=10, checkpoint_every=20, **train_kw
        ),
        name="tiny",
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Run:
    torch.set_num_threads(1)
    return train(tiny_config(), tmp_path_factory.mktemp("runs") / "tiny", progress=False)


def test_extract_ticket_saves_and_matches_magnitude_mask(tiny_run):
    m = extract_ticket(tiny_run, "final", 0.6)
    final = tiny_run.steps[-1]
    params = model_parameters(tiny_run, final)
    ref = magnitude_mask(params, 0.6)
    assert all(torch.equal(m[k], ref[k]) for k in ref)
    assert "blocks.0.mlp.b_in" not in m and {"embed.W_E", "unembed.W_U"} <= set(m)
    path = ticket_path(tiny_run, final, 0.6)
    assert path.is_file() and path.parent.parent == tiny_run.analysis_dir
    loaded = load_mask(path)
    assert all(torch.equal(loaded[k], m[k]) for k in m)
    with pytest.raises(GrokinterpError, match="no checkpoint"):
        extract_ticket(tiny_run, 12345, 0.6)


def test_step0_ticket_is_a_random_magnitude_mask(tiny_run):
    # At step 0 the weights are i.i.d. draws, so the (layerwise) ticket is a uniformly random
    # subset of each tensor: its overlap with an independent random mask of the same per-tensor
    # counts is at chance level d/(2 − d), and the global ticket is exactly |θ₀|'s top-k.
    theta0 = model_parameters(tiny_run, 0)
    t0 = extract_ticket(tiny_run, 0, 0.6, scope="layerwise", save=False)
    assert all(torch.equal(t0[k], magnitude_mask(theta0, 0.6, "layerwise")[k]) for k in t0)
    d = 0.4
    js = [mask_jaccard(t0, random_mask_like(t0, seed=s)) for s in range(5)]
    assert sum(js) / 5 == pytest.approx(d / (2 - d), abs=0.02)
    tf = extract_ticket(tiny_run, "final", 0.6, scope="layerwise", save=False)
    assert mask_jaccard(t0, tf) < 1.0


def test_tickets_analysis_over_training(tiny_run):
    out = over_training(tiny_run, {"tickets": {"sparsity": 0.6}}, progress=False)
    steps = out["steps"].tolist()
    assert steps == tiny_run.steps
    jr, ji = out["tickets/jaccard_ref"], out["tickets/jaccard_init"]
    assert jr[-1] == 1.0 and ji[0] == 1.0 and (jr <= 1).all() and (jr >= 0).all()
    n = int(out["tickets/n_entries"][0])
    J = jaccard_matrix(out["tickets/bits"], n)
    assert J.shape == (len(steps), len(steps)) and torch.allclose(J, J.T)
    assert torch.allclose(J.diagonal(), torch.ones(len(steps), dtype=J.dtype))
    assert torch.allclose(J[-1], jr.double()) and torch.allclose(J[0], ji.double())
    # against an independent computation for one pair
    a = magnitude_mask(model_parameters(tiny_run, steps[1]), 0.6)
    b = magnitude_mask(model_parameters(tiny_run, steps[3]), 0.6)
    assert J[1, 3].item() == pytest.approx(mask_jaccard(a, b), abs=1e-12)
    assert out["tickets/kept_fraction"].shape == (len(steps), 4)
    again = over_training(tiny_run, {"tickets": {"sparsity": 0.6}}, progress=False)  # cached
    assert torch.equal(again["tickets/bits"], out["tickets/bits"])


@pytest.mark.parametrize(
    "grokfast",
    [{}, {"kind": "ema", "alpha": 0.9, "lamb": 2.0}, {"kind": "ma", "window": 5, "lamb": 3.0}],
)
def test_masked_weights_stay_exactly_zero_under_adamw(tiny_run, tmp_path, grokfast):
    theta0 = model_parameters(tiny_run, 0)
    mask = random_mask(theta0, 0.7, seed=1)
    init = {k: v * 10 for k, v in theta0.items()}  # nonzero everywhere: the trainer must zero them
    save_tensors(tmp_path / "init.safetensors", init)
    save_mask(tmp_path / "mask.safetensors", mask)
    cfg = tiny_config(
        steps=150,
        weight_decay=1.0,
        grokfast=grokfast,
        checkpoint_log_steps=0,
        init_state=str(tmp_path / "init.safetensors"),
        mask=str(tmp_path / "mask.safetensors"),
    )
    cfg.train.lr = 1e-2
    run = train(cfg, tmp_path / "masked", progress=False)
    assert len(run.steps) >= 5
    for step in run.steps:
        state = run.load_state(step)
        for k, m in mask.items():
            assert (state[k][~m] == 0).all(), (step, k)
    final = run.load_state(run.steps[-1])
    for k, m in mask.items():  # the kept weights did train, and weight decay acted on them
        assert not torch.equal(final[k][m], init[k][m])
    assert not torch.equal(final["blocks.0.mlp.b_in"], init["blocks.0.mlp.b_in"])  # unmasked
    opt = load_resume_state(run.path)["optimizer"]["state"]
    named = [n for n, _ in run.model(0).named_parameters()]
    for i, n in enumerate(named):
        if n in mask:
            assert (opt[i]["exp_avg"][~mask[n]] == 0).all() and (
                opt[i]["exp_avg_sq"][~mask[n]] == 0
            ).all()


def test_retrain_ticket_and_compare(tiny_run, tmp_path):
    from grokinterp.experiments.tickets import KINDS, compare_tickets, retrain_ticket

    child = retrain_ticket(
        tiny_run, "final", sparsity=0.6, out_dir=tmp_path / "ticket", steps=20, progress=False
    )
    assert child.config.parent == str(tiny_run.path.resolve())
    mask = load_mask(child.config.train.mask)
    theta0 = model_parameters(tiny_run, 0)
    s0 = child.load_state(0)
    for k, m in mask.items():
        assert torch.equal(s0[k], torch.where(m, theta0[k], torch.zeros_like(theta0[k])))
    assert load_tensors(child.config.train.init_state).keys() == theta0.keys()
    assert child.steps[-1] == 20
    # reuse: a second call with the same settings does not retrain
    mtime = (child.path / "metrics.jsonl").stat().st_mtime_ns
    again = retrain_ticket(
        tiny_run, "final", sparsity=0.6, out_dir=tmp_path / "ticket", steps=20, progress=False
    )
    assert (again.path / "metrics.jsonl").stat().st_mtime_ns == mtime

    cmp = compare_tickets(
        tiny_run,
        "final",
        sparsity=0.6,
        out_dir=tmp_path / "cmp",
        steps=20,
        rounds=3,
        progress=False,
    )
    assert [r["kind"] for r in cmp.rows] == list(KINDS)
    rows = {r["kind"]: r for r in cmp.rows}
    assert rows["dense"]["sparsity"] == 0.0 and rows["ticket"]["sparsity"] == pytest.approx(
        0.6, abs=1e-3
    )
    for kind in ("random", "snip", "grasp", "synflow"):
        assert rows[kind]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    # norm-matched controls start dense with the ticket's L2 / L1 norm
    ticket0 = {k: v.double() for k, v in cmp.runs["ticket"].load_state(0).items() if k in mask}
    for kind, p in (("dense_l2", 2), ("dense_l1", 1)):
        s = cmp.runs[kind].load_state(0)
        got = sum((s[k].double().abs() ** p).sum() for k in mask) ** (1 / p)
        want = sum((v.abs() ** p).sum() for v in ticket0.values()) ** (1 / p)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        assert all((s[k] != 0).all() for k in mask)
    data = json.loads((cmp.out_dir / "compare.json").read_text())
    assert len(data["rows"]) == len(KINDS) and (cmp.out_dir / "compare.html").is_file()
    assert "ticket" in cmp.table() and len(cmp.figure.data) >= len(KINDS)


@pytest.mark.parametrize(
    "model_kw",
    [
        {"name": "transformer", "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
        {
            "name": "embed_mlp",
            "d_embed": 16,
            "d_mlp": 8,
            "embedding": "factorized",
            "embed_rank": 3,
        },
    ],
)
def test_pruning_at_init_runs_on_real_models(model_kw):
    from grokinterp.analysis.pruning import pruning_mask, synflow_scores
    from grokinterp.models import build_model
    from grokinterp.tasks import make_task

    task = make_task("mod_add", p=7, train_fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = build_model(MC(**model_kw), task)
    s = synflow_scores(model, task.x_train, 0.5, rounds=3)
    emb = [k for k in s if k.startswith("embed.")]
    assert emb and all(
        torch.isfinite(s[k]).any() and (s[k][torch.isfinite(s[k])] >= 0).all() for k in emb
    )
    # every embedding entry receives flow in the single-shot scores (all-ones input, |θ| > 0)
    s1 = synflow_scores(model, task.x_train, 0.5, rounds=1)
    assert all((s1[k] > 0).all() for k in emb)
    n = sum(
        p.numel()
        for k, p in model.named_parameters()
        if k in magnitude_mask(dict(model.named_parameters()), 0.5)
    )
    for method in ("snip", "grasp", "synflow", "random"):
        m = pruning_mask(method, model, task.x_train, task.y_train, 0.5, rounds=3)
        assert sum(int(v.sum()) for v in m.values()) == n - n // 2, method


def test_ticket_figures():
    from grokinterp.report.figures.tickets import (
        mask_density_figure,
        mask_similarity_figure,
        ticket_curves_figure,
    )

    curves = {
        k: {"step": [0, 10, 20], "test_acc": [0.0, 0.5, 1.0], "train_acc": [0, 1, 1]}
        for k in ("dense", "ticket")
    }
    fig = ticket_curves_figure(curves, show_train=True)
    assert len(fig.data) == 4 and list(fig.data[0].y) == [0.0, 0.5, 1.0]
    assert mask_similarity_figure([0, 10], [1.0, 0.5]).data[0].type == "scatter"
    assert mask_similarity_figure([0, 10], torch.eye(2)).data[0].type == "heatmap"
    assert list(
        mask_density_figure({"W": torch.tensor([True, False, False, False])}).data[0].y
    ) == [0.25]
    with pytest.raises(GrokinterpError):
        mask_similarity_figure([0, 10], torch.eye(3))
    with pytest.raises(GrokinterpError):
        ticket_curves_figure({"x": {"step": [0]}})


def test_cli_tickets(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["tickets", str(tiny_run.path), "--at", "final", "--sparsity", "0.5"])
    assert res.exit_code == 0, res.output
    assert "embed.W_E" in res.output and "Jaccard with the step-0 ticket" in res.output
    out = tmp_path / "cmp"
    args = [
        "tickets",
        str(tiny_run.path),
        "--compare",
        "--steps",
        "10",
        "--kinds",
        "dense,ticket",
        "-o",
        str(out),
        "-q",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (
        "generalize step" in res.output  # the 80-column table keeps its headers whole
        and (out / "compare.json").is_file()
        and (out / "ticket" / "run.json").is_file()
    )
    res = runner.invoke(app, ["tickets", str(tiny_run.path), "--sparsity", "1.5"])
    assert res.exit_code == 2 and "sparsity" in res.output
    res = runner.invoke(
        app, ["tickets", str(tiny_run.path), "--compare", "--kinds", "obd", "-o", str(out)]
    )
    assert res.exit_code == 2 and "kinds" in res.output
