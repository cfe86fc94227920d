import json

import pytest
import torch

from grokinterp.config import GrokinterpError, apply_overrides
from grokinterp.store import FORMAT_VERSION, Run, save_tensors
from grokinterp.training import group as group_mod
from grokinterp.training import train


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_the_documented_run_directory(tmp_path, tiny_config):
    run = train(tiny_config, tmp_path / "r", progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["format_version"] == FORMAT_VERSION and info["status"] == "complete"
    assert {"torch", "grokinterp"} <= set(info["versions"]) and len(info["split_hash"]) == 16
    assert run.steps[0] == 0 and run.steps[-1] == 30 and 10 in run.steps and 1 in run.steps
    keys = {"step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm_l2"}
    assert all(keys <= set(m) for m in run.metrics)
    assert [m["step"] for m in run.metrics][:2] == [0, 1]
    assert (tmp_path / "r" / "state" / "latest.safetensors").is_file()
    assert (tmp_path / "r" / "state" / "latest.json").is_file()
    assert not (tmp_path / "r" / "state" / "latest.pt").exists()  # no pickle
    reopened = Run.open(tmp_path / "r")
    model = reopened.model(30)
    assert model(reopened.task().x_test[:4]).shape == (4, 3, 11)  # [batch, pos, d_vocab_out]
    assert not list((tmp_path / "r").rglob(".*tmp*"))  # no temporary files left behind


def test_resume_after_a_kill_is_bit_exact(tmp_path, tiny_config, monkeypatch):
    straight = train(tiny_config, tmp_path / "a", progress=False)

    real_step = group_mod.SeedGroup.train_step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] > 17:
            raise KeyboardInterrupt  # killed between checkpoints 10 and 20
        real_step(self)

    monkeypatch.setattr(group_mod.SeedGroup, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config, tmp_path / "b", progress=False)
    monkeypatch.setattr(group_mod.SeedGroup, "train_step", real_step)
    resumed = train(tiny_config, tmp_path / "b", resume=True, progress=False)

    assert resumed.steps == straight.steps
    for s in straight.steps:
        assert _states_equal(straight.load_state(s), resumed.load_state(s)), s
    strip = lambda rows: [{k: v for k, v in m.items() if k != "wall_time"} for m in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(straight.metrics)


def test_resume_extends_a_finished_run_bit_exactly(tmp_path, tiny_config):
    long = train(tiny_config, tmp_path / "long", progress=False)
    short_cfg = apply_overrides(tiny_config, ["train.steps=20"])
    train(short_cfg, tmp_path / "ext", progress=False)
    extended = train(tiny_config, tmp_path / "ext", resume=True, progress=False)
    assert _states_equal(long.load_state(30), extended.load_state(30))


def test_out_dir_with_another_run_is_refused(tmp_path, tiny_config):
    train(tiny_config, tmp_path / "r", progress=False)
    with pytest.raises(GrokinterpError, match="--resume"):
        train(tiny_config, tmp_path / "r", progress=False)
    other = apply_overrides(tiny_config, ["train.lr=0.01"])
    with pytest.raises(GrokinterpError, match="train.lr"):
        train(other, tmp_path / "r", resume=True, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(GrokinterpError, match="not a grokinterp run"):
        train(tiny_config, tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"  # nothing lost
    train(other, tmp_path / "r", overwrite=True, progress=False)
    assert Run.open(tmp_path / "r").config.train.lr == 0.01


def test_crash_mid_write_leaves_previous_checkpoint_readable(tmp_path, monkeypatch):
    import grokinterp.store as store

    path = tmp_path / "steps" / "00000010.safetensors"
    save_tensors(path, {"w": torch.ones(3)})

    def crashing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 5)  # partial bytes, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_file", crashing_save)
    with pytest.raises(OSError):
        save_tensors(path, {"w": torch.zeros(3)})
    assert torch.equal(store.load_tensors(path)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_truncated_checkpoint_and_newer_format_give_clear_errors(tmp_path, tiny_config):
    run = train(tiny_config, tmp_path / "r", progress=False)
    f = run.step_path(10)
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(GrokinterpError, match="00000010.safetensors is truncated or corrupt"):
        run.load_state(10)
    with pytest.raises(GrokinterpError, match="no checkpoint at step 11"):
        run.load_state(11)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    with pytest.raises(GrokinterpError, match="newer grokinterp"):
        Run.open(tmp_path / "r")
    with pytest.raises(GrokinterpError, match="not a grokinterp run"):
        Run.open(tmp_path)


def test_float16_checkpoints_halve_the_size(tmp_path, tiny_config):
    a = train(tiny_config, tmp_path / "a", progress=False)
    b = train(
        apply_overrides(tiny_config, ["train.checkpoint_dtype=float16"]),
        tmp_path / "b",
        progress=False,
    )
    sa, sb = a.step_path(30).stat().st_size, b.step_path(30).stat().st_size
    assert sb < 0.6 * sa
    assert b.load_state(30)["embed.W_E"].dtype == torch.float32


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.loss=mse", "train.optimizer=adam"],
        ["train.loss=hinge", "train.optimizer=sgd", "train.momentum=0.9", "train.batch_size=16"],
        ["train.dtype=float64", "model.name=embed_mlp", "model.d_embed=8", "model.combine=concat"],
        ["model.embedding=factorized", "model.embed_rank=3", "train.merge_embedding_at=12"],
        ["train.grokfast={kind='ema', alpha=0.9, lamb=1.0}", "train.norm_constraint=true"],
    ],
)
def test_training_options_run_and_learn(tmp_path, tiny_config, overrides):
    cfg = apply_overrides(tiny_config, overrides)
    run = train(cfg, tmp_path / "r", progress=False)
    first, last = run.metrics[0], run.metrics[-1]
    assert last["train_loss"] < first["train_loss"]
    run.model(run.steps[-1])  # every checkpoint loads back into the run's model


def test_early_stop(tmp_path, tiny_config):
    cfg = apply_overrides(
        tiny_config, ["train.early_stop_acc=0.0001", "train.early_stop_patience=2"]
    )
    run = train(cfg, tmp_path / "r", progress=False)
    # evaluations happen at checkpoints 1 and 2 (log-spaced), so two in a row end it at step 2
    assert run.info["stopped_early"] and run.info["final_step"] == 2 and run.steps[-1] == 2


def test_minibatches_are_reproducible(tmp_path, tiny_config):
    cfg = apply_overrides(tiny_config, ["train.batch_size=8"])
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert _states_equal(a.load_state(30), b.load_state(30))


def test_init_state_and_mask_are_applied(tmp_path, tiny_config):
    base = train(tiny_config, tmp_path / "base", progress=False)
    init = base.load_state(0)
    mask = {"blocks.0.mlp.W_in": torch.rand_like(init["blocks.0.mlp.W_in"]) > 0.5}
    save_tensors(tmp_path / "mask.safetensors", mask)
    save_tensors(
        tmp_path / "init.safetensors", {"unembed.W_U": torch.zeros_like(init["unembed.W_U"])}
    )
    cfg = apply_overrides(
        tiny_config,
        [
            f"train.mask='{tmp_path / 'mask.safetensors'}'",
            f"train.init_state='{tmp_path / 'init.safetensors'}'",
        ],
    )
    run = train(cfg, tmp_path / "m", progress=False)
    assert torch.count_nonzero(run.load_state(0)["unembed.W_U"]) == 0
    for s in run.steps:
        w = run.load_state(s)["blocks.0.mlp.W_in"]
        assert torch.all(w[~mask["blocks.0.mlp.W_in"]] == 0), s
    assert torch.count_nonzero(run.load_state(30)["unembed.W_U"]) > 0


def test_divergence_is_one_rule_for_one_and_many_seeds(tmp_path, tiny_config):
    """A non-finite train loss stops the seed, marks its run "diverged" and is reported, the
    same way for a plain run and for each seed of a batched group."""
    from grokinterp.training import train_seeds

    cfg = apply_overrides(tiny_config, ["train.lr=1000", "train.eval_every=1"])
    with pytest.raises(GrokinterpError, match="diverged at step 3"):
        train(cfg, tmp_path / "one", progress=False)
    info = Run.open(tmp_path / "one").info
    assert (info["status"], info["final_step"]) == ("diverged", 3)
    assert Run.open(tmp_path / "one").metrics[-1]["step"] == 3
    with pytest.raises(GrokinterpError, match=r"seed\(s\) 0, 1"):
        train_seeds(cfg, [0, 1], tmp_path / "many", progress=False)
    for seed in (0, 1):
        info = Run.open(tmp_path / "many" / f"seed{seed}").info
        assert info["status"] == "diverged" and info["engine"] == "fast"
