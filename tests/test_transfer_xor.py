"""GrokTransfer on XOR-cluster data (Xu, Ni, Wang, Hu 2025, §3): the factorized first layer of the
vector-input ``mlp``, transfer of a weak mlp's ``W_in``, the merge, the CLI and the analysis."""

from __future__ import annotations

import json

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis import transfer as T
from grokinterp.config import GrokinterpError, RunConfig, apply_overrides
from grokinterp.experiments import transfer as X
from grokinterp.models import build_model, first_layer_weight
from grokinterp.store import Run
from grokinterp.tasks import make_task
from grokinterp.training import train
from tests.test_transfer import check_merge_at_10

TASK = ["task.name=xor_cluster", "task.dimension=100", "task.n_train=100", "task.n_test=200"]
SMALL = [
    "model.name=mlp",
    "train.eval_every=5",
    "train.checkpoint_every=5",
    "train.checkpoint_log_steps=2",
    "train.warmup_steps=0",
]
WEAK = ["model.d_mlp=3", "train.optimizer=sgd", "train.lr=0.1", "train.weight_decay=1e-3"]
WEAK += ["train.steps=20", "name=weak"]
TARGET = ["model.d_mlp=16", "train.lr=1e-3", "train.steps=20", "name=target"]


def _cfg(extra: list[str]) -> RunConfig:
    return apply_overrides(RunConfig(), [*TASK, *SMALL, *extra])


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    return train(_cfg(WEAK), tmp_path_factory.mktemp("w") / "weak", progress=False)


# ------------------------------------------------------------------ the model


def test_full_mlp_is_unchanged_and_factorized_names():
    task = make_task("xor_cluster", dimension=50, n_train=10, n_test=10)
    cfg = _cfg(["model.d_mlp=8"]).model
    torch.manual_seed(0)
    full = build_model(cfg, task)
    assert list(full.state_dict()) == [
        "blocks.0.mlp.W_in",
        "blocks.0.mlp.b_in",
        "unembed.W_U",
        "unembed.b_U",
    ]
    assert not hasattr(full, "embed")
    cfg.embedding, cfg.embed_rank = "factorized", 3
    torch.manual_seed(0)
    fac = build_model(cfg, task)
    sd = fac.state_dict()
    assert sorted(sd) == ["blocks.0.mlp.b_in", "embed.W_A", "embed.W_B"] + [
        "unembed.W_U",
        "unembed.b_U",
    ]
    assert sd["embed.W_A"].shape == (50, 3) and sd["embed.W_B"].shape == (3, 8)
    for k, v in full.state_dict().items():  # the other parameters are the full model's draw
        if k != "blocks.0.mlp.W_in":
            assert torch.equal(sd[k], v), k
    names = set(fac.hook_dict)
    assert {"hook_input", "hook_embed", "blocks.0.mlp.hook_pre"} <= names
    x = task.x_test
    _, cache = fac.run_with_cache(x)
    assert torch.equal(cache["hook_embed"], x @ (sd["embed.W_A"] @ sd["embed.W_B"]))
    y = fac(x)
    fac.embed.merge()  # exact: the factorized forward already multiplies by A·B
    assert list(fac.state_dict()).count("embed.W_E") == 1 and "embed.W_A" not in fac.state_dict()
    assert torch.equal(fac(x), y)


def test_factorized_mlp_reproduces_a_times_b_exactly_at_step_0(weak, tmp_path):
    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path)
    E_W = weak.load_state(10)["blocks.0.mlp.W_in"]
    assert torch.equal(first_layer_weight(weak.load_state(10)), E_W)
    s0 = run.load_state(0)
    assert torch.equal(s0["embed.W_A"], E_W)  # A = the weak model's W_in, bit for bit
    torch.manual_seed(run.config.train.seed)
    fresh = build_model(run.config.model, run.task())
    for k, v in fresh.state_dict().items():  # B and the rest: the target's own initialisation
        if k != "embed.W_A":
            assert torch.equal(s0[k], v), k
    model = run.model(0)
    W = E_W @ s0["embed.W_B"]
    assert torch.equal(model.embed.weight, W)
    assert torch.equal(first_layer_weight(s0), W)
    # the same logits as a full mlp whose W_in is A·B
    full = build_model(apply_overrides(run.config, ["model.embedding=full"]).model, run.task())
    full.load_state_dict(
        {k: v for k, v in s0.items() if not k.startswith("embed.")} | {"blocks.0.mlp.W_in": W}
    )
    x = run.task().x_test
    assert torch.equal(model(x), full.eval()(x))
    info = T.transfer_info(run)
    assert info["kind"] == "transfer" and info["weak_step"] == 10
    assert run.config.model.embed_rank == 3


def test_merge_leaves_the_function_unchanged_at_the_merge_step(weak, tmp_path):
    _, merged = check_merge_at_10(weak, _cfg(TARGET), tmp_path)
    assert merged.metrics[-1]["step"] == 20  # and it trains on after the merge


def test_default_weak_step_random_a_and_compare(weak, tmp_path):
    assert X.default_weak_at(_cfg(TARGET)) == "final"
    run = X.transfer(weak, _cfg(TARGET), out_dir=tmp_path / "one")
    assert T.transfer_info(run)["weak_step"] == weak.steps[-1]
    ra = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path / "ra", random_a=True)
    A, E_W = ra.load_state(0)["embed.W_A"], weak.load_state(10)["blocks.0.mlp.W_in"]
    assert torch.allclose(A.norm(), E_W.norm()) and not torch.allclose(A, E_W)
    res = X.compare_transfer(weak, _cfg(TARGET), weak_at="acc=0.5", out_dir=tmp_path, steps=10)
    assert [r["kind"] for r in res.rows] == ["scratch", "transfer", "random_a"]
    assert res.runs["scratch"].config.model.embedding == "full"


def test_bad_inputs_are_refused(weak, tmp_path):
    token_weak = apply_overrides(
        RunConfig(), ["task.p=7", "model.name=embed_mlp", "model.d_embed=2", "train.steps=2"]
    )
    with pytest.raises(GrokinterpError, match="token model"):
        X.transfer(token_weak, _cfg(TARGET), weak_at=0, out_dir=tmp_path)
    token_target = apply_overrides(RunConfig(), ["task.p=7", "model.name=embed_mlp"])
    with pytest.raises(GrokinterpError, match="no token embedding"):
        X.transfer(weak, token_target, weak_at=10, out_dir=tmp_path)
    wide = apply_overrides(_cfg(TARGET), ["task.dimension=120"])
    with pytest.raises(GrokinterpError, match="dimension"):
        X.transfer(weak, wide, weak_at=10, out_dir=tmp_path)
    assert not (tmp_path / "weak").exists()  # refused before training anything
    with pytest.raises(GrokinterpError, match="never reaches"):
        X.transfer(weak, _cfg(TARGET), weak_at="acc=1.0", out_dir=tmp_path)


# ------------------------------------------------------------------ CLI, analysis, report


def test_cli_transfer_compare_analyze_and_report(weak, tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app
    from grokinterp.report.figures import transfer as FT

    weak_file, target = tmp_path / "weak.json", tmp_path / "target.json"
    weak_file.write_text(json.dumps(_cfg(WEAK).to_dict()))
    target.write_text(json.dumps(_cfg(TARGET).to_dict()))
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    base = ["transfer", "--weak", str(weak_file), "--target", str(target), "-q"]
    out = tmp_path / "cmp"
    res = runner.invoke(app, [*base, "--compare", "--steps", "10", "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    for kind in ("scratch", "transfer", "random_a"):
        assert kind in res.output
    assert Run.open(out / "weak").config.model.d_mlp == 3  # the weak config was trained
    res = runner.invoke(app, [*base, "--cpu", "--out", str(tmp_path / "bad")], env=env)
    assert res.exit_code == 2 and "--cpu" in res.output
    res = runner.invoke(
        app, ["analyze", str(out / "transfer"), "--only", "transfer", "-q"], env=env
    )
    assert res.exit_code == 0, res.output
    assert T.SUMMARY_LABELS["fourier"] in res.output and "span(E_W)" in res.output
    run = Run.open(out / "transfer")
    r = over_training(run, ["transfer"], progress=False)
    assert "transfer/spectrum" not in r
    assert float(r["transfer/subspace_energy"][0]) == pytest.approx(1.0)  # A·B ⊂ span(A)
    s = T.transfer_summary(run, r)
    assert s["fourier"] is False and "overlap" not in s and 0 <= s["signal_energy"] <= 1
    fig = FT.transfer_subspace_figure(r)
    assert len(fig.data) == 3 + 3  # CKA, energy, signal energy, r = 3 angles
    res = runner.invoke(
        app, ["report", str(out / "transfer"), "--light", "-o", str(tmp_path / "r.html")], env=env
    )
    assert res.exit_code == 0, res.output
    assert "vector inputs have no Fourier spectra" in (tmp_path / "r.html").read_text()
    over_training(Run.open(out / "scratch"), ["transfer"], progress=False)  # cache it
    pair = [str(out / "transfer"), str(out / "scratch")]
    res = runner.invoke(app, ["report", *pair, "--light", "-o", str(tmp_path / "c.html")], env=env)
    assert res.exit_code == 0, res.output
    page = (tmp_path / "c.html").read_text().replace("&#39;", "'").replace("&#x27;", "'")
    assert "first layer's energy in span(E_W)" in page


# ------------------------------------------------------------------ scientific check


@pytest.mark.slow
def test_transfer_removes_the_xor_grokking_delay_at_cpu_size(tmp_path):
    # measured (dimension 2000, weak seed 0): transfer 95% test at step 13, scratch 1 780,
    # random A never (48% after 3 000 steps)
    res = X.compare_transfer(
        "groktransfer-weak-xor", "groktransfer-xor", out_dir=tmp_path, steps=600
    )
    transfer, scratch, random_a = (res.row(k) for k in ("transfer", "scratch", "random_a"))
    assert 0.6 <= res.weak_test_acc <= 0.85  # the weak model does not solve the task
    assert transfer["generalize_step"] is not None and transfer["generalize_step"] <= 100
    assert scratch["generalize_step"] is None  # scratch needs ~1 800 steps
    assert random_a["generalize_step"] is None and random_a["final_test_acc"] < 0.7
