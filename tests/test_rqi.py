"""Representation quality index (Liu et al. 2022) on planted embeddings, and the ``rqi`` analysis."""

from __future__ import annotations

import math

import pytest
import torch

from grokinterp.analysis.rqi import (
    DEFAULT_DELTA,
    _sum_classes,
    batched_rqi,
    circular_rqi,
    linear_rqi,
    parallelograms,
    random_circular_rqi,
    ring_angles,
)
from grokinterp.config import GrokinterpError


def ring(p: int, k: int = 1) -> torch.Tensor:
    t = 2 * math.pi * k * torch.arange(p, dtype=torch.float64) / p
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1)


def paper_parallelograms(p: int) -> set:
    """The loop of Liu et al.'s code (toy/train_add.py): i < j ≤ m < n with i + n = j + m,
    the parallelogram E_i + E_n = E_j + E_m."""
    out = set()
    for i in range(p):
        for j in range(i + 1, p):
            for m in range(j, p):
                for n in range(m + 1, p):
                    if i + n == j + m:
                        out.add(frozenset([(i, n), (j, m)]))
    return out


def test_parallelograms_are_the_papers():
    mine = parallelograms(10)
    as_set = {frozenset([(int(i), int(j)), (int(m), int(n))]) for i, j, m, n in mine.tolist()}
    assert len(as_set) == len(mine) == len(paper_parallelograms(10)) == 70
    assert as_set == paper_parallelograms(10)
    # modular: every row sums equal mod p, no pair repeated within a row, no row twice
    mod = parallelograms(7, modular=True)
    i, j, m, n = mod.T
    assert ((i + j - m - n) % 7 == 0).all()
    pairs = {frozenset([(int(a), int(b)), (int(c), int(d))]) for a, b, c, d in mod.tolist()}
    assert len(pairs) == len(mod) == 7 * math.comb(4, 2)  # 4 unordered pairs per residue


@pytest.mark.parametrize(("p", "k"), [(59, 1), (59, 17), (12, 3), (113, 41)])
def test_planted_ring_has_rqi_one(p, k):
    assert circular_rqi(ring(p, k)) == 1.0
    # any linear image of the ring (an ellipse in 16 dimensions)
    g = torch.Generator().manual_seed(p + k)
    assert circular_rqi(ring(p, k) @ torch.randn(2, 16, generator=g, dtype=torch.float64)) == 1.0
    # plus a weaker second frequency in other directions (Nanda et al.'s embeddings hold several)
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64))
    e = ring(p, k) @ q[:, :2].T * 3.0 + ring(p, (k + 1) % p or 2) @ q[:, 2:].T
    assert circular_rqi(e) == 1.0


def test_random_embedding_rqi_is_the_analytic_baseline():
    base = random_circular_rqi()
    assert base == pytest.approx(2 * math.asin(0.05) / math.pi) == pytest.approx(0.03184, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    values = [circular_rqi(torch.randn(59, 32, generator=g)) for _ in range(4)]
    assert sum(values) / len(values) == pytest.approx(base, abs=0.005)
    # the linear index: ~0 for d ≥ 4 (mean of d squared N(0, ≥4) defects below 0.01)
    assert linear_rqi(torch.randn(59, 8, generator=g)) < 1e-3


def test_linear_rqi_known_answers():
    k = torch.arange(23, dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1, 5, generator=g, dtype=torch.float64) for _ in range(2))
    assert linear_rqi(a + k * b) == 1.0  # E_k = a + k·b: every parallelogram holds
    assert linear_rqi((a + k * b) * 1e3 + 7) == 1.0  # scale and shift do not matter
    # the ring does not realise integer parallelograms; of the modular ones a linear embedding
    # realises exactly those that do not wrap around (no non-constant embedding realises all)
    assert linear_rqi(ring(23)) < 0.1
    i, j, m, n = parallelograms(23, modular=True).T
    no_wrap = float((i + j == m + n).double().mean())
    assert linear_rqi(a + k * b, modular=True) == pytest.approx(no_wrap) and no_wrap < 1
    assert circular_rqi(a + k * b) < 0.2
    # one shifted token breaks exactly the parallelograms that contain it
    e = a + k * b
    e[5] += 100 * b[0]
    pg = parallelograms(23)
    assert linear_rqi(e) == pytest.approx(float((pg != 5).all(1).double().mean()))
    assert linear_rqi(torch.ones(23, 3)) == 0.0  # constant: represents nothing


def test_batched_matches_single_and_ring_plane():
    g = torch.Generator().manual_seed(2)
    es = torch.stack(
        [ring(31, 4) @ torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(2)]
        + [torch.randn(31, 6, generator=g, dtype=torch.float64)]
    )
    out = batched_rqi(es)
    for c in range(3):
        assert out["circular"][c] == pytest.approx(circular_rqi(es[c]))
        assert out["linear"][c] == pytest.approx(linear_rqi(es[c]))
    assert out["plane_variance"][:2].tolist() == pytest.approx([1.0, 1.0])
    angles, plane = ring_angles(ring(31, 4))
    steps = torch.remainder(angles.diff(), 2 * math.pi)
    step = torch.minimum(steps, 2 * math.pi - steps)  # consecutive tokens: 2π·4/31 apart
    assert torch.allclose(step, torch.full((30,), 8 * math.pi / 31, dtype=torch.float64))
    assert float(plane) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# References: the former implementation (a loop over sum classes, a full SVD), kept here to check
# the vectorised one (issue 13) against it
# ---------------------------------------------------------------------------------------------


def sum_classes(n: int, modular: bool) -> tuple:
    """The sum classes the former loop walked (the same grouping builds the parallelograms; their
    set is checked against the paper's enumeration in ``test_parallelograms_are_the_papers``)."""
    return _sum_classes(n, modular)


def loop_circular_hits(angles: torch.Tensor, delta: float = DEFAULT_DELTA) -> torch.Tensor:
    """Per class: every couple of its pairs, ``2 − 2 cos(t_u − t_v) < δ``; hit counts [C]."""
    hits = torch.zeros(angles.shape[0], dtype=torch.float64)
    for a, b in sum_classes(angles.shape[1], True):
        t = angles[:, a] + angles[:, b]
        u, v = torch.triu_indices(t.shape[1], t.shape[1], offset=1)
        hits += ((2 - 2 * torch.cos(t[:, u] - t[:, v])) < delta).sum(-1).to(torch.float64)
    return hits


def loop_linear_hits(E: torch.Tensor, modular: bool = False) -> torch.Tensor:
    """Per class: the pair sums' Gram, squared distances below δ·d; hit counts [C]."""
    std = E.std(dim=1, keepdim=True)
    Z = (E - E.mean(dim=1, keepdim=True)) / std
    limit = DEFAULT_DELTA * E.shape[-1]
    hits = torch.zeros(E.shape[0], dtype=torch.float64)
    for a, b in sum_classes(E.shape[1], modular):
        q = Z[:, a] + Z[:, b]
        sq = q.pow(2).sum(-1)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * q @ q.mT).clamp(min=0)
        upper = torch.triu(torch.ones(q.shape[1], q.shape[1], dtype=torch.bool), diagonal=1)
        hits += ((dist < limit) & upper).sum(dim=(1, 2)).to(torch.float64)
    return hits


def svd_ring(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Ec = E - E.mean(dim=-2, keepdim=True)
    U, S, _ = torch.linalg.svd(Ec, full_matrices=False)
    return torch.atan2(U[..., 1], U[..., 0]), S[..., :2].pow(2).sum(-1) / S.pow(2).sum(-1)


@pytest.mark.parametrize(("n", "d"), [(31, 64), (59, 16)])  # the n×n and the d×d Gram
def test_eigh_ring_angles_match_the_svd(n, d):
    g = torch.Generator().manual_seed(n)
    planted = ring(n, 3) @ torch.randn(2, d, generator=g, dtype=torch.float64)
    planted = planted + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)
    for E in (planted, torch.randn(n, d, generator=g, dtype=torch.float64)):
        angles, plane = ring_angles(E)
        ref_angles, ref_plane = svd_ring(E)
        assert float(plane) == pytest.approx(float(ref_plane), rel=1e-12)
        # the same points up to one rotation (z = c·z_ref) or reflection (z = c·conj(z_ref))
        z, z_ref = (
            torch.polar(torch.ones_like(angles), angles),
            torch.polar(torch.ones_like(ref_angles), ref_angles),
        )
        rotation, reflection = z / z_ref, z * z_ref
        spread = min(float((r - r.mean()).abs().max()) for r in (rotation, reflection))
        assert spread < 1e-8
        # hence the same hits: the circular test with the SVD's angles
        P = len(parallelograms(n, modular=True))
        assert circular_rqi(E) == float(loop_circular_hits(ref_angles[None])[0]) / P


@pytest.mark.parametrize("n", [31, 30])  # odd: all modular classes of one size; even: two sizes
def test_vectorised_counts_equal_the_class_loop(n, monkeypatch):
    import grokinterp.analysis.rqi as rqi

    g = torch.Generator().manual_seed(n)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    # near-linear embeddings (intermediate linear RQI) and pure noise (circular ~ baseline)
    E = torch.stack(
        [
            k * torch.randn(1, 8, generator=g, dtype=torch.float64)
            + s * torch.randn(n, 8, generator=g, dtype=torch.float64)
            for s in (0.05, 0.1, 0.2, 0.3)
        ]
        + [torch.randn(n, 8, generator=g, dtype=torch.float64)]
    )
    P_mod, P_int = len(parallelograms(n, modular=True)), len(parallelograms(n))
    angles, _ = ring_angles(E)
    circ_hits, lin_hits = loop_circular_hits(angles), loop_linear_hits(E)
    mod_hits = loop_linear_hits(E, modular=True)
    assert ((0 < lin_hits) & (lin_hits < P_int)).sum() >= 2  # not all-or-nothing
    assert circ_hits.min() > 0
    for slices in ("one", "many"):
        if slices == "many":  # ragged slices of 7 parallelograms: every slice and the last one
            monkeypatch.setattr(rqi, "_SLICE_BYTES", {"cpu": 8, "cuda": 8})
            monkeypatch.setattr(rqi, "_MIN_SLICE", 7)
        out = batched_rqi(E)
        assert torch.equal((out["circular"] * P_mod).round(), circ_hits)
        assert torch.equal((out["linear"] * P_int).round(), lin_hits)
        modular = torch.tensor([linear_rqi(e, modular=True) for e in E], dtype=torch.float64)
        assert torch.equal((modular * P_mod).round(), mod_hits)


def test_degenerate_embedding_has_no_ring():
    g = torch.Generator().manual_seed(5)
    for n, d in ((31, 64), (59, 16)):
        offset = torch.randn(1, d, generator=g, dtype=torch.float64)
        c = torch.randn(n, 1, generator=g, dtype=torch.float64)
        v = torch.randn(1, d, generator=g, dtype=torch.float64)
        rank1 = c * v + offset  # a line: one component; its Gram's λ₂ is rounding noise
        _, plane = ring_angles(rank1)
        assert float(plane) == 0.0
        assert circular_rqi(rank1) == 0.0
        # a thin but genuine second direction (σ₂ = 1e-3·σ₁) is still a plane
        w = torch.randn(n, 1, generator=g, dtype=torch.float64)
        thin = rank1 + 1e-3 * (w - w.mean()) * torch.randn(1, d, generator=g, dtype=torch.float64)
        assert float(ring_angles(thin)[1]) == pytest.approx(1.0)
    assert float(ring_angles(torch.ones(7, 3))[1]) == 0.0  # constant
    assert float(ring_angles(torch.randn(7, 1, generator=g))[1]) == 0.0  # one dimension
    assert batched_rqi(torch.randn(2, 7, 1, generator=g))["circular"].tolist() == [0.0, 0.0]


def test_bad_input_is_one_line_error():
    with pytest.raises(GrokinterpError, match="tensor"):
        circular_rqi([[1.0, 2.0]])
    with pytest.raises(GrokinterpError, match="finite"):
        circular_rqi(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]))
    with pytest.raises(GrokinterpError, match="2 dimensions"):
        circular_rqi(torch.randn(5, 1))
    with pytest.raises(GrokinterpError, match="delta"):
        linear_rqi(torch.randn(5, 3), delta=-1)
    with pytest.raises(GrokinterpError, match="tokens"):
        parallelograms(1)
    assert DEFAULT_DELTA == 0.01


def test_rqi_analysis_over_a_run(tmp_path):
    from grokinterp.analysis import ANALYSES, applicable, over_training
    from grokinterp.analysis.rqi import rqi_summary
    from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
    from grokinterp.training import train

    cfg = RunConfig(
        task=TaskConfig("mod_sub", {"p": 11, "train_fraction": 0.5}),
        model=ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16),
        train=TrainConfig(steps=4, checkpoint_every=2, checkpoint_log_steps=0, eval_every=2),
        name="tiny-sub",
    )
    run = train(cfg, tmp_path / "run", progress=False)
    assert "rqi" in ANALYSES and applicable(run)["rqi"] is None
    # the driver sizes chunks from it: the float64 embedding, Grams and tables (≈ 60 kB here)
    assert 20_000 < ANALYSES["rqi"].factory(run).bytes_per_checkpoint < 200_000
    ref = over_training(run, ["rqi"], progress=False, reference=True, force=True)
    new = over_training(run, ["rqi"], progress=False, force=True)
    for key in ("circular", "linear", "plane_variance"):
        assert torch.allclose(ref[f"rqi/{key}"], new[f"rqi/{key}"])
    # the checkpoint's embedding, by hand: tokens 0..p-1 are the group elements of mod_sub
    emb = run.load_state(run.steps[-1])["embed.W_E"][:11]
    assert float(new["rqi/circular"][-1]) == pytest.approx(circular_rqi(emb))
    s = rqi_summary(run, new.of("rqi"))
    assert 0 <= s["circular_rqi_final"] <= 1 and s["random_baseline"] == pytest.approx(
        0.0318, abs=1e-4
    )
    # a vector task does not apply, with a reason
    vec = RunConfig(task=TaskConfig("digits", {"n_train": 20}), model=ModelConfig(name="mlp"))
    run.config = vec
    assert "modular" in applicable(run)["rqi"]


@pytest.mark.slow
def test_demo_run_rqi_rises_and_rank_drops_with_generalisation(grokked_demo):
    """The effects on a real grokking run (the demo preset, CPU, ~3 min): the ring RQI climbs
    from the unstructured baseline as test accuracy rises (measured: 0.03 → 0.43, half-way at
    step 2650, test accuracy at 95 % at step 2820), and the summary finds the MLP's rank drop
    inside the generalisation window, not the memorisation transient."""
    from grokinterp.analysis import over_training
    from grokinterp.analysis.rank import rank_summary
    from grokinterp.analysis.rqi import rqi_summary
    from grokinterp.store import Run

    run = Run.open(grokked_demo)
    res = over_training(run, ["rqi", "rank"], progress=False, device="cpu")
    r = rqi_summary(run, res.of("rqi"))
    gen = r["generalize_step"]
    assert gen is not None
    assert r["circular_rqi_start"] < 0.05 and r["circular_rqi_max"] > 0.3
    assert abs(r["circular_rqi_half_way_step"] - gen) < 0.25 * gen
    s = rank_summary(run, res.of("rank"))
    lo, hi = s["generalization_window"]
    i = s["layers"].index("pre:blocks.0.mlp.act")
    assert s["drop_step_near_generalization"][i] is not None
    assert lo <= s["drop_step_near_generalization"][i] <= hi
    assert s["drop_fraction_near_generalization"][i] > 0.3
    # the transformer's MLP reads the 64-d residual: its rank is capped below its 256 neurons
    assert s["capped"][i] and s["cap_source"][i] == "layer input"
