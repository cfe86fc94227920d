"""Property-based fuzzing of the config layer (issue 15 item 3).

Random ``--set`` overrides, random config dicts and random config files (JSON, TOML, raw bytes)
go through ``apply_overrides`` / ``parse_value`` / ``RunConfig.from_dict`` / ``load_config``.
Every failure must be a one-line :class:`GrokinterpError`; every accepted config must hold
values of exactly its declared types, inside the documented ranges and budgets. About 2 100
examples in all (~10 s on 2 cores). Examples are derandomized (the same every run) unless
GROKINTERP_FUZZ_RANDOM=1, which explores new ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from grokinterp.training.schedule import checkpoint_schedule

FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=not os.environ.get("GROKINTERP_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASES = {
    name: load_preset(name)
    for name in (
        "demo",
        "grokfast-mod-mul",
        "merrill2023-parity",
        "groktransfer-xor",
        "omnigrok-digits",
        "groktransfer-mod-add",
    )
}
BASE_COPIES = {name: cfg.copy() for name, cfg in BASES.items()}
COUNTS: Counter = Counter()
hints_of = functools.cache(typing.get_type_hints)
ANY_CHAR = st.characters(exclude_categories=[])  # every code point, lone surrogates too


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = COUNTS["accepted"] + COUNTS["GrokinterpError"]
    print(
        f"\nconfig fuzz: {total} examples, {COUNTS['accepted']} accepted, "
        f"{COUNTS['GrokinterpError']} GrokinterpError, 0 other exceptions"
    )


# ----------------------------------------------------------------------------- strategies

SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}
FIELD_KEYS = sorted(
    f"{sec}.{f.name}" for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)
)
TASK_KEYS = sorted(
    {f"task.{f.name}" for cls in set(C._TASK_PARAMS.values()) for f in dataclasses.fields(cls)}
)
GROKFAST_KEYS = sorted(
    {f"train.grokfast.{f.name}" for cls in C._GROKFAST.values() for f in dataclasses.fields(cls)}
)
REAL_KEYS = FIELD_KEYS + TASK_KEYS + GROKFAST_KEYS + ["name", "notes", "parent"]
JUNK_KEYS = [
    "train",
    "train.",
    ".steps",
    "train.steps.x",
    "task.params.p",
    "model..d_model",
    "x.y",
    "task.name.x",
    "train.grokfast",
    "TRAIN.STEPS",
    " train.steps ",
    "train.grokfast.kind.x",
]
CHOICES = sorted(
    {c for rules in C._RULES.values() for r in rules.values() for c in r.choices} | {"none"}
)
WORDS = [
    "1e10",
    "1e-3",
    "1.09",
    "0",
    "-0",
    "0.0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "11",
    "true",
    "false",
    "True",
    "none",
    "null",
    "nan",
    "inf",
    "-inf",
    "+inf",
    "0x10",
    "1_000",
    "''",
    '""',
    "[]",
    "{}",
    "[0.9, 0.98]",
    "[0.9]",
    "[0.9, 1.0]",
    "[true, false]",
    "{kind='ema'}",
    "{kind='ma', window=10}",
    "{kind='ema', alpha=0.5, lamb=1}",
    "1979-05-27",
    "07:32:00",
    "[[1, 2], [3]]",
    "'1e-3'",
    '"10"',
    "[0, 1, 2]",
    "9" * 30,
    "[" * 40 + "]" * 40,
    "[" * 2000,
    "{a = {b = {c = 1}}}",
    "'a\\nb'",
    '"\\u0000"',
]
numbers_text = st.one_of(
    st.integers(-3, 300).map(str),
    st.integers().map(str),
    st.floats(0, 1).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
scalar_text = st.one_of(
    numbers_text,
    st.sampled_from(WORDS),
    st.sampled_from(CHOICES),
    st.text(ANY_CHAR, max_size=12),  # any code point, surrogates included
)
value_text = st.one_of(
    scalar_text,
    st.lists(scalar_text, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
)
key_text = st.one_of(st.sampled_from(REAL_KEYS), st.sampled_from(JUNK_KEYS), st.text(max_size=15))
override = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", key_text, value_text),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(REAL_KEYS), value_text),
    st.text(max_size=20),  # often without '='
)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
    st.sampled_from(CHOICES),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def config_dicts(draw):
    """A preset's dict with random keys set to random values, sections replaced or dropped."""
    d = draw(st.sampled_from(list(BASES.values()))).to_dict()
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.integers(0, 9))
        if how == 0:  # a whole section (or the top level's name/notes/parent)
            d[draw(st.sampled_from(["task", "model", "train", "name", "notes", "parent"]))] = draw(
                json_value
            )
        elif how == 1:
            d.pop(draw(st.sampled_from(["task", "model", "train", "name"])), None)
        elif how == 2:
            d[draw(st.text(max_size=6))] = draw(json_value)
        else:
            sec = draw(st.sampled_from(["task", "model", "train"]))
            if not isinstance(d.get(sec), dict):
                continue
            keys = [k.split(".", 1)[1] for k in REAL_KEYS if k.startswith(sec + ".")]
            key = draw(st.one_of(st.sampled_from(keys), st.text(max_size=6)))
            target = d[sec]
            if sec == "task" and how < 6 and isinstance(target.get("params"), dict):
                target = target["params"]  # the nested form instead of the flat one
            target[key] = draw(json_value)
    return d


# ----------------------------------------------------------------------------- the property


def _is(value, tp) -> bool:
    """``value`` is exactly of annotation ``tp`` (an independent, strict re-check)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else _is(value, a) for a in args)
    if origin is tuple:
        return type(value) is tuple and len(value) == len(args) and all(map(_is, value, args))
    if origin is list:
        return type(value) is list and all(_is(v, args[0]) for v in value)
    if origin is dict:
        return type(value) is dict and all(type(k) is str for k in value)
    if tp is float:
        return type(value) is float and math.isfinite(value)
    return type(value) is tp


def _in_range(value, rule) -> bool:
    if value is None or rule is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(_in_range(v, rule) for v in value)
    return rule.ok(value)


def assert_well_formed(cfg: RunConfig) -> None:
    """Every field of the declared type and range; the task, budget and splits sane."""
    assert type(cfg) is RunConfig
    for obj, cls in (
        (cfg, RunConfig),
        (cfg.task, TaskConfig),
        (cfg.model, ModelConfig),
        (cfg.train, TrainConfig),
    ):
        hints = hints_of(cls)
        for f in dataclasses.fields(cls):
            v = getattr(obj, f.name)
            if cls is RunConfig and f.name in SECTIONS:
                assert type(v) is SECTIONS[f.name]
                continue
            assert _is(v, hints[f.name]), (cls.__name__, f.name, v)
            assert _in_range(v, C._RULES[cls].get(f.name)), (cls.__name__, f.name, v)
    m, t, task = cfg.model, cfg.train, cfg.task
    # the brief's categories, checked without the rule table
    for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_embed", "embed_rank"):
        assert getattr(m, k) >= 1
    assert m.init_scale > 0 and m.output_scale > 0
    assert 1 <= t.steps <= C.MAX_STEPS and t.eval_every >= 1 and t.checkpoint_every >= 1
    assert t.lr > 0 and t.weight_decay >= 0 and 0 <= t.momentum < 1
    assert all(0 <= b < 1 for b in t.betas) and len(t.betas) == 2
    assert t.batch_size is None or t.batch_size >= 1
    assert t.early_stop_acc is None or 0 < t.early_stop_acc <= 1
    # task parameters: known for this task, of their declared type and range
    kind = C._TASK_PARAMS[task.name]
    hints = hints_of(kind)
    for k, v in task.params.items():
        assert k in hints and _is(v, hints[k]) and _in_range(v, C._RULES[kind].get(k)), (k, v)
    if "train_fraction" in task.params:
        assert 0 < task.params["train_fraction"] < 1
    if kind is C._ModularParams and task.params.get("p", 97) <= 60:
        from grokinterp.tasks import make_task

        built = make_task(task.name, **task.params)
        assert len(built.y_train) > 0 and len(built.y_test) > 0
    # grokfast
    if t.grokfast:
        g = C._GROKFAST[t.grokfast["kind"]]
        gh = hints_of(g)
        assert all(k in gh and _is(v, gh[k]) for k, v in t.grokfast.items())
    # the budget: the real checkpoint schedule is within the cap
    n = len(checkpoint_schedule(t.steps, t.checkpoint_every, t.checkpoint_log_steps))
    assert n <= C.MAX_CHECKPOINTS
    n_params = C.estimate_params(m, task.name, task.params)
    assert n * n_params * 2 <= C.MAX_CHECKPOINT_BYTES
    # and it survives the round trip through run.json
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _outcome(fn, *args):
    """Run ``fn``; count acceptance or a (one-line) GrokinterpError; anything else fails."""
    try:
        out = fn(*args)
    except GrokinterpError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        COUNTS["GrokinterpError"] += 1
        return None, e
    COUNTS["accepted"] += 1
    return out, None


# ----------------------------------------------------------------------------- the fuzz tests


@settings(FUZZ, max_examples=900)
@given(base=st.sampled_from(list(BASES)), overrides=st.lists(override, min_size=1, max_size=4))
def test_fuzz_set_overrides(base, overrides):
    cfg, _ = _outcome(apply_overrides, BASES[base], overrides)
    if cfg is not None:
        assert_well_formed(cfg)
    assert BASES[base] == BASE_COPIES[base]  # the base is never changed


@settings(FUZZ, max_examples=350)
@given(base=st.sampled_from(list(BASES)), key=st.sampled_from(REAL_KEYS), value=value_text)
def test_fuzz_one_real_key(base, key, value):
    """One override of a real key: accepted configs hold exactly the declared type."""
    cfg, _ = _outcome(apply_overrides, BASES[base], [f"{key}={value}"])
    if cfg is not None:
        assert_well_formed(cfg)


@settings(FUZZ, max_examples=250)
@given(text=st.one_of(value_text, st.text(ANY_CHAR, max_size=40)))
def test_fuzz_parse_value(text):
    _outcome(parse_value, text)


@settings(FUZZ, max_examples=350)
@given(d=config_dicts())
def test_fuzz_config_dicts(d):
    cfg, _ = _outcome(RunConfig.from_dict, d)
    if cfg is not None:
        assert_well_formed(cfg)


def _toml_text(d: dict, draw) -> str:
    """The dict as TOML, some values replaced by raw fuzz text (often not valid TOML)."""
    lines = []
    for sec in ("task", "model", "train"):
        body = d.get(sec)
        if not isinstance(body, dict):
            continue
        lines.append(f"[{sec}]")
        for k, v in body.items():
            if isinstance(v, dict):
                continue
            text = json.dumps(v) if draw(st.integers(0, 3)) else draw(value_text)
            lines.append(f"{json.dumps(k)} = {text}")
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=250)
@given(d=config_dicts(), form=st.sampled_from(["json", "toml", "bytes"]), data=st.data())
def test_fuzz_config_files(tmp_path_factory, d, form, data):
    folder = tmp_path_factory.mktemp("cfg", numbered=True)
    if form == "json":
        path = folder / "c.json"
        path.write_text(json.dumps(d))  # NaN/Infinity included, as Python writes them
    elif form == "toml":
        path = folder / "c.toml"
        path.write_bytes(_toml_text(d, data.draw).encode("utf-8", "surrogatepass"))
    else:
        path = folder / data.draw(st.sampled_from(["c.toml", "c.json"]))
        path.write_bytes(data.draw(st.binary(max_size=80)))
    cfg, err = _outcome(load_config, path)
    if err is not None:
        assert str(path) in str(err), str(err)  # the message names the file
    else:
        assert_well_formed(cfg)
