"""Experiment trackers (issue 16): ``grokinterp train --log tensorboard,wandb`` logs exactly the
metrics.jsonl rows, read back from TensorBoard's event file and W&B's offline run file; resumes
continue the same tracker runs; analysis curves land beside them; bad names and missing packages
are one-line errors. W&B runs offline only (never the network)."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from grokinterp.cli import app
from grokinterp.config import GrokinterpError
from grokinterp.store import Run
from grokinterp.store.lock import is_vacant_dir
from tests.conftest import TINY_OVERRIDES

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

runner = CliRunner()
# `grokinterp train --preset demo --set ...`: the demo preset made tiny (30 steps, well under 5 s)
DEMO = ["--preset", "demo", *(a for o in TINY_OVERRIDES for a in ("--set", o)), "-q"]


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path_factory, monkeypatch):
    """W&B offline, its own files (settings, cache, artifacts) in a temporary folder."""
    home = tmp_path_factory.mktemp("wandb-home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")  # no system-metrics sampler thread
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(home / "artifacts"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)


# ----------------------------------------------------------------------------- readers


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from ``<run>/logs/tensorboard``, as TensorBoard reads it (its
    accumulator, which applies the purges of resumed sessions)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice {steps}"
        out[tag] = {e.step: tensor_util.make_ndarray(e.tensor_proto).item() for e in events}
    return out


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: W&B's LevelDB-style log (7-byte header
    ``:W&B`` + magic 0xBEE1 + version; 32 KiB blocks of chunks: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def wandb_runs(run_dir: Path) -> list[tuple[object, list[dict]]]:
    """Each offline W&B run in ``<run>/logs/wandb`` (oldest first): its run record and history
    rows (W&B's own ``_step``/``_runtime``/``_timestamp`` left out)."""
    out = []
    for f in sorted((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb")):
        run, rows = None, []
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run = rec.run
            elif kind == "history":
                row = {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in rec.history.item
                }
                rows.append({k: v for k, v in row.items() if not k.startswith("_")})
        out.append((run, rows))
    return out


def by_step(rows: list[dict]) -> dict[int, dict]:
    """Rows keyed by step; a later row of a step replaces an earlier one (a resume's)."""
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["step"], {}).update(r)
    return out


def f32(x: float) -> float:
    """``x`` rounded to float32: TensorBoard's scalar format."""
    return float(np.float32(x))


def assert_trackers_equal_metrics(run_dir: Path) -> None:
    metrics = Run.open(run_dir).metrics
    keys = [k for k in metrics[0] if k != "step"]
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(keys)
    tb = tensorboard_scalars(run_dir)
    for k in keys:  # every scalar at every step: float32-exact in TensorBoard, exact in W&B
        assert tb[k] == {m["step"]: f32(m[k]) for m in metrics}, k
    wb = by_step([r for _, rows in wandb_runs(run_dir) for r in rows])
    assert sorted(wb) == [m["step"] for m in metrics]
    for m in metrics:
        assert {k: wb[m["step"]][k] for k in keys} == {k: m[k] for k in keys}


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One demo run trained by the CLI with both trackers (W&B offline)."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("wandb-module")
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB__DISABLE_STATS", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(home))
    mp.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path_factory.mktemp("trackers") / "demo"
    res = runner.invoke(app, ["train", *DEMO, "--log", "tensorboard,wandb", "-o", str(out)])
    mp.undo()
    assert res.exit_code == 0, res.output
    return out


def test_train_logs_equal_metrics(logged_run):
    assert Run.open(logged_run).config.train.log == ["tensorboard", "wandb"]
    assert any((logged_run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert_trackers_equal_metrics(logged_run)
    meta = json.loads((logged_run / "logs" / "wandb.json").read_text())
    [(run, _)] = wandb_runs(logged_run)
    assert run.run_id == meta["id"] and run.display_name == "demo"
    assert run.project == "grokinterp"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["train"]["steps"] == 30 and config["task"]["params"]["p"] == 11  # RunConfig


def test_analysis_curves_join_the_tracker_runs(logged_run):
    res = runner.invoke(
        app, ["analyze", str(logged_run), "--only", "fourier", "--log", "tensorboard,wandb", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "analysis curves to tensorboard, wandb" in res.output
    import grokinterp.api as api

    results = api.analyze(logged_run, ["fourier"], progress=False)  # from the cache
    steps = results.steps
    tb = tensorboard_scalars(logged_run)
    wb = by_step([r for _, rows in wandb_runs(logged_run) for r in rows])
    for key in ("restricted_loss", "excluded_loss", "embed_gini"):
        want = dict(zip(steps, results[f"fourier/{key}"].double().tolist(), strict=True))
        assert tb[f"analysis/fourier/{key}"] == {s: f32(v) for s, v in want.items()}
        assert {s: wb[s][f"analysis/fourier/{key}"] for s in steps} == want
    assert "analysis/fourier/key_mask" not in tb  # masks are not curves
    assert_trackers_equal_metrics(logged_run)  # the training curves are untouched
    # the same W&B run (id), resumed in a second offline session
    ids = {run.run_id for run, _ in wandb_runs(logged_run)}
    assert ids == {json.loads((logged_run / "logs" / "wandb.json").read_text())["id"]}


def test_resume_continues_the_tracker_runs(tmp_path, tiny_config, monkeypatch):
    """Killed after logging steps past its last checkpoint, then resumed: TensorBoard purges the
    killed session's later steps, W&B resumes the same id; both equal metrics.jsonl."""
    from grokinterp.training import train
    from grokinterp.training.group import SeedGroup

    cfg = tiny_config.copy()
    cfg.train.log = ["tensorboard", "wandb"]
    out = tmp_path / "run"
    step_fn = SeedGroup.train_step

    def dies_at_27(self):
        if self.step == 27:  # rows up to step 25 logged; the last checkpoint is step 20
            raise KeyboardInterrupt
        step_fn(self)

    monkeypatch.setattr(SeedGroup, "train_step", dies_at_27)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(SeedGroup, "train_step", step_fn)
    before = {r["step"] for _, rows in wandb_runs(out) for r in rows}
    assert 25 in before and 20 in Run.open(out).steps and 25 not in Run.open(out).steps
    run = train(cfg, out, resume=True, progress=False)
    assert run.info["status"] == "complete"
    assert_trackers_equal_metrics(out)
    runs = wandb_runs(out)
    assert len(runs) == 2 and len({r.run_id for r, _ in runs}) == 1


def test_unknown_tracker_is_a_one_line_error(tmp_path):
    res = runner.invoke(app, ["train", *DEMO, "--log", "tensorbored", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2
    err = res.output.strip()
    assert len(err.splitlines()) == 1 and "train.log" in err
    assert "tensorboard" in err and "wandb" in err
    assert is_vacant_dir(tmp_path / "r")
    res = runner.invoke(app, ["analyze", str(tmp_path), "--log", "mlflow"])
    assert res.exit_code == 2 and "tensorboard, wandb" in res.output


@pytest.mark.parametrize(
    ("tracker", "modules"),
    [("tensorboard", ["torch.utils.tensorboard", "tensorboard"]), ("wandb", ["wandb"])],
)
def test_missing_package_names_the_extra(tmp_path, tiny_config, monkeypatch, tracker, modules):
    from grokinterp.training import train

    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import → ImportError
    cfg = tiny_config.copy()
    cfg.train.log = [tracker]
    with pytest.raises(GrokinterpError, match=r"pip install 'grokinterp\[trackers\]'") as e:
        train(cfg, tmp_path / "run", progress=False)
    assert len(str(e.value).splitlines()) == 1 and tracker in str(e.value)
    assert is_vacant_dir(tmp_path / "run")  # nothing written: the command can simply be rerun


def test_sweep_and_seed_runs_are_grouped(tmp_path, tiny_config):
    from grokinterp.training.trackers import _wandb_meta

    sweep = tmp_path / "wd-sweep"
    (sweep / "weight_decay=0.1__seed=3" / "logs").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    meta = _wandb_meta(sweep / "weight_decay=0.1__seed=3", tiny_config)
    assert (meta["group"], meta["job_type"]) == ("wd-sweep", "weight_decay=0.1")
    # stored: a resume (or later analysis curves) reuses the same run and group
    assert _wandb_meta(sweep / "weight_decay=0.1__seed=3", tiny_config) == meta
    seeds = tmp_path / "many" / "seed7"
    seeds.mkdir(parents=True)
    assert _wandb_meta(seeds, tiny_config)["group"] == "many"
    assert _wandb_meta(tmp_path / "plain", tiny_config)["group"] is None


def test_sweep_logs_one_grouped_tracker_run_per_cell(tmp_path, tiny_config):
    from grokinterp.experiments.sweep import run_sweep

    base = tiny_config.copy()
    base.train.log = ["tensorboard", "wandb"]
    out = tmp_path / "wd-sweep"
    res = run_sweep(
        base,
        ["train.weight_decay=0.1,1"],
        out,
        use_ray=False,
        progress=False,
        report=False,
    )
    assert sorted(res.executed) == ["weight_decay=0.1", "weight_decay=1"]
    ids = set()
    for name in res.executed:
        assert_trackers_equal_metrics(out / name)  # TensorBoard: one folder per cell
        [(run, _)] = wandb_runs(out / name)
        assert (run.run_group, run.job_type, run.display_name) == ("wd-sweep", name, name)
        ids.add(run.run_id)
    assert len(ids) == 2


def test_a_session_in_the_same_second_sorts_after_the_last(tmp_path):
    """TensorBoard reads event files in name order (``...<second>.<host>.<pid>.<counter>``): a
    resumed session opened in the same second as the killed one must still come after it."""
    from grokinterp.training.trackers import TensorBoardTracker

    run = tmp_path / "run"
    first = TensorBoardTracker(run, purge_step=0)
    first.log({"x": 1.0}, 0)
    first.log({"x": 2.0}, 5)
    first.close()
    old = next((run / "logs" / "tensorboard").glob("events.*"))
    # this second, and a host/pid/counter tail that sorts late (as "...7.9" after "...7.10")
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time())}.zzzz.9.9"))
    second = TensorBoardTracker(run, purge_step=5)
    second.log({"x": 3.0}, 5)
    second.close()
    assert tensorboard_scalars(run)["x"] == {0: 1.0, 5: 3.0}
