"""Our transformer (Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability") against TransformerLens 4.x's ``TransformerBridge.boot_native`` loaded with the
same weights: identical logits and identical activations at the shared hook names, both ways.
Also the HookedRootModule contract on our model: ``run_with_cache`` names/shapes and
``run_with_hooks`` ablations with an analytically known effect.
"""

from __future__ import annotations

import copy

import pytest
import torch

from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models import build_model
from grokinterp.models.interop import from_transformer_bridge, to_transformer_bridge
from grokinterp.tasks import make_task

D, H, DH, M = 16, 2, 8, 32
TOL = 1e-5


def _all_inputs(p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)


def _model(p: int, n_layers: int, seed: int = 0, **kw):
    """A small random transformer whose biases and LayerNorm parameters are all nonzero/non-unit,
    so that a mis-mapped bias or norm parameter shows in the logits."""
    task = make_task("mod_add", p=p)
    cfg = ModelConfig(
        name="transformer", n_layers=n_layers, d_model=D, n_heads=H, d_head=DH, d_mlp=M, **kw
    )
    torch.manual_seed(seed)
    model = build_model(cfg, task)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("b_in", "b_out", ".b")):
                param.normal_(0, 0.3)
            elif name.endswith(".w"):
                param.uniform_(0.5, 1.5)
    return model.eval(), task


def _bridge_last(bridge, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bridge(x)[:, -1]


CASES = [(7, 1, "none"), (13, 2, "none"), (11, 1, "LN"), (7, 2, "LN")]


@pytest.mark.parametrize(("p", "n_layers", "normalization"), CASES)
def test_bridge_logits_and_activations_match(p, n_layers, normalization):
    model, _ = _model(p, n_layers, normalization=normalization)
    x = _all_inputs(p)
    bridge = to_transformer_bridge(model)
    assert bridge.cfg.d_vocab == p + 1 and bridge.cfg.d_vocab_out == p and bridge.cfg.n_ctx == 3
    assert bridge.cfg.normalization_type == (None if normalization == "none" else "LN")
    with torch.no_grad():
        ours, cache = model.run_with_cache(x)
        theirs, bcache = bridge.run_with_cache(x)
    assert ours.shape == theirs.shape == (p * p, 3, p)  # TransformerLens's logits convention
    assert ours.std() > 0.1  # logits are large enough for TOL to mean something
    torch.testing.assert_close(theirs, ours, atol=TOL, rtol=0)
    names = ["hook_embed", "hook_pos_embed"]
    for i in range(n_layers):
        names += [
            f"blocks.{i}.attn.hook_pattern",
            f"blocks.{i}.mlp.hook_pre",
            f"blocks.{i}.mlp.hook_post",
        ]
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_post"]
    for name in names:
        a, b = cache[name], bcache[name]
        torch.testing.assert_close(b.expand_as(a), a, atol=TOL, rtol=0, msg=name)


def test_bridge_matches_with_last_position_only_output_scale_and_factorized_embedding():
    model, task = _model(11, 2, output_scale=2.5, embedding="factorized", embed_rank=3)
    model.last_position_only = True  # as during training: logits unchanged
    x = task.x_test
    bridge = to_transformer_bridge(model)
    with torch.no_grad():
        torch.testing.assert_close(_bridge_last(bridge, x), model(x)[:, -1], atol=TOL, rtol=0)
    assert torch.equal(
        bridge.state_dict()["embed.weight"], (model.embed.W_A @ model.embed.W_B).detach()
    )


def test_bridge_without_mlp_bias_and_gelu():
    model, task = _model(7, 1, bias=False, act_fn="gelu")
    bridge = to_transformer_bridge(model)
    s = bridge.state_dict()
    assert (
        s["blocks.0.mlp.in.bias"].abs().max() == 0 and s["blocks.0.mlp.out.bias"].abs().max() == 0
    )
    with torch.no_grad():
        torch.testing.assert_close(
            _bridge_last(bridge, task.x_train), model(task.x_train)[:, -1], atol=TOL, rtol=0
        )


def test_to_bridge_leaves_global_rng_untouched_and_zeroes_biases():
    model, _ = _model(7, 1)
    state = torch.random.get_rng_state()
    bridge = to_transformer_bridge(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    s = bridge.state_dict()
    for key in ["unembed.bias"] + [f"blocks.0.attn.{n}.bias" for n in "qkvo"]:
        assert s[key].abs().max() == 0, key


@pytest.mark.parametrize(("p", "n_layers", "normalization"), [(7, 2, "LN"), (13, 1, "none")])
def test_round_trip_through_bridge_is_exact(p, n_layers, normalization):
    model, task = _model(p, n_layers, normalization=normalization)
    back = from_transformer_bridge(to_transformer_bridge(model), task)
    assert back.cfg.normalization == normalization and back.cfg.n_layers == n_layers
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_from_native_bridge_matches_its_logits():
    """A bridge booted (and randomly initialised) by TransformerLens itself, attention biases zeroed."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)

    p = 11
    task = make_task("mod_add", p=p)
    cfg = TransformerBridgeConfig(
        d_model=D, d_head=DH, n_heads=H, n_layers=2, n_ctx=3, d_mlp=M, d_vocab=p + 1, d_vocab_out=p,
        act_fn="relu", normalization_type="LN", init_weights=True, seed=3,
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(cfg)
    s = bridge.state_dict()
    for key in [f"blocks.{i}.attn.{n}.bias" for i in range(2) for n in "qkvo"]:
        s[key] = torch.zeros_like(s[key])
    s["blocks.1.mlp.in.bias"] = torch.randn_like(s["blocks.1.mlp.in.bias"])  # a nonzero MLP bias
    bridge.load_state_dict(s)
    model = from_transformer_bridge(bridge, task)
    x = _all_inputs(p)
    with torch.no_grad():
        ours = model(x)[:, -1]
        torch.testing.assert_close(ours, _bridge_last(bridge, x), atol=TOL, rtol=0)
    assert ours.std() > 0.1


def test_from_bridge_rejects_what_we_cannot_represent():
    model, task = _model(7, 1)
    bridge = to_transformer_bridge(model)
    s = bridge.state_dict()
    s["blocks.0.attn.k.bias"] = torch.ones_like(s["blocks.0.attn.k.bias"])
    bridge.load_state_dict(s)
    with pytest.raises(GrokinterpError, match="blocks.0.attn.k.bias"):
        from_transformer_bridge(bridge, task)
    with pytest.raises(GrokinterpError, match="vocab_size"):
        from_transformer_bridge(to_transformer_bridge(model), make_task("mod_add", p=11))


def test_to_bridge_rejects_other_models_and_activations():
    task = make_task("mod_add", p=7)
    with pytest.raises(GrokinterpError, match="act_fn"):
        to_transformer_bridge(_model(7, 1, act_fn="tanh")[0])
    embed_mlp = build_model(ModelConfig(name="embed_mlp", d_embed=8, d_mlp=16), task)
    with pytest.raises(GrokinterpError, match="model must be"):
        to_transformer_bridge(embed_mlp)


# ----- HookedRootModule contract on our model ------------------------------------------------


@pytest.mark.parametrize(("p", "n_layers"), [(7, 1), (13, 2)])
def test_run_with_cache_names_and_shapes(p, n_layers):
    model, _ = _model(p, n_layers)
    x = _all_inputs(p)
    n = p * p
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    assert logits.shape == (n, 3, p)
    expected = {"hook_embed": (n, 3, D), "hook_pos_embed": (n, 3, D)}
    for i in range(n_layers):
        expected |= {
            f"blocks.{i}.attn.hook_pattern": (n, H, 3, 3),
            f"blocks.{i}.mlp.hook_pre": (n, 3, M),
            f"blocks.{i}.mlp.hook_post": (n, 3, M),
            f"blocks.{i}.hook_resid_post": (n, 3, D),
        }
    for name, shape in expected.items():
        assert name in cache, name
        assert tuple(cache[name].shape) == shape, name
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(n, H, 3))
    assert pattern.triu(diagonal=1).abs().max() == 0  # causal
    # hook_post is ReLU(hook_pre); the last resid_post read through W_U gives the logits
    last = f"blocks.{n_layers - 1}"
    torch.testing.assert_close(cache[f"{last}.mlp.hook_post"], cache[f"{last}.mlp.hook_pre"].relu())
    torch.testing.assert_close(cache[f"{last}.hook_resid_post"] @ model.unembed.W_U, logits)


def test_run_with_hooks_ablation_equals_zeroed_w_out():
    """Zeroing blocks.0.mlp.hook_post leaves only b_out from the MLP: the same function as the
    model with W_out = 0."""
    p = 11
    model, _ = _model(p, 1)
    x = _all_inputs(p)

    def zero(act, hook):
        return torch.zeros_like(act)

    with torch.no_grad():
        clean = model(x)
        ablated = model.run_with_hooks(x, fwd_hooks=[("blocks.0.mlp.hook_post", zero)])
        reference = copy.deepcopy(model)
        reference.blocks[0].mlp.W_out.zero_()
        expected = reference(x)
        after = model(x)
    assert (ablated - clean).abs().max() > 0.1
    torch.testing.assert_close(ablated, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(after, clean, atol=0, rtol=0)  # hooks were removed
