import pytest

from grokinterp.config import GrokinterpError, RunConfig, apply_overrides, load_preset, preset_names
from grokinterp.training.schedule import checkpoint_schedule


def test_schedule_is_log_spaced_early_then_every_n():
    s = checkpoint_schedule(1000, every=100, n_log=10)
    assert s[0] == 0 and s[-1] == 1000
    early = [x for x in s if 0 < x < 100]
    assert early[0] == 1 and len(early) >= 8  # the first hundred steps are well covered
    gaps = [b - a for a, b in zip(early, early[1:], strict=False)]
    assert gaps == sorted(gaps)  # spacing grows (log-spaced)
    assert [x for x in s if x >= 100] == list(range(100, 1001, 100))
    assert checkpoint_schedule(250, every=100, n_log=0) == [0, 100, 200, 250]


def test_presets_load_and_roundtrip():
    assert {"demo", "nanda2023"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_nanda2023_preset_matches_the_paper():
    cfg = load_preset("nanda2023")
    assert cfg.task.params == {"p": 113, "train_fraction": 0.3, "seed": 0}
    m, t = cfg.model, cfg.train
    assert (m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.act_fn, m.normalization) == (
        1,
        128,
        4,
        32,
        512,
        "relu",
        "none",
    )
    assert (t.optimizer, t.lr, t.weight_decay, t.betas, t.batch_size, t.warmup_steps) == (
        "adamw",
        1e-3,
        1.0,
        (0.9, 0.98),
        None,
        10,
    )


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lr=-1", "train.lr"),
        ("train.optimizer=rmsprop", "allowed: adamw"),
        ("model.name=resnet", "model.name"),
        ("train.nonsense=1", "unknown key"),
        ("bogus", "section.key=value"),
        ("train.betas=[0.9, 1.5]", "betas"),
        ("model.d_model=0", "d_model"),
    ],
)
def test_bad_overrides_are_named(override, match):
    with pytest.raises(GrokinterpError, match=match):
        apply_overrides(load_preset("demo"), [override])


def test_overrides_parse_types():
    cfg = apply_overrides(
        load_preset("demo"),
        [
            "train.steps=7",
            "task.p=13",
            "train.batch_size=none",
            "model.act_fn=gelu",
            "model.normalization=none",
        ],
    )
    assert cfg.train.steps == 7 and cfg.task.params["p"] == 13 and cfg.train.batch_size is None
    assert cfg.model.act_fn == "gelu" and cfg.model.normalization == "none"
