"""Importers of grokked models trained elsewhere: small p=7 files in both layouts, random weights;
the imported model's logits must equal a direct evaluation of the original layout."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import types

import numpy as np
import pytest
import torch
from einops import einsum

from grokinterp.analysis import over_training
from grokinterp.config import GrokinterpError
from grokinterp.store import Run
from grokinterp.store.importers import import_run, load_pickle

P, D, H, DH, DM = 7, 8, 2, 4, 16


def _all_inputs(p: int = P) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)


# ----- progress-measures layout (Nanda et al. 2023 code) --------------------------------------


def _pm_state(seed: int, n_layers: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / 2  # noqa: E731
    sd = {"embed.W_E": r(D, P + 1), "pos_embed.W_pos": r(3, D), "unembed.W_U": r(D, P + 1)}
    for i in range(n_layers):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "attn.W_K": r(H, DH, D),
                b + "attn.W_Q": r(H, DH, D),
                b + "attn.W_V": r(H, DH, D),
                b + "attn.W_O": r(D, H * DH),
                b + "attn.mask": torch.tril(torch.ones(3, 3)),
                b + "mlp.W_in": r(DM, D),
                b + "mlp.b_in": r(DM),
                b + "mlp.W_out": r(D, DM),
                b + "mlp.b_out": r(D),
            }
        )
    return sd


def _pm_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Direct evaluation in the progress-measures layout (written from the paper's code
    description: causal softmax attention on q.k/sqrt(d_head), head-major W_O, ReLU MLP)."""
    resid = sd["embed.W_E"][:, x].permute(1, 2, 0) + sd["pos_embed.W_pos"][None]
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(n_layers):
        b = f"blocks.{i}."
        k = einsum(sd[b + "attn.W_K"], resid, "h e d, n p d -> n h p e")
        q = einsum(sd[b + "attn.W_Q"], resid, "h e d, n p d -> n h p e")
        v = einsum(sd[b + "attn.W_V"], resid, "h e d, n p d -> n h p e")
        scores = einsum(q, k, "n h q e, n h k e -> n h q k") / math.sqrt(DH)
        scores = scores.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), -1e10)
        z = einsum(scores.softmax(-1), v, "n h q k, n h k e -> n q h e").reshape(len(x), 3, H * DH)
        resid = resid + einsum(sd[b + "attn.W_O"], z, "d f, n q f -> n q d")
        pre = einsum(sd[b + "mlp.W_in"], resid, "m d, n q d -> n q m") + sd[b + "mlp.b_in"]
        resid = (
            resid
            + einsum(sd[b + "mlp.W_out"], pre.relu(), "d m, n q m -> n q d")
            + sd[b + "mlp.b_out"]
        )
    return (resid @ sd["unembed.W_U"])[:, -1, :-1]


def _check_logits(run: Run, step: int, expected_fn) -> None:
    x = _all_inputs()
    with torch.no_grad():
        got = run.model(step)(x)[:, -1]  # TransformerLens's logits[:, -1]
    torch.testing.assert_close(got, expected_fn(x), atol=1e-5, rtol=1e-5)


def test_progress_measures_single_model(tmp_path):
    sd = _pm_state(0)
    cfg = {"p": P, "fn_name": "add", "frac_train": 0.3, "seed": 5, "lr": 1e-3, "weight_decay": 1.0}
    path = tmp_path / "pm.pth"
    torch.save(
        {
            "model": sd,
            "config": cfg,
            "train_losses": [2.0, 1.5, 1.0],
            "test_losses": [2.0, 2.1, 2.2],
            "epoch": 2,
        },
        path,
    )
    run = import_run("progress-measures", path, tmp_path / "run")
    assert run.steps == [2]
    _check_logits(run, 2, lambda x: _pm_forward(sd, x))
    # the split is Nanda et al.'s: random.seed(seed); random.shuffle(row-major pairs)
    pairs = [(i, j) for i in range(P) for j in range(P)]
    random.seed(5)
    random.shuffle(pairs)
    n_train = int(0.3 * P * P)
    task = run.task()
    assert [tuple(r[:2]) for r in task.x_train.tolist()] == pairs[:n_train]
    assert len(task.x_test) == P * P - n_train
    assert run.config.train.weight_decay == 1.0 and run.config.task.name == "mod_add"
    m = {r["step"]: r for r in run.metrics}
    assert m[0]["train_loss"] == 2.0 and m[1]["test_loss"] == 2.1 and "test_acc" in m[2]


def test_progress_measures_full_run_and_cli_params(tmp_path):
    sds = [_pm_state(s) for s in range(3)]
    path = tmp_path / "full.pth"
    torch.save({"state_dicts": sds, "epochs": [0, 100, 200]}, path)
    run = import_run(
        "progress-measures", path, tmp_path / "run", p=P, fn="subtract", frac_train=0.5, seed=1
    )
    assert run.steps == [0, 100, 200]
    for step, sd in zip(run.steps, sds, strict=True):
        _check_logits(run, step, lambda x, sd=sd: _pm_forward(sd, x))
    assert run.config.task.name == "mod_sub" and len(run.task().x_train) == int(0.5 * P * P)
    # every analysis accepts the imported run
    res = over_training(run, ["fourier"], progress=False)
    assert res["fourier/embed_norms"].shape == (3, 3)
    with pytest.raises(GrokinterpError, match="p=11"):
        import_run("progress-measures", path, tmp_path / "run2", p=11)


class _ConfigObject:  # stands for a config saved as a Python object: not allowed by weights_only
    def __init__(self):
        self.p, self.fn_name, self.frac_train, self.seed = P, "add", 0.3, 0


def test_unsafe_pickle_needs_trust(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"model": _pm_state(1), "config": _ConfigObject()}, path)
    with pytest.raises(GrokinterpError, match="trust-pickle"):
        import_run("progress-measures", path, tmp_path / "run")
    run = import_run("progress-measures", path, tmp_path / "run", trust_pickle=True)
    assert run.config.task.params["p"] == P


def test_import_errors(tmp_path):
    with pytest.raises(GrokinterpError, match="kind"):
        import_run("nope", tmp_path / "x", tmp_path / "out")
    with pytest.raises(GrokinterpError, match="not found"):
        import_run("tl-demo", tmp_path / "missing.pth", tmp_path / "out")
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(GrokinterpError, match="progress-measures"):
        import_run("progress-measures", bad, tmp_path / "out")
    with pytest.raises(GrokinterpError, match="unknown parameter"):
        import_run("tl-demo", bad, tmp_path / "out", frac_train=0.3)
    good = tmp_path / "g.pth"
    torch.save({"model": _pm_state(0)}, good)
    import_run("progress-measures", good, tmp_path / "out")
    with pytest.raises(GrokinterpError, match="not empty"):
        import_run("progress-measures", good, tmp_path / "out")
    import_run("progress-measures", good, tmp_path / "out", overwrite=True)


# ----- TransformerLens grokking demo layout ---------------------------------------------------


@dataclasses.dataclass
class HookedTransformerConfig:  # mimics transformer-lens 3.x's class (gone in 4.x)
    n_layers: int = 1
    d_model: int = D
    n_ctx: int = 3
    d_head: int = DH
    n_heads: int = H
    d_mlp: int = DM
    d_vocab: int = P + 1
    d_vocab_out: int = P
    act_fn: str = "relu"
    normalization_type: str | None = None
    seed: int = 999
    dtype: torch.dtype = torch.float32
    device: str | None = None
    initializer_range: float = -1.0
    n_params: int | None = None

    def __post_init__(self):  # as transformer-lens 3.x's: a numpy float and a torch.device
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / np.sqrt(self.d_model)
        self.n_params = self.n_layers * self.d_model * self.d_head * self.n_heads * 4
        if self.device is None:
            self.device = torch.device("cpu")


def _tl_state(seed: int, biases: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / 2  # noqa: E731
    z = torch.zeros
    sd = {
        "embed.W_E": r(P + 1, D),
        "pos_embed.W_pos": r(3, D),
        "blocks.0.attn.W_Q": r(H, D, DH),
        "blocks.0.attn.W_K": r(H, D, DH),
        "blocks.0.attn.W_V": r(H, D, DH),
        "blocks.0.attn.W_O": r(H, DH, D),
        "blocks.0.attn.b_Q": z(H, DH),
        # b_K, b_V, b_O are folded exactly by the importer: make them non-zero to test that
        "blocks.0.attn.b_K": r(H, DH) if biases else z(H, DH),
        "blocks.0.attn.b_V": r(H, DH) if biases else z(H, DH),
        "blocks.0.attn.b_O": r(D) if biases else z(D),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3, dtype=torch.bool)),
        "blocks.0.attn.IGNORE": torch.tensor(-1e5),
        "blocks.0.mlp.W_in": r(D, DM),
        "blocks.0.mlp.b_in": r(DM),
        "blocks.0.mlp.W_out": r(DM, D),
        "blocks.0.mlp.b_out": r(D),
        "unembed.W_U": r(D, P),
        "unembed.b_U": z(P),
    }
    return sd


def _tl_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Direct evaluation of a TransformerLens HookedTransformer (attention with biases)."""
    resid = sd["embed.W_E"][x] + sd["pos_embed.W_pos"][None]
    b = "blocks.0."
    q = einsum(resid, sd[b + "attn.W_Q"], "n p d, h d e -> n p h e") + sd[b + "attn.b_Q"]
    k = einsum(resid, sd[b + "attn.W_K"], "n p d, h d e -> n p h e") + sd[b + "attn.b_K"]
    v = einsum(resid, sd[b + "attn.W_V"], "n p d, h d e -> n p h e") + sd[b + "attn.b_V"]
    scores = einsum(q, k, "n q h e, n k h e -> n h q k") / math.sqrt(DH)
    scores = torch.where(sd[b + "attn.mask"], scores, sd[b + "attn.IGNORE"])
    z = einsum(scores.softmax(-1), v, "n h q k, n k h e -> n q h e")
    resid = resid + einsum(z, sd[b + "attn.W_O"], "n q h e, h e d -> n q d") + sd[b + "attn.b_O"]
    pre = resid @ sd[b + "mlp.W_in"] + sd[b + "mlp.b_in"]
    resid = resid + pre.relu() @ sd[b + "mlp.W_out"] + sd[b + "mlp.b_out"]
    return (resid @ sd["unembed.W_U"] + sd["unembed.b_U"])[:, -1]


def _save_tl_file(path, states, epochs, cfg=None, train_idx=None, module=None):
    """torch.save with the config class living at its transformer-lens 3.x import path (or at
    ``module``)."""
    mod = types.ModuleType(module or "transformer_lens.HookedTransformerConfig")
    cls = type("HookedTransformerConfig", (HookedTransformerConfig,), {"__module__": mod.__name__})
    cls.__qualname__ = "HookedTransformerConfig"
    mod.HookedTransformerConfig = cls
    obj = cls(**dataclasses.asdict(cfg or HookedTransformerConfig()))
    idx = torch.randperm(P * P, generator=torch.Generator().manual_seed(3))
    train_idx = idx[:14] if train_idx is None else train_idx
    sys.modules[mod.__name__] = mod
    try:
        torch.save(
            {
                "model": states[-1],
                "config": obj,
                "checkpoints": states,
                "checkpoint_epochs": epochs,
                "train_losses": [3.0] * (epochs[-1] + 1),
                "test_losses": [4.0] * (epochs[-1] + 1),
                "train_indices": train_idx,
                "test_indices": idx[14:],
            },
            path,
        )
    finally:
        del sys.modules[mod.__name__]
    return train_idx


def test_tl_demo_import_safe_and_exact(tmp_path):
    states = [_tl_state(0), _tl_state(1)]
    path = tmp_path / "grokking_demo.pth"
    train_idx = _save_tl_file(path, states, [99, 199])
    data = load_pickle(path)  # weights_only: no --trust-pickle needed for the demo's config
    assert data["config"].state["d_mlp"] == DM
    # TL 3's numpy float arrives as a Python number (a stand-in decodes its bytes, runs nothing)
    init_range = data["config"].state["initializer_range"]
    assert type(init_range) is float and init_range == pytest.approx(0.8 / math.sqrt(D))
    run = import_run("tl-demo", path, tmp_path / "run")
    assert run.steps == [99, 199]
    for step, sd in zip(run.steps, states, strict=True):
        _check_logits(run, step, lambda x, sd=sd: _tl_forward(sd, x))
    task = run.task()
    x = _all_inputs()
    torch.testing.assert_close(task.x_train, x[train_idx])
    assert len(task.x_test) == P * P - len(train_idx)
    assert run.metrics[-1]["step"] == 199 and "test_acc" in run.metrics[-1]


def test_tl3_pickle_holds_the_tl_config_class_and_numpy_scalars(tmp_path):
    """The fixture is a faithful TL 3.x save: exactly these globals beyond torch's own."""
    path = tmp_path / "demo.pth"
    _save_tl_file(path, [_tl_state(0)], [9])
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert unsafe == {
        "transformer_lens.HookedTransformerConfig.HookedTransformerConfig",
        "numpy.dtype",
        f"{np.float64(0).__reduce__()[0].__module__}.scalar",
    }


def test_safe_loading_still_refuses_other_classes(tmp_path):
    # another class than TL 3's config, even under transformer_lens
    path = tmp_path / "other.pth"
    _save_tl_file(path, [_tl_state(0)], [9], module="transformer_lens.EvilConfig")
    with pytest.raises(GrokinterpError) as info:
        import_run("tl-demo", path, tmp_path / "run")
    msg = str(info.value)
    assert (
        "class transformer_lens.EvilConfig.HookedTransformerConfig is not on the allow-list" in msg
    )
    assert "--trust-pickle" in msg and "\x1b" not in msg  # no ANSI codes from torch's message
    assert not (tmp_path / "run").exists()
    # numpy scalars: numbers only
    torch.save({"model": _tl_state(0), "config": {"name": np.str_("x")}}, path)
    with pytest.raises(GrokinterpError, match="dtype 'U1' is not allowed"):
        load_pickle(path)
    torch.save({"model": _tl_state(0), "config": {"grid": np.zeros(2)}}, path)
    with pytest.raises(GrokinterpError, match="_reconstruct is not on the allow-list"):
        load_pickle(path)
    # with --trust-pickle the other class is read (as an inert stand-in)
    _save_tl_file(path, [_tl_state(0)], [9], module="transformer_lens.EvilConfig")
    assert load_pickle(path, trust_pickle=True)["config"].state["d_model"] == D


def test_tl_demo_rejects_unrepresentable(tmp_path):
    sd = _tl_state(0)
    sd["blocks.0.attn.b_Q"] = torch.ones(H, DH)
    path = tmp_path / "q.pth"
    _save_tl_file(path, [sd], [9])
    with pytest.raises(GrokinterpError, match="b_Q"):
        import_run("tl-demo", path, tmp_path / "run")
    sd = _tl_state(0)
    sd["unembed.b_U"] = torch.ones(P)
    _save_tl_file(path, [sd], [9])
    with pytest.raises(GrokinterpError, match="b_U"):
        import_run("tl-demo", path, tmp_path / "run2")


def test_cli_import(tmp_path):
    from typer.testing import CliRunner

    from grokinterp.cli import app

    path = tmp_path / "pm.pth"
    torch.save({"model": _pm_state(0), "epoch": 5}, path)
    out = tmp_path / "run"
    args = ["import", "progress-measures", str(path), "--out", str(out), "--p", "7", "--seed", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert Run.open(out).steps == [5] and Run.open(out).config.task.params["seed"] == 2
    res = CliRunner().invoke(
        app, ["import", "tl-demo", str(path), "--out", str(tmp_path / "r2"), "--seed", "1"]
    )
    assert res.exit_code == 2 and "progress-measures only" in res.output


def test_progress_measures_file_without_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"state_dicts": [], "epochs": []}, path)
    with pytest.raises(GrokinterpError, match="no weights to import"):
        import_run("progress-measures", path, tmp_path / "run")
