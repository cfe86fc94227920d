"""GrokTransfer (Xu, Ni, Wang, Hu 2025): the factorized initialisation, the merge, the experiment
plumbing and the analysis linking E_W to the target's Fourier circuits (known-answer cases)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis import transfer as T
from grokinterp.analysis.curves import grok_times
from grokinterp.config import GrokinterpError, RunConfig, apply_overrides
from grokinterp.experiments import transfer as X
from grokinterp.models import build_model, effective_embedding
from grokinterp.models.components import Embed
from grokinterp.store import Run
from grokinterp.training import train

TASK = ["task.name=mod_add", "task.p=11", "task.train_fraction=0.5", "task.seed=0"]
SMALL = [
    "train.eval_every=5",
    "train.checkpoint_every=5",
    "train.checkpoint_log_steps=2",
    "train.warmup_steps=0",
    "train.lr=0.01",
]


def _cfg(extra: list[str]) -> RunConfig:
    return apply_overrides(RunConfig(), [*TASK, *SMALL, *extra])


WEAK = ["model.name=embed_mlp", "model.d_embed=3", "model.d_mlp=8", "model.combine=concat"]
WEAK += ["train.steps=20", "name=weak"]
TARGET = ["model.name=embed_mlp", "model.d_embed=16", "model.d_mlp=16", "model.combine=concat"]
TARGET += ["model.n_layers=2", "train.steps=20", "name=target"]


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    return train(_cfg(WEAK), tmp_path_factory.mktemp("w") / "weak", progress=False)


# ------------------------------------------------------------------ the initialisation


def test_factorized_embedding_reproduces_a_times_b_exactly_at_step_0(weak, tmp_path):
    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path)
    E_W = effective_embedding(weak.load_state(10))
    s0 = run.load_state(0)
    assert torch.equal(s0["embed.W_A"], E_W)  # A = E_W, bit for bit
    # B is the target model's own initialisation: same seed, same draw as an untouched build
    torch.manual_seed(run.config.train.seed)
    fresh = build_model(run.config.model, run.task())
    assert torch.equal(s0["embed.W_B"], fresh.embed.W_B.detach())
    for k, v in fresh.state_dict().items():  # everything but A is the built init
        if k != "embed.W_A":
            assert torch.equal(s0[k], v), k
    model = run.model(0)
    assert torch.equal(model.embed.weight, E_W @ s0["embed.W_B"])
    x = run.task().x_test[:7]
    emb = model.run_with_cache(x)[1]["hook_embed"]
    assert torch.equal(emb, (E_W @ s0["embed.W_B"])[x[:, :2]])
    info = T.transfer_info(run)
    assert info["kind"] == "transfer" and info["weak_step"] == 10
    assert run.config.parent == str(weak.path.resolve())


def check_merge_at_10(weak: Run, target: RunConfig, tmp_path) -> tuple[Run, Run]:
    """GrokTransfer with and without ``--merge-at 10``: at step 10 the merged W_E is exactly
    A·B and the function is unchanged (Xu et al. 2025, Fig. 15b). Shared with the XOR tests."""
    plain = X.transfer(weak, target, weak_at=10, out_dir=tmp_path / "a")
    merged = X.transfer(weak, target, weak_at=10, out_dir=tmp_path / "b", merge_at=10)
    a, b = plain.load_state(10), merged.load_state(10)
    assert "embed.W_A" in a and "embed.W_E" in b and "embed.W_A" not in b
    assert torch.equal(b["embed.W_E"], a["embed.W_A"] @ a["embed.W_B"])
    x = plain.task().x_test
    assert torch.equal(plain.model(10)(x), merged.model(10)(x))
    return plain, merged


def test_merge_leaves_the_function_unchanged_at_the_merge_step(weak, tmp_path):
    plain, merged = check_merge_at_10(weak, _cfg(TARGET), tmp_path)
    for s in (0, 5):  # identical before the merge
        assert all(torch.equal(plain.load_state(s)[k], v) for k, v in merged.load_state(s).items())
    assert "embed.W_E" in merged.load_state(20)  # and trained on as a full matrix


def test_embed_merge_module_level():
    torch.manual_seed(0)
    e = Embed(7, 5, factorized=True, rank=2)
    tokens = torch.tensor([[0, 3], [6, 1]])
    before = e(tokens)
    e.merge()
    assert not e.factorized and set(dict(e.named_parameters())) == {"W_E"}
    assert torch.equal(e(tokens), before)


def test_random_a_keeps_the_norm_not_the_structure(weak, tmp_path):
    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path, random_a=True)
    A, E_W = run.load_state(0)["embed.W_A"], effective_embedding(weak.load_state(10))
    assert A.shape == E_W.shape and not torch.allclose(A, E_W)
    assert float(A.norm()) == pytest.approx(float(E_W.norm()), rel=1e-5)
    assert T.transfer_info(run)["kind"] == "random_a"


# ------------------------------------------------------------------ choosing E_W


def test_select_weak_step(weak):
    steps, acc = weak.steps, {m["step"]: m["test_acc"] for m in weak.metrics}
    assert X.select_weak_step(weak, 5) == 5 and X.select_weak_step(weak, "final") == steps[-1]
    best = X.select_weak_step(weak, "best")
    assert acc[best] == max(acc[s] for s in steps)
    level = acc[best]
    first = X.select_weak_step(weak, f"acc={level}")
    assert acc[first] >= level and all(acc[s] < level for s in steps if s < first)
    with pytest.raises(GrokinterpError, match="no checkpoint"):
        X.select_weak_step(weak, 7)
    if level < 1:
        with pytest.raises(GrokinterpError, match="never reaches"):
            X.select_weak_step(weak, "acc=1.0")
    with pytest.raises(GrokinterpError, match="weak_at"):
        X.select_weak_step(weak, "soon")


def test_task_mismatch_and_non_token_target_are_refused(weak, tmp_path):
    with pytest.raises(GrokinterpError, match="task.*p"):
        X.transfer(weak, apply_overrides(_cfg(TARGET), ["task.p=13"]), weak_at=10, out_dir=tmp_path)
    with pytest.raises(GrokinterpError, match="token"):  # an mlp is no token model
        X.transfer(
            weak, apply_overrides(_cfg(TARGET), ["model.name=mlp"]), weak_at=10, out_dir=tmp_path
        )


def test_compare_transfer_table_and_reuse(weak, tmp_path):
    res = X.compare_transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path, steps=10)
    assert [r["kind"] for r in res.rows] == ["scratch", "transfer", "random_a"]
    for r in res.rows:
        assert r["final_step"] == 10 and r["wall_total_s"] >= 0
        times = grok_times(res.runs[r["kind"]].metrics)
        assert (r["fit_step"], r["generalize_step"]) == (times.fit_step, times.generalize_step)
        assert (r["delay"], r["ratio"]) == (times.delay, times.ratio)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["weak_step"] == 10 and len(saved["rows"]) == 3
    assert res.runs["scratch"].config.model.embedding == "full"
    assert T.transfer_info(res.runs["scratch"])["kind"] == "scratch"
    mtime = (tmp_path / "transfer" / "run.json").stat().st_mtime_ns
    again = X.compare_transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path, steps=10)
    assert (tmp_path / "transfer" / "run.json").stat().st_mtime_ns == mtime  # reused
    assert again.rows == res.rows


# ------------------------------------------------------------------ pure analysis functions


def _planted(p: int, freqs: dict[int, float], d: int = 6) -> torch.Tensor:
    """A [p + 1, d] embedding whose token rows are cos/sin of ``freqs`` (weights = amplitudes)."""
    x = torch.arange(p, dtype=torch.float64)
    cols = []
    for k, a in freqs.items():
        cols += [a * torch.cos(2 * math.pi * k * x / p), a * torch.sin(2 * math.pi * k * x / p)]
    E = torch.stack(cols, 1)
    E = torch.cat([E, torch.zeros(p, d - E.shape[1], dtype=E.dtype)], 1)
    return torch.cat([E, torch.randn(1, d, dtype=E.dtype)])  # "=" row: ignored


def test_spectrum_of_planted_frequencies():
    p = 13
    E = _planted(p, {2: 1.0, 5: 3.0})
    s = T.embedding_spectrum(E, "mod_add")
    assert s.shape == (6,)
    # cos/sin column of amplitude a has norm a·sqrt(p/2) on its frequency, zero elsewhere
    want = torch.zeros(6, dtype=torch.float64)
    want[1], want[4] = math.sqrt(p / 2) * math.sqrt(2), 3 * math.sqrt(p / 2) * math.sqrt(2)
    assert torch.allclose(s, want, atol=1e-9)
    assert T.energy_fraction(s, [5]) == pytest.approx(0.9)
    assert T.energy_fraction(s, [1, 3]) == pytest.approx(0.0, abs=1e-20)


def test_spectrum_for_multiplication_uses_discrete_log_order():
    p = 11  # primitive root 2; a token g^i sits at position i
    g = 2
    x = torch.tensor([pow(g, i, p) for i in range(p - 1)])
    E = torch.zeros(p + 1, 2, dtype=torch.float64)
    i = torch.arange(p - 1, dtype=torch.float64)
    E[x, 0] = torch.cos(2 * math.pi * 3 * i / (p - 1))
    s = T.embedding_spectrum(E, "mod_mul", p)
    assert int(torch.argmax(s)) + 1 == 3 and float(s[2]) / float(s.norm()) > 0.999


def test_overlap_score_and_permutation_baseline():
    assert T.overlap_score([1, 2, 3, 4], [2, 4, 9]) == 0.5
    K = 20
    same = T.overlap_test([3, 7, 11], [3, 7, 11], K, n_perm=20_000)
    assert same["score"] == 1.0 and same["expected"] == pytest.approx(3 / 20)
    assert same["baseline"] == pytest.approx(3 / 20, abs=0.01)  # hypergeometric mean
    assert same["p_exact"] == pytest.approx(1 / math.comb(20, 3))
    assert same["p_value"] < 0.005
    disjoint = T.overlap_test([1, 2], [5, 6, 7, 8], K, n_perm=5_000)
    assert disjoint["score"] == 0.0 and disjoint["p_value"] == 1.0 and disjoint["p_exact"] == 1.0
    # one shared out of 2 target freqs, |K_W| = 4 of 20: P(X >= 1) = 1 - C(16,2)/C(20,2)
    one = T.overlap_test([1, 5], [5, 6, 7, 8], K, n_perm=50_000, seed=1)
    exact = 1 - math.comb(16, 2) / math.comb(20, 2)
    assert one["p_exact"] == pytest.approx(exact)
    assert one["p_value"] == pytest.approx(exact, abs=0.01)
    with pytest.raises(GrokinterpError, match="1..n_freqs"):
        T.overlap_test([0], [1], K)
    with pytest.raises(GrokinterpError, match="empty"):
        T.overlap_score([], [1])


def test_principal_angles_known_subspaces():
    theta = 0.3
    e = torch.eye(4, dtype=torch.float64)
    X = torch.stack([e[0], e[1]], 1)
    Y = torch.stack([2 * e[0], math.cos(theta) * e[1] + math.sin(theta) * e[2]], 1)
    a = T.principal_angles(X, Y)
    assert torch.allclose(a, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-12)
    tiny = T.principal_angles(X, torch.stack([e[0], e[1] + 1e-9 * e[3]], 1))
    assert float(tiny[1]) == pytest.approx(1e-9, rel=1e-4)  # accurate at small angles too
    assert torch.allclose(
        T.principal_angles(X, e[:, 2:]), torch.full((2,), math.pi / 2, dtype=torch.float64)
    )
    assert T.subspace_energy(Y, X) == pytest.approx((4 + math.cos(theta) ** 2) / 5)


def test_linear_cka_known_values():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 5, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert T.linear_cka(X, 3.0 * X @ Q + 1.0) == pytest.approx(1.0)
    A = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float64)
    assert T.linear_cka(A, A[:, :1]) == pytest.approx(1 / math.sqrt(2))
    B = torch.tensor([[1.0], [-1], [0], [0]], dtype=torch.float64)
    C = torch.tensor([[0.0], [0], [1], [-1]], dtype=torch.float64)
    assert T.linear_cka(B, C) == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------ the registered analysis


def test_transfer_analysis_over_training(weak, tmp_path):
    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path)
    assert T.transfer_applies(run) is None
    res = over_training(run, ["transfer"], progress=False)
    n, K = len(run.steps), 5
    assert res["transfer/spectrum"].shape == (n, K)
    assert res["transfer/principal_angles"].shape == (n, 3)
    # at step 0 E_T = E_W·B lies inside E_W's column space: the defining property of the init
    assert float(res["transfer/subspace_energy"][0]) == pytest.approx(1.0, abs=1e-9)
    assert float(res["transfer/principal_angles"][0].max()) < 1e-5
    E_W = effective_embedding(weak.load_state(10))
    assert torch.allclose(res["transfer/weak_spectrum"][0], T.embedding_spectrum(E_W).float())
    s = T.transfer_summary(run, res, n_perm=200)
    assert s["kind"] == "transfer" and s["subspace_energy_init"] == pytest.approx(1.0)
    assert 0 <= s["overlap"] <= 1 and s["weak_keys"]
    gen = s["generalize_step"]  # grok_times; the analysis step is the first checkpoint at/after it
    assert s["generalized"] == (gen is not None) and (gen is None or s["analysis_step"] >= gen)
    assert set(s) <= set(T.SUMMARY_LABELS)  # every key has a display name


def test_transfer_analysis_applies_only_to_transfer_runs(weak):
    reason = T.transfer_applies(weak)
    assert reason is not None and "GrokTransfer" in reason


def test_weak_embedding_sources(weak, tmp_path):
    run = X.transfer(weak, _cfg(TARGET), weak_at=5, out_dir=tmp_path)
    E5 = effective_embedding(weak.load_state(5))
    assert torch.equal(T.weak_embedding(run)[0], E5)
    E10, _ = T.weak_embedding(run, f"{weak.path}@10")
    assert torch.equal(E10, effective_embedding(weak.load_state(10)))
    with pytest.raises(GrokinterpError, match="weak_embedding"):
        T.weak_embedding(run, str(tmp_path / "nothing.safetensors"))
    assert isinstance(Run.open(run.path), Run)


# ------------------------------------------------------------------ CLI and figures


def test_cli_transfer_and_compare(weak, tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app

    target = tmp_path / "target.json"
    target.write_text(json.dumps(_cfg(TARGET).to_dict()))
    runner = CliRunner()
    base = ["transfer", "--weak", str(weak.path), "--target", str(target), "-q"]
    res = runner.invoke(app, [*base, "--weak-at", "10", "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    assert "E_W from" in res.output and "step 10" in res.output
    assert (tmp_path / "one" / "transfer" / "run.json").is_file()
    res = runner.invoke(
        app,
        [*base, "--weak-at", "best", "--compare", "--grokfast", "--steps", "6"]
        + ["--out", str(tmp_path / "cmp")],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    for kind in ("scratch", "transfer", "random_a", "grokfast"):
        assert kind in res.output
    assert "fit step" in res.output and "generalize step" in res.output and "≥95%" in res.output
    grok = Run.open(tmp_path / "cmp" / "grokfast")
    assert grok.config.train.grokfast == X.GROKFAST_EMA and grok.metrics[-1]["step"] == 6
    res = runner.invoke(app, [*base, "--weak-at", "acc=1.5", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "weak_at" in res.output
    res = runner.invoke(app, [*base, "--grokfast", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--compare" in res.output


def test_analyze_prints_the_transfer_summary(weak, tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app

    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path)
    res = CliRunner().invoke(
        app, ["analyze", str(run.path), "--only", "transfer", "-q"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "overlap" in res.output and T.SUMMARY_LABELS["weak_keys"] in res.output


def test_transfer_figures(weak, tmp_path):
    from grokinterp.report.figures import transfer as FT

    run = X.transfer(weak, _cfg(TARGET), weak_at=10, out_dir=tmp_path)
    res = over_training(run, ["transfer"], progress=False)
    n = len(run.steps)
    fig = FT.transfer_spectra_figure(res, at=run.steps[1])
    assert len(fig.data) == 3 and all(len(t.y) == 5 for t in fig.data)
    assert abs(sum(fig.data[0].y) - 1) < 1e-6  # shares of energy
    assert len(FT.transfer_spectrum_heatmap(res).data[0].x) == n
    assert len(FT.transfer_overlap_figure(res).data) == 3
    assert len(FT.transfer_subspace_figure(res).data) == 2 + 3  # CKA, energy, r = 3 angles
    curves = FT.comparison_curves_figure({"transfer": run.metrics, "weak": weak.metrics})
    assert len(curves.data) == 4
    assert len(FT.norm_trajectory_figure(run.metrics).data) == 2
    lu = FT.lu_figure([4.0, 1.0, 2.0], [0.1, 0.3, 0.2], [0.5, 0.4, 0.3])
    assert list(lu.data[0].x) == [1.0, 2.0, 4.0] and list(lu.data[1].y) == [0.4, 0.3, 0.5]
    with pytest.raises(GrokinterpError, match="at="):
        FT.transfer_spectra_figure(res, at=12345)
    with pytest.raises(GrokinterpError, match="transfer"):
        FT.transfer_overlap_figure({"steps": res["steps"]})
    with pytest.raises(GrokinterpError, match="equal-length"):
        FT.lu_figure([1.0], [1.0, 2.0], [1.0])
