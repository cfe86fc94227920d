"""The resume state (issue 15): safetensors + JSON that loading can never execute, exact round
trips, bit-exact resume, refusal of planted pickles and of corrupt or mismatched files, and the
safe reading of old runs' pickled ``state/latest.pt``."""

import hashlib
import json
import math
import pickle
import shutil

import pytest
import torch
from typer.testing import CliRunner

from grokinterp.cli import app
from grokinterp.config import GrokinterpError, apply_overrides
from grokinterp.store import load_resume_state, save_resume_state
from grokinterp.store.state import encode_state
from grokinterp.training import group as group_mod
from grokinterp.training import train
from grokinterp.training.optim import GrokfastEMA, GrokfastMA

from .conftest import TINY_OVERRIDES, tiny


def assert_same(a, b, path="state"):
    """Equal values of the same types all the way down (tuples stay tuples, int keys ints)."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def _nested_state() -> dict:
    """AdamW after two steps, Grokfast EMA and MA buffers, RNG states, masks and odd scalars."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
    ema, ma = GrokfastEMA(alpha=0.9), GrokfastMA(window=3, warmup=False)
    for _ in range(2):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        ema(params)
        ma(params)
        opt.step()
    base = torch.arange(12.0)
    return {
        "step": 2,
        "optimizer": opt.state_dict(),  # int keys, step tensors, betas tuple, None flags
        "ema": ema.state_dict(),
        "ma": ma.state_dict(),  # a queue of lists of tensors
        "empty_filter": GrokfastEMA().state_dict(),  # mu is None
        "torch_rng": torch.get_rng_state(),
        "data_rng": torch.Generator().manual_seed(3).get_state(),
        "mask": torch.rand(3, 4) > 0.5,
        "views": [base[:6], base[6:]],  # share one storage
        "scalars": {"f64": torch.tensor(1.0, dtype=torch.float64), "i": torch.tensor([7])},
        "floats": [0.1, 1e-300, float("inf"), -float("inf"), float("nan")],
        "misc": {"__tensor__": "not a tensor", 3.5: True, (1, 2): None, "s": "x", "n": None},
        "norm_target": None,
        "wall": 1.2345678901234567,
    }


def test_nested_state_round_trip_is_exact(tmp_path):
    state = _nested_state()
    save_resume_state(tmp_path, state)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "latest.json",
        "latest.safetensors",
    ]
    doc = json.loads((tmp_path / "state" / "latest.json").read_text())  # strict JSON
    assert doc["state"]["step"] == 2 and doc["state"]["optimizer"]["param_groups"][0]["lr"] == 1e-3
    loaded = load_resume_state(tmp_path)
    assert_same(state, loaded)
    # the restored optimizer continues exactly as the original
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    opt = torch.optim.AdamW(params, lr=1.0)
    opt.load_state_dict(loaded["optimizer"])
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)
    assert_same(opt.state_dict(), state["optimizer"])
    with pytest.raises(TypeError, match="set"):
        encode_state({"bad": {1, 2}})


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A tiny run trained to step 20 of a 30-step config (resumable)."""
    out = tmp_path_factory.mktemp("short") / "r"
    train(tiny(["train.steps=20"]), out, progress=False)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


class _Boom:
    """Unpickling this writes a marker file: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_planted_legacy_pickle_never_runs_without_trust(tmp_path, short_run, writer):
    run = _copy(short_run, tmp_path / "r")
    for f in ("latest.json", "latest.safetensors"):
        (run / "state" / f).unlink()  # an old run: only state/latest.pt
    marker = tmp_path / "marker"
    legacy = run / "state" / "latest.pt"
    if writer == "pickle":
        legacy.write_bytes(pickle.dumps({"step": _Boom(marker)}))
    else:
        torch.save({"step": _Boom(marker)}, legacy)
    with pytest.raises(GrokinterpError, match="--trust-pickle") as err:
        train(tiny(), run, resume=True, progress=False)
    assert not marker.exists()
    assert str(legacy) in str(err.value) and "\n" not in str(err.value)
    # the CLI says it in one line, exit code 2, no traceback
    cfg = ["--set", "train.steps=30"]
    args = ["train", "--preset", "demo", *_tiny_cli(), *cfg, "--out", str(run), "--resume", "-q"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--trust-pickle" in result.output and not marker.exists()
    # trusting the file takes the legacy full-unpickler path (so the code does run)
    with pytest.raises(GrokinterpError, match="latest.pt"):
        train(tiny(), run, resume=True, progress=False, trust_pickle=True)
    assert marker.read_text() == "ran"


def _tiny_cli():
    return [a for o in TINY_OVERRIDES if not o.startswith("train.steps") for a in ("--set", o)]


def test_pickles_planted_under_the_new_names_never_run(tmp_path, short_run):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"step": _Boom(marker)})
    run = _copy(short_run, tmp_path / "r")
    state = run / "state"
    # a pickle as the tensors file, with a JSON that vouches for it (size and hash match)
    doc = json.loads((state / "latest.json").read_text())
    (state / "latest.safetensors").write_bytes(payload)
    doc.update(tensors_bytes=len(payload), tensors_sha256=hashlib.sha256(payload).hexdigest())
    (state / "latest.json").write_text(json.dumps(doc))
    for trust in (False, True):  # trust_pickle concerns only the legacy file
        with pytest.raises(GrokinterpError, match="latest.safetensors is corrupt"):
            train(tiny(), run, resume=True, progress=False, trust_pickle=trust)
    # a pickle as the JSON file
    (state / "latest.json").write_bytes(payload)
    for trust in (False, True):
        with pytest.raises(GrokinterpError, match="latest.json is truncated or corrupt"):
            train(tiny(), run, resume=True, progress=False, trust_pickle=trust)
    # both, plus an old latest.pt: the new names win and nothing is unpickled
    (state / "latest.pt").write_bytes(payload)
    with pytest.raises(GrokinterpError, match="latest.json"):
        train(tiny(), run, resume=True, progress=False, trust_pickle=True)
    assert not marker.exists()


def test_kill_and_resume_is_bit_exact_with_the_new_files(tmp_path, monkeypatch):
    cfg = tiny(["train.grokfast={kind='ma', window=3, lamb=2.0}"])
    straight = train(cfg, tmp_path / "a", progress=False)
    real_step = group_mod.SeedGroup.train_step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt  # killed between the checkpoints at 10 and 20
        real_step(self)

    monkeypatch.setattr(group_mod.SeedGroup, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(group_mod.SeedGroup, "train_step", real_step)
    state = tmp_path / "b" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["latest.json", "latest.safetensors"]
    assert json.loads((state / "latest.json").read_text())["state"]["step"] == 10
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == straight.steps
    for s in straight.steps:
        a, b = straight.load_state(s), resumed.load_state(s)
        assert all(torch.equal(a[k], b[k]) for k in a), s
    strip = lambda rows: [{k: v for k, v in m.items() if k != "wall_time"} for m in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(straight.metrics)
    no_wall = lambda path: load_resume_state(path) | {"wall": 0.0}  # noqa: E731
    assert_same(no_wall(straight.path), no_wall(resumed.path))


def test_old_run_with_latest_pt_resumes_safely_and_bit_exactly(tmp_path, short_run):
    straight = train(tiny(), tmp_path / "straight", progress=False)
    run = _copy(short_run, tmp_path / "old")
    torch.save(load_resume_state(run), run / "state" / "latest.pt")  # what old versions wrote
    for f in ("latest.json", "latest.safetensors"):
        (run / "state" / f).unlink()
    resumed = train(tiny(), run, resume=True, progress=False)  # weights_only suffices
    a, b = straight.load_state(30), resumed.load_state(30)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the pickle is replaced by the new files at the next checkpoint
    assert sorted(p.name for p in (run / "state").iterdir()) == [
        "latest.json",
        "latest.safetensors",
    ]


def test_corrupt_truncated_or_mismatched_state_is_a_one_line_error(tmp_path, short_run):
    def resume_error(run) -> str:
        with pytest.raises(GrokinterpError) as err:
            train(tiny(), run, resume=True, progress=False)
        assert "\n" not in str(err.value)
        return str(err.value)

    # truncated tensors file
    run = _copy(short_run, tmp_path / "trunc")
    f = run / "state" / "latest.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert "does not match" in resume_error(run) and str(f) in resume_error(run)
    # garbage tensors file, even with a JSON that matches its hash
    run = _copy(short_run, tmp_path / "garbage")
    f, j = run / "state" / "latest.safetensors", run / "state" / "latest.json"
    f.write_bytes(b"\x00\xff garbage" * 10)
    assert "does not match" in resume_error(run)
    doc = json.loads(j.read_text())
    doc.update(tensors_bytes=100, tensors_sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    j.write_text(json.dumps(doc))
    assert "latest.safetensors is corrupt" in resume_error(run)
    # a new tensors file with an old JSON (a kill between the two writes)
    run = _copy(short_run, tmp_path / "mismatch")
    old_json = (run / "state" / "latest.json").read_text()
    train(apply_overrides(tiny(), ["train.steps=25"]), run, resume=True, progress=False)
    (run / "state" / "latest.json").write_text(old_json)
    assert "does not match" in resume_error(run)
    # truncated JSON; JSON naming a tensor the file lacks; tensors alone
    run = _copy(short_run, tmp_path / "json")
    j = run / "state" / "latest.json"
    text = j.read_text()
    j.write_text(text[: len(text) // 2])
    assert "latest.json is truncated or corrupt" in resume_error(run)
    j.write_text(text.replace('"model.unembed.W_U"', '"model.nope"'))
    assert "nope" in resume_error(run)
    j.unlink()
    assert "latest.json is missing" in resume_error(run)
