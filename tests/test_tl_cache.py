"""TransformerLens-native analysis objects on our models (issue 16 item 1).

``run_with_cache`` returns TransformerLens 4.x's own ``ActivationCache``, and its documented
methods (``cache["post", 0]``, ``decompose_resid``, ``accumulated_resid``, ``logit_attrs``,
``stack_head_results``, ``get_full_resid_decomposition``) hold their defining identities on our
transformer (Nanda, Chan, Lieberum, Smith, Steinhardt 2023) and agree with the same methods on its
``TransformerBridge`` (``to_transformer_bridge``). The logits follow TransformerLens's
``[batch, pos, d_vocab_out]`` convention: ``logits[:, -1]`` are the class logits the trainer uses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import ActivationCache

from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models import build_model, class_logits, to_transformer_bridge
from grokinterp.models.functional import FastForward
from grokinterp.tasks import make_task
from tests.test_tl_bridge import DH, D, H, M
from tests.test_tl_bridge import _model as bridge_model

TOL = 1e-5


def _model(p: int, n_layers: int, normalization: str = "none", seed: int = 0, **kw):
    """The bridge tests' small random transformer (nonzero biases, non-unit LayerNorm weights, so
    a mis-attributed bias or norm parameter shows)."""
    return bridge_model(p, n_layers, seed=seed, normalization=normalization, **kw)


CASES = [(7, 1, "none"), (7, 2, "none"), (11, 2, "LN")]


def _hook_value(model, x, name: str) -> torch.Tensor:
    seen = {}

    def keep(act, hook):
        seen[name] = act.detach().clone()

    model.run_with_hooks(x, fwd_hooks=[(name, keep)])
    return seen[name]


# ----- logits convention ------------------------------------------------------------------


@pytest.mark.parametrize(("p", "n_layers", "normalization"), CASES)
def test_last_position_logits_are_the_old_class_logits(p, n_layers, normalization):
    model, task = _model(p, n_layers, normalization)
    x = task.x_train
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        assert logits.shape == (len(x), 3, p)  # [batch, pos, d_vocab_out]
        # what the model returned before issue 16: the unembedding of the last position
        last = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1]
        old = model.unembed(model.ln_final(last))
        torch.testing.assert_close(logits[:, -1], old, atol=TOL, rtol=0)
        torch.testing.assert_close(class_logits(model, x), logits[:, -1], atol=0, rtol=0)
        # the trainer's shortcut: one position, the same numbers
        model.last_position_only = True
        short = model(x)
        assert short.shape == (len(x), 1, p)
        torch.testing.assert_close(short[:, -1], logits[:, -1], atol=TOL, rtol=0)
        fast = FastForward(model.cfg, task, torch.device("cpu"), torch.float32)
        assert fast.check(model, x) is None
        out = fast.logits({k: v[None] for k, v in model.named_parameters()}, fast.prepare(x))
        torch.testing.assert_close(out[0], logits[:, -1], atol=TOL, rtol=0)


def test_embed_mlp_answers_at_one_position_and_mlp_has_none():
    task = make_task("mod_add", p=7)
    emlp = build_model(ModelConfig(name="embed_mlp", d_embed=8, d_mlp=16), task).eval()
    with torch.no_grad():
        out, cache = emlp.run_with_cache(task.x_train)
    assert out.shape == (len(task.x_train), 1, 7)  # so logits[:, -1] are the class logits
    assert cache["post", 0].shape == (len(task.x_train), 16)
    torch.testing.assert_close(class_logits(emlp, task.x_train), out[:, -1], atol=0, rtol=0)
    vtask = make_task("xor_cluster", dimension=6, n_train=10, n_test=10)
    mlp = build_model(ModelConfig(name="mlp", d_mlp=8), vtask).eval()
    x = vtask.x_train.float()
    with torch.no_grad():
        assert mlp(x).shape == (10, vtask.n_classes)
        torch.testing.assert_close(class_logits(mlp, x), mlp(x), atol=0, rtol=0)
    assert mlp.cfg.n_ctx is None and emlp.cfg.d_vocab_out == 7 and emlp.cfg.n_ctx == 3


def test_return_types():
    model, task = _model(7, 1)
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        logits = model(x)
        assert model(x, return_type=None) is None
        loss = model(x, return_type="loss", labels=y)
        torch.testing.assert_close(loss, F.cross_entropy(logits[:, -1], y))
        both = model(x, return_type="both", labels=y)
        torch.testing.assert_close(both[0], logits)
        torch.testing.assert_close(both[1], loss)
        _, cache = model.run_with_cache(x, return_type=None)
        assert isinstance(cache, ActivationCache)
        _, plain = model.run_with_cache(x, return_cache_object=False)
        assert type(plain) is dict and set(plain) == set(cache.keys())
    with pytest.raises(GrokinterpError, match="needs labels"):
        model(x, return_type="loss")
    with pytest.raises(GrokinterpError, match="return_type"):
        model(x, return_type="probs")


def test_tl_config_view_and_weight_names():
    model, task = _model(7, 2, "LN", output_scale=2.0, embedding="factorized", embed_rank=3)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, D, H, DH, M)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx) == (8, 7, 3)
    assert cfg.normalization_type == "LN" and not cfg.attn_only and cfg.name == "transformer"
    torch.testing.assert_close(model.W_U, 2.0 * model.unembed.W_U)  # output_scale folded in
    torch.testing.assert_close(model.W_E, model.embed.W_A @ model.embed.W_B)
    assert model.W_in.shape == (2, D, M) and model.W_O.shape == (2, H, DH, D)
    assert torch.equal(model.tokens_to_residual_directions(3), model.W_U[:, 3])
    dirs = model.tokens_to_residual_directions(torch.tensor([1, 2, 3]))
    assert torch.equal(dirs, model.W_U[:, [1, 2, 3]].T)
    with pytest.raises(GrokinterpError, match="no tokenizer"):
        model.tokens_to_residual_directions(" road")
    with pytest.raises(GrokinterpError, match="index in"):
        model.to_single_token(7)


# ----- TransformerLens's documented cache methods -----------------------------------------


@pytest.mark.parametrize(("p", "n_layers", "normalization"), CASES)
def test_cache_methods_hold_their_identities(p, n_layers, normalization):
    # an output_scale ≠ 1 checks that W_U is the map the logits are read through
    model, task = _model(p, n_layers, normalization, output_scale=1.5 if n_layers > 1 else 1.0)
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    last = n_layers - 1
    for layer in range(n_layers):
        hook = f"blocks.{layer}.mlp.hook_post"
        torch.testing.assert_close(
            cache["post", layer], _hook_value(model, x, hook), atol=0, rtol=0
        )
    torch.testing.assert_close(
        cache["resid_pre", 0], cache["hook_embed"] + cache["hook_pos_embed"], atol=0, rtol=0
    )
    assert cache["resid_post", -1] is cache[f"blocks.{last}.hook_resid_post"]
    final = cache["resid_post", -1]

    # decompose_resid: the components sum to the final residual stream
    resid, labels = cache.decompose_resid(return_labels=True)
    expected = ["embed", "pos_embed"] + [
        f"{i}_{k}" for i in range(n_layers) for k in ("attn_out", "mlp_out")
    ]
    assert labels == expected
    torch.testing.assert_close(resid.sum(0), final, atol=TOL, rtol=0)

    # accumulated_resid: resid_pre of every layer, then the final residual; through the final
    # LayerNorm and W_U, the last entry gives the logits (the logit lens's last layer)
    acc, acc_labels = cache.accumulated_resid(return_labels=True)
    assert acc_labels == [f"{i}_pre" for i in range(n_layers)] + ["final_post"]
    torch.testing.assert_close(acc[-1], final, atol=0, rtol=0)
    lens = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(lens[-1] @ model.W_U + model.b_U, logits, atol=TOL, rtol=0)

    # logit_attrs: each component's share of the logit difference correct − wrong class. Without
    # LayerNorm the shares add up to the logit difference; with it (not folded, as in
    # TransformerLens without fold_ln) to the normalized residual's projection on W_U.
    wrong = (y + 1) % p
    attrs = cache.logit_attrs(resid, y, incorrect_tokens=wrong)
    assert attrs.shape == (len(labels), len(x), 3)
    idx = torch.arange(len(x))
    if normalization == "none":
        diff = logits[idx, :, y] - logits[idx, :, wrong]
    else:
        direction = model.W_U[:, y] - model.W_U[:, wrong]  # [d, batch]
        diff = torch.einsum("bpd,db->bp", cache["ln_final.hook_normalized"], direction)
    torch.testing.assert_close(attrs.sum(0), diff, atol=1e-4, rtol=0)

    # stack_head_results: the heads of a layer add up to its attention output (no b_O)
    heads, head_labels = cache.stack_head_results(return_labels=True)
    assert head_labels == [f"L{i}H{h}" for i in range(n_layers) for h in range(H)]
    for layer in range(n_layers):
        torch.testing.assert_close(
            heads[layer * H : (layer + 1) * H].sum(0), cache["attn_out", layer], atol=TOL, rtol=0
        )

    # the finest decomposition: heads, neurons, embeddings and the MLP output biases
    full = cache.get_full_resid_decomposition(expand_neurons=True)
    torch.testing.assert_close(full.sum(0), final, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("p", "n_layers", "normalization"), [(7, 2, "none"), (11, 2, "LN")])
def test_cache_methods_agree_with_the_bridge(p, n_layers, normalization):
    model, task = _model(p, n_layers, normalization)
    bridge = to_transformer_bridge(model)
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        ours, cache = model.run_with_cache(x)
        theirs, bcache = bridge.run_with_cache(x)
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)  # same convention, all positions
    wrong = (y + 2) % p
    calls = {
        "post": lambda c: (c["post", n_layers - 1], None),
        "decompose_resid": lambda c: c.decompose_resid(return_labels=True),
        "accumulated_resid": lambda c: c.accumulated_resid(apply_ln=True, return_labels=True),
        "stack_head_results": lambda c: c.stack_head_results(return_labels=True),
        "logit_attrs": lambda c: (c.logit_attrs(c.decompose_resid(), y, wrong), None),
        "full": lambda c: c.get_full_resid_decomposition(expand_neurons=True, return_labels=True),
    }
    for name, call in calls.items():
        (a, la), (b, lb) = call(cache), call(bcache)
        assert la == lb, name
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=name)


# ----- a grokked-ish model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A 1-layer transformer on (a+b) mod 13 trained for 300 full-batch AdamW steps with the
    trainer's last-position shortcut (test accuracy ≈ 0.8: generalising, not yet grokked)."""
    task = make_task("mod_add", p=13, train_fraction=0.7, seed=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_heads=4, d_head=8, d_mlp=64), task)
    model.last_position_only = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98))
    for _ in range(300):
        loss = F.cross_entropy(class_logits(model, task.x_train), task.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.last_position_only = False
    return model.eval(), task


def _dla_session(model, task, bridge=None) -> None:
    """A TransformerLens direct-logit-attribution session on the test set."""
    x, y = task.x_test, task.y_test
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    acc = (logits[:, -1].argmax(-1) == y).double().mean()
    assert acc > 0.5
    resid, labels = cache.decompose_resid(return_labels=True, pos_slice=-1)
    assert resid.shape == (len(labels), len(x), model.cfg.d_model)
    # the runner-up class: the hardest wrong answer
    wrong = logits[:, -1].masked_fill(F.one_hot(y, logits.shape[-1]).bool(), -1e9).argmax(-1)
    attrs = cache.logit_attrs(resid, y, incorrect_tokens=wrong, pos_slice=-1)
    idx = torch.arange(len(x))
    diff = logits[idx, -1, y] - logits[idx, -1, wrong]
    torch.testing.assert_close(attrs.sum(0), diff, atol=1e-4, rtol=0)
    assert ((diff > 0).double().mean() - acc).abs() < 1e-12  # correct ⇔ positive difference
    # in a model that has learnt the task, the MLP carries the answer (Nanda et al. 2023 §4)
    assert attrs[labels.index("0_mlp_out")].mean() > 0.5 * diff.mean()
    heads = cache.stack_head_results(pos_slice=-1)
    assert heads.shape == (model.cfg.n_heads, len(x), model.cfg.d_model)
    if bridge is not None:
        with torch.no_grad():
            _, bcache = bridge.run_with_cache(x)
        battrs = bcache.logit_attrs(
            bcache.decompose_resid(pos_slice=-1), y, incorrect_tokens=wrong, pos_slice=-1
        )
        torch.testing.assert_close(battrs, attrs, atol=1e-4, rtol=0)


def test_dla_session_on_a_trained_model(trained):
    model, task = trained
    _dla_session(model, task, bridge=to_transformer_bridge(model))


@pytest.mark.slow
def test_dla_session_on_the_grokked_demo(grokked_demo):
    """The demo preset (Nanda et al. 2023 at CPU size) trained to grokking, then the same session."""
    from grokinterp.store import Run

    run = Run.open(grokked_demo)
    assert max(m.get("test_acc", 0) for m in run.metrics) >= 0.99  # grokked (early stop)
    model = run.model(run.steps[-1]).eval()
    _dla_session(model, run.task(), bridge=to_transformer_bridge(model))


# ----- issue 16 item 5: a help text that lost its default --------------------------------


def test_transfer_help_shows_the_weak_at_default():
    from typer.testing import CliRunner

    from grokinterp.cli import app

    res = CliRunner().invoke(app, ["transfer", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())
    assert (
        "[default: (acc=0.3 for token targets, final for mlp targets; acc=0.25 with --cpu)]" in text
    )
