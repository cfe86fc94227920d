"""Typed, validated config (issue 15 item 3): the specific cases; the fuzzing is in
test_config_fuzz.py."""

import dataclasses
import inspect
import json
import math
import typing

import pytest
from typer.testing import CliRunner

import grokinterp.config.validation as C
from grokinterp.config import (
    GrokinterpError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    load_preset,
    parse_value,
    preset_names,
    validate,
)


def _refused(overrides, match, base="demo"):
    """The overrides fail with a one-line GrokinterpError that contains ``match``."""
    with pytest.raises(GrokinterpError) as e:
        apply_overrides(load_preset(base), overrides)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


@pytest.mark.parametrize(
    "override, match",
    [
        # wrong types
        ("train.steps=1.09", "train.steps=1.09 is not valid; allowed: an integer in [1, "),
        ("model.bias=[]", "model.bias=[] is not valid; allowed: true or false"),
        ("train.grokfast=[1]", "train.grokfast=[1] is not valid; allowed: a table"),
        ("task.params=5", "task.params=5 is not valid; allowed: a table"),
        ("train.optimizer=3", "train.optimizer='3' is not valid; allowed: adamw, adam, sgd"),
        # bools are not ints or numbers here, ints are not bools
        ("train.steps=true", "train.steps=True is not valid"),
        ("train.lr=false", "train.lr=False is not valid"),
        ("task.p=true", "task.p=True is not valid"),
        ("model.bias=1", "model.bias=1 is not valid; allowed: true or false"),
        ("train.tf32=0", "train.tf32=0 is not valid"),
        # NaN and infinities
        ("train.lr=nan", "train.lr=nan is not valid; allowed: a number in (0, 1000]"),
        ("model.init_scale=inf", "model.init_scale=inf is not valid"),
        ("train.weight_decay=-inf", "train.weight_decay=-inf is not valid"),
        ("train.early_stop_acc=nan", "train.early_stop_acc=nan is not valid"),
        ("task.train_fraction=nan", "task.train_fraction=nan is not valid"),
        # negative or zero sizes
        ("model.d_model=0", "model.d_model=0 is not valid; allowed: an integer in [1, "),
        ("model.n_layers=-2", "model.n_layers=-2 is not valid"),
        ("train.eval_every=0", "train.eval_every=0 is not valid"),
        ("train.batch_size=0", "train.batch_size=0 is not valid; allowed: an integer in [1, "),
        ("train.warmup_steps=-1", "train.warmup_steps=-1 is not valid"),
        ("task.p=0", "task.p=0 is not valid; allowed: an integer in [2, 2000]"),
        # fractions outside (0, 1)
        ("task.train_fraction=0", "task.train_fraction=0 is not valid"),
        (
            "task.train_fraction=1.0",
            "task.train_fraction=1.0 is not valid; allowed: a number in (0, 1)",
        ),
        ("task.train_fraction=1.5", "task.train_fraction=1.5 is not valid"),
        (
            "train.early_stop_acc=0",
            "train.early_stop_acc=0 is not valid; allowed: a number in (0, 1]",
        ),
        ("train.momentum=1", "train.momentum=1 is not valid"),
        # unknown keys
        ("train.nonsense=1", "unknown key 'train.nonsense'"),
        ("task.nonsense=1", "task.nonsense=1 is not valid: task 'mod_add' has no parameter"),
        ("train.grokfast={kind='ema', nonsense=1}", "train.grokfast.nonsense=1 is not valid"),
        ("bogus.key=1", "must be task.X, model.X or train.X"),
        # lists of the wrong length or type
        (
            "train.betas=[0.9]",
            "train.betas=[0.9] is not valid; allowed: a list of 2 numbers in [0, 1)",
        ),
        ("train.betas=[0.9, 0.98, 0.99]", "train.betas=[0.9, 0.98, 0.99] is not valid"),
        ("train.betas=[0.9, 1.0]", "train.betas=[0.9, 1.0] is not valid"),
        ("train.betas=['a', 'b']", "train.betas=['a', 'b'] is not valid"),
        ("train.betas=[true, 0.9]", "train.betas=[True, 0.9] is not valid"),
        ("train.betas=0.9", "train.betas=0.9 is not valid"),
        # strings for numbers
        ("train.lr='1e-3'", "train.lr='1e-3' is not valid; allowed: a number"),
        ('train.steps="10"', "train.steps='10' is not valid; allowed: an integer"),
        ("model.d_mlp=wide", "model.d_mlp='wide' is not valid"),
        # strings
        ("name=", "name='' is not valid; allowed: a non-empty string"),
        ("train.init_state=''", "train.init_state='' is not valid"),
        ("model.act_fn=swish", "model.act_fn='swish' is not valid; allowed: relu, gelu"),
        # choices across fields
        ("model.name=mlp", "model.name='mlp' is not valid for task 'mod_add' (token inputs)"),
        ("train.merge_embedding_at=10", "train.merge_embedding_at=10 is not valid with"),
        ("train.merge_embedding_at=0", "train.merge_embedding_at=0 is not valid"),
        ("train.grokfast={kind='ma', window=0}", "train.grokfast.window=0 is not valid"),
        ("train.grokfast={kind='xyz'}", "train.grokfast.kind='xyz' is not valid; allowed: ema, ma"),
        ("train.grokfast={kind='ema', alpha=1.0}", "train.grokfast.alpha=1.0 is not valid"),
        ("train.seed=-1", "train.seed=-1 is not valid"),
        ("train.seed=4294967296", "train.seed=4294967296 is not valid"),
    ],
)
def test_bad_values_are_refused_naming_field_value_and_what_is_allowed(override, match):
    _refused([override], match)


def test_task_params_are_checked_per_task():
    _refused(["task.name=mod_div", "task.p=60"], "task.p=60 is not valid; allowed: a prime")
    _refused(["task.name=mod_odd_div_else_sub", "task.p=9"], "task.p=9 is not valid")
    _refused(
        ["task.split=shuffled"],
        "task.split='shuffled' is not valid; allowed: seeded, python_shuffle",
    )
    _refused(["task.n=3", "task.k=5"], "task.k=5 is not valid", base="merrill2023-parity")
    _refused(["task.eps=0"], "task.eps=0 is not valid", base="groktransfer-xor")
    _refused(["task.dimension=2"], "task.dimension=2 is not valid", base="groktransfer-xor")
    _refused(["task.n_train=1797"], "task.n_train=1797 is not valid", base="omnigrok-digits")
    _refused(["task.p=5"], "task 'digits' has no parameter p", base="omnigrok-digits")
    _refused(["task.name=mnist"], "task.path=None is not valid", base="omnigrok-digits")
    _refused(["task.name=mod_pow"], "unknown task 'mod_pow'")


@pytest.mark.parametrize(
    "overrides, which",
    [
        (["task.p=2", "task.train_fraction=0.1"], "train"),  # round(0.1 * 4) = 0
        (["task.p=2", "task.train_fraction=0.9"], "test"),  # round(0.9 * 4) = 4
        (["task.p=3", "task.train_fraction=0.99"], "test"),
        (["task.p=59", "task.train_fraction=0.0001"], "train"),
        (["task.p=3", "task.train_fraction=0.1", "task.split=python_shuffle"], "train"),
    ],
)
def test_task_params_leaving_an_empty_split_are_refused(overrides, which):
    _refused(overrides, f"leaves the {which} split empty")


def test_train_indices_split():
    base = ["task.p=3", "task.split=indices"]
    _refused(base, "task.train_indices=None is not valid; allowed: 1 to 8 distinct integers")
    _refused([*base, "task.train_indices=[]"], "task.train_indices=[] is not valid")
    _refused([*base, f"task.train_indices={list(range(9))}"], "task.train_indices=")
    _refused([*base, "task.train_indices=[0, 0]"], "task.train_indices=[0, 0] is not valid")
    _refused([*base, "task.train_indices=[9]"], "task.train_indices=[9] is not valid")
    _refused([*base, "task.train_indices=[1.5]"], "task.train_indices=[1.5] is not valid")
    cfg = apply_overrides(load_preset("demo"), [*base, "task.train_indices=[0, 4, 8]"])
    assert cfg.task.params["train_indices"] == [0, 4, 8]


def test_the_split_check_agrees_with_the_tasks():
    """Config-level acceptance == make_task building two non-empty splits (small p)."""
    from grokinterp.tasks import make_task

    for name in ("mod_add", "mod_div"):
        for p in (2, 3, 5, 7):
            for frac in (0.01, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 0.95):
                for split in ("seeded", "python_shuffle"):
                    params = {"p": p, "train_fraction": frac, "split": split}
                    try:
                        validate(RunConfig(task=TaskConfig(name, dict(params))))
                        ok = True
                    except GrokinterpError:
                        ok = False
                    try:
                        t = make_task(name, **params)
                        built = len(t.y_train) > 0 and len(t.y_test) > 0
                    except GrokinterpError:
                        built = False
                    assert ok == built, (name, params)


def test_sizes_that_would_exhaust_disk_or_memory_are_refused():
    msg = _refused(
        ["train.steps=100000000", "train.checkpoint_every=1"],
        "train.checkpoint_every=1 with train.steps=100000000 writes up to",
    )
    assert "allowed: at most 100_000" in msg
    _refused(["train.steps=1e10"], "train.steps=10000000000.0 is not valid")
    _refused(["train.steps=10000000000"], "train.steps=10000000000 is not valid")
    # ~62 GB of checkpoints: 2 022 checkpoints of a 7.7M-parameter model in float32
    msg = _refused(
        ["model.d_mlp=60000", "train.steps=100000", "train.checkpoint_every=50"],
        "GB; allowed: at most 50 GB",
    )
    assert msg.startswith("train.checkpoint_every=50 with train.steps=100000")
    apply_overrides(  # the same in float16 fits
        load_preset("demo"),
        [
            "model.d_mlp=60000",
            "train.steps=100000",
            "train.checkpoint_every=50",
            "train.checkpoint_dtype=float16",
        ],
    )
    _refused(["model.d_model=100000", "model.d_mlp=100000"], "GB of training state in float32")
    _refused(
        ["train.steps=100000000", "train.checkpoint_every=10000", "train.eval_every=1"],
        "evaluations",
    )
    _refused(
        ["task.n_train=100000000", "task.dimension=100"], "input values", base="groktransfer-xor"
    )


def test_checkpoint_bound_is_an_upper_bound_of_the_schedule():
    from grokinterp.training.schedule import checkpoint_schedule

    for steps in (1, 2, 7, 100, 999, 1000, 12345):
        for every in (1, 2, 3, 50, 100, 5000):
            for n_log in (0, 1, 5, 20, 200):
                t = TrainConfig(steps=steps, checkpoint_every=every, checkpoint_log_steps=n_log)
                bound = 2 + min(n_log, every - 1) + steps // every
                assert len(checkpoint_schedule(steps, every, n_log)) <= bound
                validate(RunConfig(train=t))


def test_parameter_estimate_matches_the_models():
    """The budget's parameter count is an upper estimate within 1% of the real models."""
    from grokinterp.models import build_model
    from grokinterp.tasks import make_task

    extra = {
        "demo": [[], ["model.embedding=factorized", "model.normalization=LN"]],
        "minegishi2024-mlp": [[], ["model.combine=concat", "model.mlp_out=false"]],
        "groktransfer-xor": [[], ["model.embedding=factorized", "model.n_layers=3"]],
        "omnigrok-digits": [[]],
        "merrill2023-parity": [["model.bias=false"]],
    }
    for preset, variants in extra.items():
        for over in variants:
            cfg = apply_overrides(load_preset(preset), over)
            model = build_model(cfg.model, make_task(cfg.task.name, **cfg.task.params))
            real = sum(p.numel() for p in model.parameters())
            est = C.estimate_params(cfg.model, cfg.task.name, cfg.task.params)
            assert real <= est <= real * 1.01 + 16, (preset, over, real, est)


def test_accepted_values_are_normalized_to_their_declared_types():
    cfg = apply_overrides(
        load_preset("demo"),
        ["train.lr=1", "train.betas=[0, 0.5]", "model.init_scale=2", "train.early_stop_acc=1"],
    )
    assert type(cfg.train.lr) is float and cfg.train.lr == 1.0
    assert cfg.train.betas == (0.0, 0.5) and all(type(b) is float for b in cfg.train.betas)
    assert type(cfg.model.init_scale) is float and type(cfg.train.early_stop_acc) is float
    # string options keep words TOML would read otherwise
    cfg = apply_overrides(
        load_preset("demo"), ["name=2024", "notes=none", "model.normalization=none"]
    )
    assert (cfg.name, cfg.notes, cfg.model.normalization) == ("2024", "none", "none")
    cfg = apply_overrides(load_preset("demo"), ["train.init_state=none", "train.batch_size=none"])
    assert cfg.train.init_state is None and cfg.train.batch_size is None


def test_validate_refuses_wrong_objects_set_in_code():
    cfg = load_preset("demo")
    cfg.train.steps = 10.0
    with pytest.raises(GrokinterpError, match=r"train.steps=10.0 is not valid"):
        validate(cfg)
    cfg = load_preset("demo")
    cfg.model = {"name": "transformer"}
    with pytest.raises(GrokinterpError, match="model=.* is not valid; allowed: a ModelConfig"):
        validate(cfg)
    with pytest.raises(GrokinterpError, match="must be a RunConfig"):
        validate({"task": {}})


def test_every_presets_validates_and_round_trips():
    assert len(preset_names()) >= 10
    for name in preset_names():
        cfg = load_preset(name)
        validate(cfg)
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_every_field_has_a_type_and_a_range():
    """Each non-bool field of each checked dataclass has a Rule; the checker knows each type."""
    for cls, rules in C._RULES.items():
        hints = typing.get_type_hints(cls)
        assert set(rules) <= set(hints), cls
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            base = C._optional(tp) or tp
            if base in (bool,) or typing.get_origin(base) is dict:
                continue
            if base in (TaskConfig, ModelConfig, TrainConfig):
                continue
            assert f.name in rules, f"{cls.__name__}.{f.name} has no range/choices"
            C._allowed(tp, rules[f.name])  # describable
    for cls in (RunConfig, TaskConfig, ModelConfig, TrainConfig):
        assert cls in C._RULES


def test_task_tables_match_the_tasks():
    """config may not import tasks (layering): its copy of their names, parameters, defaults
    and prime/zero rules must match grokinterp.tasks."""
    from grokinterp.tasks import TASKS
    from grokinterp.tasks.images import make_digits, make_mnist
    from grokinterp.tasks.modular import MODULAR_OPS, make_modular
    from grokinterp.tasks.parity import make_sparse_parity
    from grokinterp.tasks.xor_cluster import make_xor_cluster

    assert set(C._TASK_PARAMS) == set(TASKS)
    assert set(C.MODULAR_TASKS) == set(MODULAR_OPS)
    assert set(C._PRIME_MODULUS) == {k for k, (_, prime, _) in MODULAR_OPS.items() if prime}
    assert set(C._NONZERO_Y) == {k for k, (_, _, keep) in MODULAR_OPS.items() if keep}
    fns = {
        C._ModularParams: make_modular,
        C._ParityParams: make_sparse_parity,
        C._XorClusterParams: make_xor_cluster,
        C._DigitsParams: make_digits,
        C._MnistParams: make_mnist,
    }
    for cls, fn in fns.items():
        sig = {
            k: v.default
            for k, v in inspect.signature(fn).parameters.items()
            if v.default is not inspect.Parameter.empty
        }
        assert dataclasses.asdict(cls()) == sig, cls.__name__
    from sklearn.datasets import load_digits

    assert len(load_digits().target) == C.N_DIGITS


def test_grokfast_tables_match_the_filters():
    from grokinterp.training.optim import GrokfastEMA, GrokfastMA

    for cls, impl in ((C._GrokfastEMA, GrokfastEMA), (C._GrokfastMA, GrokfastMA)):
        sig = {k: v.default for k, v in inspect.signature(impl).parameters.items()}
        assert {k: v for k, v in dataclasses.asdict(cls()).items() if k != "kind"} == sig


@pytest.mark.parametrize(
    "text",
    [
        "",
        "=",
        "[",
        "[[[[",
        "[" * 5000,
        "{" * 3000,
        "1\nx = 2",
        '"\udc80"',
        "\udc80",
        "\0",
        "1979-05-27",
        "9" * 5000,
        "'''",
        "inf",
        "{a = {b = [1, {c = 2}]}}",
        "[1, 'a', [true]]",
    ],
)
def test_parse_value_never_raises_anything_else(text):
    try:
        parse_value(text)
    except GrokinterpError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"[]", "a run config must be a table (mapping), not list"),
        (b'"a string"', "not str"),
        (b"42", "not int"),
        (b'{"train": {"betas": 5}}', "train.betas=5 is not valid"),
        (b'{"train": {"steps": NaN}}', "train.steps=nan is not valid"),
        (b'{"train": {"steps": 1.5}}', "train.steps=1.5 is not valid"),
        (b'{"task": {"params": [1]}}', "task.params must be a table"),
        (b'{"task": {"p": {"x": 1}}}', "task.p={'x': 1} is not valid"),
        (b'{"model": []}', "config section [model] must be a table"),
        (b'{"model": {"bias": "yes"}}', "model.bias='yes' is not valid"),
        (b'{"extra": 1}', "unknown config section(s): extra"),
        (b'{"name": ["x"]}', "name=['x'] is not valid"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b'{"a": ' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
        (b'{"train": {"steps": ' + b"9" * 5000 + b"}}", "cannot parse config file"),
        (b"{not json", "cannot parse config file"),
    ],
)
def test_bad_json_config_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(GrokinterpError) as e:
        load_config(path)
    assert str(path) in str(e.value) and match in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"task = 5", "config section [task] must be a table, not 5"),
        (b"[train]\nsteps = 1.09", "train.steps=1.09 is not valid"),
        (b"[train]\nbetas = [0.9]", "train.betas=[0.9] is not valid"),
        (b'[model]\nd_model = "64"', "model.d_model='64' is not valid"),
        (b"[task]\nparams = [1]", "task.params must be a table"),
        (b"[train]\ngrokfast = { kind = 'ema', alpha = nan }", "train.grokfast.alpha=nan"),
        (b"[train]\nsteps = 1979-05-27", "train.steps=datetime.date(1979, 5, 27) is not valid"),
        (b"[task]\n\xc3\x28 = 1", "is not UTF-8 text"),
        (b"v = " + b"[" * 3000 + b"]" * 3000, "nested too deeply"),
        (b"[train\n", "cannot parse config file"),
    ],
)
def test_bad_toml_config_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(GrokinterpError) as e:
        load_config(path)
    assert str(path) in str(e.value) and match in str(e.value) and "\n" not in str(e.value)


def test_cli_train_with_a_bad_value_exits_2_on_one_line_and_writes_nothing(tmp_path):
    from grokinterp.cli import app

    out = tmp_path / "x"
    result = CliRunner().invoke(
        app,
        ["train", "--preset", "demo", "--set", "train.steps=1.09", "--out", str(out), "-q"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "train.steps=1.09 is not valid; allowed: an integer in [1, 1_000_000_000]" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_train_validates_before_touching_the_disk(tmp_path):
    from grokinterp.training import train

    cfg = load_preset("demo")
    cfg.train.betas = (0.9, math.nan)
    with pytest.raises(GrokinterpError, match="train.betas"):
        train(cfg, tmp_path / "r", progress=False)
    cfg = load_preset("demo")
    cfg.task.params["train_fraction"] = 0.0001
    with pytest.raises(GrokinterpError, match="split empty"):
        train(cfg, tmp_path / "r", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sweep_validates_every_cell_before_any_trains(tmp_path, tiny_config):
    from grokinterp.experiments.sweep import expand_grid, parse_grid, run_sweep

    grid = ["train.weight_decay=0.1,-1,nan", "task.train_fraction=0.3,0.001"]
    with pytest.raises(GrokinterpError) as e:
        expand_grid(tiny_config, [parse_grid(g) for g in grid], [0, 1])
    msg = str(e.value)
    assert msg.startswith(
        "5 of 6 cells fail validation: cell weight_decay=0.1__train_fraction=0.001"
    )
    assert "and 2 more" in msg and "\n" not in msg
    out = tmp_path / "s"
    with pytest.raises(GrokinterpError, match="fail validation"):
        run_sweep(tiny_config, grid, out, progress=False, use_ray=False)
    assert not out.exists()
    # grid values land in sweep.json: a TOML date stays its text
    assert parse_grid("train.init_state=1979-05-27,x").values == ("1979-05-27", "x")


def test_cli_sweep_with_a_bad_cell_exits_2(tmp_path):
    pytest.importorskip("ray")
    from grokinterp.cli import app

    out = tmp_path / "s"
    result = CliRunner().invoke(
        app,
        ["sweep", "--preset", "demo", "--grid", "train.steps=10,1.5", "--out", str(out), "-q"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2, result.output
    assert "cell steps=1.5: train.steps=1.5 is not valid" in " ".join(result.output.split())
    assert not out.exists()
