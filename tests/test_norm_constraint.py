"""Omnigrok's weight-norm constraint (Liu, Michaud, Tegmark 2023, "Omnigrok: Grokking Beyond
Algorithmic Data"): after every step all parameters are rescaled so that the global L2 norm stays
at its initial value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokinterp.config import apply_overrides
from grokinterp.training import train
from grokinterp.training.optim import NormConstraint, global_norm


def _norm64(state: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(v.double().pow(2).sum() for v in state.values())))


def test_unit_rescale_hits_the_target():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 7)), nn.Parameter(torch.randn(3))]
    c = NormConstraint(params)
    n0 = float(global_norm(params))
    assert float(c.target) == pytest.approx(n0, rel=1e-7)
    with torch.no_grad():
        params[0].mul_(3.0)
        params[1].add_(1.0)
    c(params)
    assert abs(float(global_norm(params)) - n0) / n0 < 1e-6
    fixed = NormConstraint(params, target=2.0)
    fixed(params)
    assert float(global_norm(params)) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(
    "extra",
    [
        ["train.weight_decay=0.0", "train.lr=0.03"],
        ["train.weight_decay=1.0", "train.lr=0.03", "train.optimizer=sgd", "train.momentum=0.9"],
        ["model.name=embed_mlp", "model.d_embed=8", "train.lr=0.05", "model.init_scale=3.0"],
    ],
    ids=["adamw-wd0", "sgd-wd1", "embed_mlp-init3"],
)
def test_norm_held_within_1e6_relative_during_training(tmp_path, tiny_config, extra):
    cfg = apply_overrides(tiny_config, ["train.norm_constraint=true", *extra])
    run = train(cfg, tmp_path / "r", progress=False)
    n0 = _norm64(run.load_state(0))
    for s in run.steps:  # from the weights on disk, in float64
        assert abs(_norm64(run.load_state(s)) - n0) / n0 < 1e-6, s
    for m in run.metrics:  # and the trainer's own reading
        assert abs(m["weight_norm_l2"] - n0) / n0 < 1e-6, m["step"]


def test_without_the_constraint_the_norm_moves(tmp_path, tiny_config):
    """The same runs without the constraint change their norm (so the test above can fail)."""
    cfg = apply_overrides(tiny_config, ["train.weight_decay=0.0", "train.lr=0.03"])
    run = train(cfg, tmp_path / "r", progress=False)
    n0, n1 = _norm64(run.load_state(0)), _norm64(run.load_state(30))
    assert abs(n1 - n0) / n0 > 1e-3


def test_norm_constraint_across_an_embedding_merge(tmp_path, tiny_config):
    """Folding A·B into W_E changes the parameter set (and its norm) without changing the function;
    the constraint then holds the norm the merged parameters have, rather than rescaling the
    whole network back to the pre-merge value (which would change the function)."""
    cfg = apply_overrides(
        tiny_config,
        [
            "train.norm_constraint=true",
            "model.embedding=factorized",
            "model.embed_rank=3",
            "train.merge_embedding_at=10",
            "train.lr=0.02",
        ],
    )
    run = train(cfg, tmp_path / "r", progress=False)
    n0, n_merge = _norm64(run.load_state(0)), _norm64(run.load_state(10))
    assert abs(n_merge - n0) / n0 > 1e-3  # the merge did change the norm
    for s in [s for s in run.steps if s >= 10]:
        assert abs(_norm64(run.load_state(s)) - n_merge) / n_merge < 1e-6, s
    for s in [s for s in run.steps if s < 10]:
        assert abs(_norm64(run.load_state(s)) - n0) / n0 < 1e-6, s


def test_lu_sweep_holds_each_run_at_its_scaled_norm(tmp_path):
    from grokinterp.experiments.transfer import lu_sweep

    over = ["train.steps=8", "train.eval_every=4", "train.checkpoint_every=4"]
    over += ["model.d_mlp=16", "task.n_train=40"]
    out = lu_sweep("omnigrok-norm", scales=(0.5, 2.0), out_dir=tmp_path, overrides=over)
    assert out["scale"] == [0.5, 2.0] and len(out["test_loss"]) == 2
    # every parameter is multiplied by alpha at init, and the constraint keeps that norm
    assert out["weight_norm"][1] / out["weight_norm"][0] == pytest.approx(4.0, rel=1e-5)
    for scale in ("0.5", "2"):
        run = __import__("grokinterp").Run.open(tmp_path / f"scale-{scale}")
        assert run.config.train.norm_constraint and run.config.train.weight_decay == 0
        n0 = _norm64(run.load_state(0))
        assert abs(_norm64(run.load_state(8)) - n0) / n0 < 1e-6
