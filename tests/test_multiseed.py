"""Many seeds at once give each seed's own run (issue 9)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from grokinterp.cli import app
from grokinterp.config import GrokinterpError, apply_overrides
from grokinterp.store import Run
from grokinterp.training import parse_seeds, seed_dir, train, train_seeds
from tests.conftest import TINY_OVERRIDES
from tests.conftest import tiny as tiny_config_with


def tiny(extra: list[str] | None = None):
    # the shared tiny config, with 3 log-spaced checkpoints as these tests expect
    return tiny_config_with(["train.checkpoint_log_steps=3", *(extra or [])])


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0,2-3,2") == [0, 2, 3, 5]
    assert parse_seeds("7") == [7]
    for bad in ("", "a", "3-1", "1--2", "-1"):
        with pytest.raises(GrokinterpError, match="--seeds"):
            parse_seeds(bad)


def _same_run(multi: Run, alone: Run) -> None:
    assert multi.config.train.seed == alone.config.train.seed
    assert multi.steps == alone.steps
    rows_m, rows_a = multi.metrics, alone.metrics
    assert [m["step"] for m in rows_m] == [m["step"] for m in rows_a]
    for m, a in zip(rows_m, rows_a, strict=True):
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "weight_norm_l2"):
            assert m[key] == pytest.approx(a[key], rel=2e-4), (m["step"], key)
    for step in (0, multi.steps[-1]):
        wm, wa = multi.load_state(step), alone.load_state(step)
        assert wm.keys() == wa.keys()
        for k in wa:
            torch.testing.assert_close(wm[k], wa[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "extra",
    [[], ["model.name=embed_mlp", "train.norm_constraint=true", "train.grokfast={kind='ema'}"]],
)
def test_seeds_at_once_equal_seeds_alone(tmp_path, extra):
    cfg = tiny(extra)
    runs = train_seeds(cfg, [0, 3], tmp_path / "many", progress=False)
    assert [r.path for r in runs] == [seed_dir(tmp_path / "many", s) for s in (0, 3)]
    assert [r.info["engine"] for r in runs] == ["fast", "fast"]  # batched, no fallback
    for run in runs:
        seed = run.config.train.seed
        alone = apply_overrides(cfg, [f"train.seed={seed}"])
        fast = train(
            apply_overrides(alone, ["train.engine=fast"]), tmp_path / f"f{seed}", progress=False
        )
        # Same function; a batched GEMM over S seeds may round differently from S = 1.
        _same_run(run, fast)
        eager = train(
            apply_overrides(alone, ["train.engine=eager"]), tmp_path / f"e{seed}", progress=False
        )
        _same_run(run, eager)
        assert (fast.info["engine"], eager.info["engine"]) == ("fast", "eager")
        assert run.info["status"] == "complete"
    # different seeds are different models
    assert not torch.equal(runs[0].load_state(0)["embed.W_E"], runs[1].load_state(0)["embed.W_E"])


def test_early_stopping_is_per_seed(tmp_path):
    cfg = tiny(["train.early_stop_acc=0.1", "train.early_stop_patience=1", "train.steps=60"])
    runs = train_seeds(cfg, [0, 1, 2], tmp_path / "many", progress=False)
    finals = []
    for run in runs:
        alone = train(
            apply_overrides(cfg, [f"train.seed={run.config.train.seed}", "train.engine=fast"]),
            tmp_path / f"a{run.config.train.seed}",
            progress=False,
        )
        assert run.info["final_step"] == alone.info["final_step"]
        assert run.info["stopped_early"] == alone.info["stopped_early"]
        assert run.steps == alone.steps
        finals.append(run.info["final_step"])
    assert len(set(finals)) > 1, "the test needs seeds that stop at different steps"


def test_resume_and_fallbacks(tmp_path):
    cfg = tiny()
    train_seeds(cfg, [1, 2], tmp_path / "m", progress=False)
    # each seed directory is an ordinary run: resume it alone with the eager engine
    longer = apply_overrides(cfg, ["train.steps=40", "train.seed=1", "train.engine=eager"])
    resumed = train(longer, seed_dir(tmp_path / "m", 1), resume=True, progress=False)
    straight = train(longer, tmp_path / "straight", progress=False)
    assert resumed.metrics[-1]["train_loss"] == pytest.approx(
        straight.metrics[-1]["train_loss"], rel=1e-4
    )
    # --resume of the whole group continues every seed (one at a time)
    runs = train_seeds(apply_overrides(cfg, ["train.steps=40"]), [1, 2], tmp_path / "m", True)
    assert [r.info["final_step"] for r in runs] == [40, 40]
    with pytest.raises(GrokinterpError, match="already holds a run"):
        train_seeds(cfg, [2], tmp_path / "m", progress=False)
    # minibatches: each seed trained on its own (same result as alone)
    mb = tiny(["train.batch_size=30", "train.steps=10"])
    (run,) = train_seeds(mb, [4], tmp_path / "mb", progress=False)
    alone = train(apply_overrides(mb, ["train.seed=4"]), tmp_path / "mb_alone", progress=False)
    assert run.metrics[-1]["train_loss"] == alone.metrics[-1]["train_loss"]


def test_cli_seeds(tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--preset", "demo", "--out", str(out), "-q", "--seeds", "0-1"]
    args += [a for s in [*TINY_OVERRIDES, "train.checkpoint_log_steps=3"] for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1"]
    assert Run.open(out / "seed1").config.train.seed == 1
    bad = CliRunner().invoke(app, ["train", "--preset", "demo", "--out", str(out), "--seeds", "x"])
    assert bad.exit_code == 2
