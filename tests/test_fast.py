"""The fast training engine computes the same training as the eager trainer (issue 9)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from grokinterp.config import GrokinterpError, ModelConfig, RunConfig, apply_overrides, load_preset
from grokinterp.models import class_logits
from grokinterp.models.functional import FastForward, gather_rows, make_gather, matmul_precision
from grokinterp.store import Run
from grokinterp.store.writer import AsyncWriter, materialize, to_host
from grokinterp.tasks import make_task
from grokinterp.training import train, train_seeds
from grokinterp.training.engines import EngineFallbackWarning, resolve_engine
from grokinterp.training.group import SeedGroup, initial_model
from grokinterp.training.numerics import loss_fn, per_seed_loss

TINY = [
    "task.p=11",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_head=8",
    "model.d_mlp=32",
    "train.early_stop_acc=none",
]
VARIANTS = {
    "transformer": [],
    "transformer_2l_ln": ["model.n_layers=2", "model.normalization=LN"],
    "factorized": ["model.embedding=factorized", "model.embed_rank=3", "model.output_scale=2.0"],
    "embed_mlp": ["model.name=embed_mlp", "model.d_embed=12"],
    "embed_mlp_concat": [
        "model.name=embed_mlp",
        "model.combine=concat",
        "model.mlp_out=true",
        "model.n_layers=2",
        "model.act_fn=gelu",
    ],
    "float64": ["train.dtype=float64", "model.act_fn=tanh"],
}


def tiny(extra: list[str] | None = None):
    return apply_overrides(load_preset("demo"), TINY + (extra or []))


def mlp_config(factorized: bool = False):
    d = load_preset("demo").to_dict()
    d["task"] = {"name": "xor_cluster", "params": {"dimension": 8, "n_train": 40, "n_test": 30}}
    d["model"].update(name="mlp", d_mlp=24, n_layers=2)
    if factorized:  # GrokTransfer's factorized first layer W_A @ W_B
        d["model"].update(embedding="factorized", embed_rank=3)
    d["train"]["early_stop_acc"] = None
    return RunConfig.from_dict(d)


def _setup(cfg):
    task = make_task(cfg.task.name, **cfg.task.params)
    model = initial_model(cfg, task).to(dtype=getattr(torch, cfg.train.dtype))
    model.last_position_only = True
    ff = FastForward(cfg.model, task, torch.device("cpu"), getattr(torch, cfg.train.dtype))
    return task, model, ff


@pytest.mark.parametrize("name", [*VARIANTS, "mlp", "mlp_factorized"])
@pytest.mark.parametrize("gemm_backward", [False, True])
def test_fast_forward_and_gradients_match_module(name, gemm_backward):
    if name.startswith("mlp"):
        cfg = mlp_config(factorized=name == "mlp_factorized")
    else:
        cfg = tiny(VARIANTS[name])
    task, model, ff = _setup(cfg)
    ff.gemm_backward = gemm_backward
    x, y = task.x_train, task.y_train
    if task.input_kind == "vector":
        x = x.to(model.unembed.W_U.dtype)
    ref_loss = loss_fn("cross_entropy", class_logits(model, x), y)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    params = {k: p.unsqueeze(0) for k, p in model.named_parameters()}
    logits = ff.logits(params, ff.prepare(x))
    assert logits.shape == (1, len(y), task.n_classes)
    loss = per_seed_loss("cross_entropy", logits, y).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    tol = 1e-5 if cfg.train.dtype == "float32" else 1e-12
    torch.testing.assert_close(logits[0], class_logits(model, x), rtol=tol, atol=tol)
    for (k, _), g, r in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=tol, msg=f"gradient of {k}")


def test_gather_backward_counts_tokens():
    """d/dtable of the sum of gathered rows = how often each (position, token) occurs."""
    tokens = torch.tensor([[0, 2], [0, 1], [2, 2], [0, 2]])
    for onehot in (None, torch.float32):
        g = make_gather(tokens, [0, 1], vocab=3, onehot_dtype=onehot)
        table = torch.randn(2, 6, 4, requires_grad=True)  # [S, P·V, w]
        rows = gather_rows(table, g)
        assert rows.shape == (2, 4, 2, 4)
        torch.testing.assert_close(rows[1, 2, 1], table[1, 3 + 2])  # sample 2, position 1, token 2
        rows.sum().backward()
        counts = torch.tensor([3.0, 0, 1, 0, 1, 3])  # position 0: tokens 0,0,2,0; 1: 2,1,2,2
        torch.testing.assert_close(table.grad, counts.view(1, 6, 1).expand(2, 6, 4))


@pytest.mark.parametrize("kind", ["cross_entropy", "mse", "hinge"])
def test_per_seed_loss_is_each_seeds_loss(kind):
    logits, y = torch.randn(3, 7, 5), torch.randint(0, 5, (7,))
    got = per_seed_loss(kind, logits, y)
    want = torch.stack([loss_fn(kind, logits[s], y) for s in range(3)])
    torch.testing.assert_close(got, want)


def test_disagreeing_fast_forward_is_detected():
    cfg = tiny()
    task, model, ff = _setup(cfg)
    assert ff.agrees_with(model, task.x_train) and ff.check(model, task.x_train) is None
    ff.cfg = apply_overrides(cfg, ["model.output_scale=1.5"]).model  # a forward that differs
    assert not ff.agrees_with(model, task.x_train)
    assert "differ from the model's" in ff.check(model, task.x_train)
    cpu = torch.device("cpu")
    assert FastForward.build(ModelConfig(name="resnet"), task, cpu, torch.float32) is None


def _rows(run):
    return {m["step"]: m for m in run.metrics}


@pytest.mark.parametrize("name", ["transformer", "embed_mlp"])
def test_fast_engine_matches_eager_for_50_steps(tmp_path, name):
    cfg = tiny(VARIANTS[name] + ["train.steps=50", "train.eval_every=1", "train.lr=3e-3"])
    eager = train(apply_overrides(cfg, ["train.engine=eager"]), tmp_path / "e", progress=False)
    fast = train(apply_overrides(cfg, ["train.engine=fast"]), tmp_path / "f", progress=False)
    assert (eager.info["engine"], fast.info["engine"]) == ("eager", "fast")  # no fallback
    re, rf = _rows(eager), _rows(fast)
    assert sorted(re) == sorted(rf) == list(range(51))
    for step in re:
        for key in ("train_loss", "test_loss", "weight_norm_l2"):
            assert rf[step][key] == pytest.approx(re[step][key], rel=2e-4), (step, key)
    assert re[50]["train_loss"] < 0.9 * re[0]["train_loss"]  # it did train
    assert eager.steps == fast.steps
    for step in (0, 50):
        a, b = eager.load_state(step), fast.load_state(step)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)


def test_fast_run_resumes_bit_exactly_and_eagerly(tmp_path):
    cfg = tiny(["train.steps=30", "train.engine=fast", "train.grokfast={kind='ema'}"])
    straight = train(cfg, tmp_path / "a", progress=False)
    assert straight.info["engine"] == "fast"
    short = apply_overrides(cfg, ["train.steps=20"])
    train(short, tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    for k, v in straight.load_state(30).items():
        assert torch.equal(v, resumed.load_state(30)[k]), k
    assert [json.dumps(m | {"wall_time": 0}) for m in straight.metrics] == [
        json.dumps(m | {"wall_time": 0}) for m in resumed.metrics
    ]
    # the fast engine's resume state is in the eager format: the eager engine resumes it
    train(short, tmp_path / "c", progress=False)
    eager = train(
        apply_overrides(cfg, ["train.engine=eager"]), tmp_path / "c", resume=True, progress=False
    )
    assert eager.metrics[-1]["train_loss"] == pytest.approx(
        straight.metrics[-1]["train_loss"], rel=1e-4
    )
    assert Run.open(tmp_path / "c").info["status"] == "complete"
    assert (resumed.info["engine"], eager.info["engine"]) == ("fast", "eager")


def test_features_keep_eager_semantics(tmp_path):
    """Masks, norm constraint, minibatches, Grokfast-MA and an embedding merge on the fast path."""
    masks = {"blocks.0.mlp.W_in": torch.rand(16, 32) > 0.5}
    from grokinterp.store import save_tensors

    save_tensors(tmp_path / "mask.safetensors", masks)
    extra = [
        f"train.mask='{tmp_path / 'mask.safetensors'}'",
        "train.norm_constraint=true",
        "train.batch_size=40",
        "train.grokfast={kind='ma', window=3}",
        "model.embedding=factorized",
        "train.merge_embedding_at=7",
        "train.steps=12",
    ]
    cfg = tiny(extra)
    runs = {
        e: train(apply_overrides(cfg, [f"train.engine={e}"]), tmp_path / e, progress=False)
        for e in ("eager", "fast")
    }
    assert {e: r.info["engine"] for e, r in runs.items()} == {"eager": "eager", "fast": "fast"}
    a, b = runs["eager"].load_state(12), runs["fast"].load_state(12)
    assert "embed.W_E" in b and "embed.W_A" not in b  # merged
    assert (b["blocks.0.mlp.W_in"][~masks["blocks.0.mlp.W_in"]] == 0).all()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)


def test_engine_option_and_errors():
    cfg = tiny()
    assert resolve_engine(cfg) == "eager"  # auto on CPU
    assert resolve_engine(apply_overrides(cfg, ["train.engine=fast"])) == "fast"
    with pytest.raises(GrokinterpError, match="train.engine"):
        apply_overrides(cfg, ["train.engine=turbo"])
    w = AsyncWriter()
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.flush()
    w.flush()  # the error is reported once


def test_tf32_is_scoped_not_global():
    # train.tf32 must not leak into other computations of the process (a benchmark once timed
    # every engine under TF32 because one trainer had switched it on globally)
    flag = torch.backends.cuda.matmul
    prev = flag.allow_tf32
    try:
        flag.allow_tf32 = False
        with matmul_precision(True):
            assert flag.allow_tf32
            with matmul_precision(False):
                assert not flag.allow_tf32
            assert flag.allow_tf32
        assert not flag.allow_tf32
        with pytest.raises(ZeroDivisionError), matmul_precision(True):
            raise ZeroDivisionError
        assert not flag.allow_tf32  # restored after an error too
    finally:
        flag.allow_tf32 = prev


def test_checkpoint_snapshot_is_taken_at_submit_time():
    w = torch.arange(6.0).view(2, 3)
    tree = {
        "w": w,
        "opt": {"state": {0: {"step": torch.tensor(3.0), "m": w * 2}}, "groups": [{"lr": 0.1}]},
        "rng": torch.tensor([1, 2], dtype=torch.uint8),
    }
    host, event = to_host(tree)
    w.add_(100)  # training goes on: the snapshot must not move
    out = materialize(host)
    assert event is None  # nothing on CUDA
    torch.testing.assert_close(out["w"], torch.arange(6.0).view(2, 3))
    torch.testing.assert_close(out["opt"]["state"][0]["m"], 2 * torch.arange(6.0).view(2, 3))
    assert out["opt"]["state"][0]["step"].shape == () and out["opt"]["groups"] == [{"lr": 0.1}]
    assert out["rng"].dtype == torch.uint8 and out["rng"].tolist() == [1, 2]
    assert out["w"].untyped_storage().data_ptr() != out["opt"]["state"][0]["m"].data_ptr()
    half, _ = to_host(tree, torch.float16)
    assert half["w"].dtype == torch.float16 and half["rng"].dtype == torch.uint8


def test_fast_trainer_metrics_match_eager():
    cfg = tiny(["train.loss=mse"])
    a, b = SeedGroup([cfg], "eager"), SeedGroup([cfg], "fast")
    assert (a.engine.name, b.engine.name) == ("eager", "fast")
    (ma,), (mb,) = a.evaluate(), b.evaluate()
    assert ma.keys() == mb.keys()
    for k in ma:
        assert mb[k] == pytest.approx(ma[k], rel=1e-5), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_engine_matches_eager(tmp_path):
    cfg = tiny(["train.steps=50", "train.eval_every=5", "train.device=cuda"])
    eager = train(apply_overrides(cfg, ["train.engine=eager"]), tmp_path / "e", progress=False)
    fast = train(apply_overrides(cfg, ["train.engine=fast"]), tmp_path / "f", progress=False)
    assert (eager.info["engine"], fast.info["engine"]) == ("eager", "fast")
    re, rf = _rows(eager), _rows(fast)
    for step in re:
        assert rf[step]["train_loss"] == pytest.approx(re[step]["train_loss"], rel=1e-3), step
    assert eager.steps == fast.steps
    g = SeedGroup([apply_overrides(cfg, ["train.engine=fast"])], "fast")
    for _ in range(12):
        g.train_step()
    assert g.runner.graph is not None  # the step runs as one CUDA graph after warm-up


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", [["train.compile=true"], ["train.tf32=true"]])
def test_cuda_compile_and_tf32_match_eager(tmp_path, options):
    # torch.compile (fused kernels) and TF32 change rounding only: same training, 50 steps
    cfg = tiny(["train.steps=50", "train.eval_every=5", "train.device=cuda"])
    eager = train(apply_overrides(cfg, ["train.engine=eager"]), tmp_path / "e", progress=False)
    fast = train(apply_overrides(cfg, ["train.engine=fast", *options]), tmp_path / "f", False)
    assert fast.info["engine"] == "fast"
    re, rf = _rows(eager), _rows(fast)
    for step in re:
        assert rf[step]["train_loss"] == pytest.approx(re[step]["train_loss"], rel=5e-3), step
    flag = torch.backends.cuda.matmul
    assert not flag.allow_tf32  # TF32 stayed inside the run
    # a process-wide TF32 setting does not make the (full-precision) start-up check fail
    try:
        flag.allow_tf32 = True
        with warnings.catch_warnings():
            warnings.simplefilter("error", EngineFallbackWarning)
            assert SeedGroup([cfg], "fast").engine.name == "fast"
    finally:
        flag.allow_tf32 = False


def test_fast_engine_falls_back_loudly(tmp_path, monkeypatch):
    """A functional forward that disagrees with the module: a warning with the reason, the eager
    engine trains, and run.json says so (never a silent fallback)."""
    monkeypatch.setattr(FastForward, "check", lambda self, model, x: "a planted disagreement")
    cfg = tiny(["train.steps=6", "train.engine=fast"])
    with pytest.warns(EngineFallbackWarning, match="a planted disagreement"):
        run = train(cfg, tmp_path / "one", progress=False)
    assert run.info["engine"] == "eager" and run.info["status"] == "complete"
    eager = train(apply_overrides(cfg, ["train.engine=eager"]), tmp_path / "ref", progress=False)
    for k, v in eager.load_state(6).items():  # the eager engine did train it
        assert torch.equal(run.load_state(6)[k], v), k
    with pytest.warns(EngineFallbackWarning, match="a planted disagreement"):
        runs = train_seeds(cfg, [0, 1], tmp_path / "many", progress=False)
    assert [r.info["engine"] for r in runs] == ["eager", "eager"]
