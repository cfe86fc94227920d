"""Move weights between our ``transformer`` and TransformerLens 4.x's ``TransformerBridge``.

Our transformer is the one of Nanda, Chan, Lieberum, Smith, Steinhardt 2023 ("Progress measures
for grokking via mechanistic interpretability"): token + positional embeddings, causal attention
without biases on ``q·k/√d_head``, an MLP ``act(x W_in + b_in) W_out + b_out``, optional
LayerNorm ``(x - mean) / sqrt(var + eps) · w + b``, logits ``x W_U`` at the last position.

``TransformerBridge.boot_native`` (TransformerLens 4.x, Nanda & Bloom) builds the same network
from a ``TransformerBridgeConfig``, stored as ``nn.Linear`` layers that always carry biases;
the conversion sets the attention and unembedding biases to zero, so both models compute the
same logits ``[batch, pos, d_vocab_out]`` at every position (TransformerLens's convention, which
ours follows) and the same ``run_with_cache`` activations.

Weight mapping (bridge keys are those of ``bridge.state_dict()``; ``(h e)`` = head-major flat):

=================================  ====================================================
ours                               bridge
=================================  ====================================================
``embed.W_E [V, D]``               ``embed.weight [V, D]`` (factorized: ``W_A @ W_B``)
``pos_embed.W_pos [n_ctx, D]``     ``pos_embed.weight [n_ctx, D]``
``blocks.i.attn.W_Q [H, D, E]``    ``blocks.i.attn.q.weight [(h e), D]``; same for K, V
``blocks.i.attn.W_O [H, E, D]``    ``blocks.i.attn.o.weight [D, (h e)]``
(none)                             ``blocks.i.attn.{q,k,v,o}.bias`` = 0
``blocks.i.mlp.W_in [D, M]``       ``blocks.i.mlp.in.weight [M, D]`` (transposed)
``blocks.i.mlp.b_in [M]``          ``blocks.i.mlp.in.bias [M]`` (0 if ``bias=False``)
``blocks.i.mlp.W_out [M, D]``      ``blocks.i.mlp.out.weight [D, M]`` (transposed)
``blocks.i.mlp.b_out [D]``         ``blocks.i.mlp.out.bias [D]``
``blocks.i.ln{1,2}.w / .b``        ``blocks.i.ln{1,2}.weight / .bias``
``ln_final.w / .b``                ``ln_final.weight / .bias``
``unembed.W_U [D, C]``             ``unembed.weight [C, D]`` (times ``output_scale``)
(none)                             ``unembed.bias [C]`` = 0
=================================  ====================================================
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import torch
from einops import rearrange

from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models.transformer import LayerNorm, Transformer
from grokinterp.tasks import Task

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# Activations that mean the same function in both libraries (nn.GELU and F.gelu: exact erf GELU).
_ACT_FNS = ("relu", "gelu")
# Our LayerNorm's eps (not in ModelConfig): a bridge with another eps cannot be represented.
_LN_EPS = inspect.signature(LayerNorm.__init__).parameters["eps"].default


def _boot_native():
    # Imported lazily: the bridge pulls in `transformers` (~2 s), which plain model use never needs.
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)

    return TransformerBridge, TransformerBridgeConfig


def to_transformer_bridge(model: Transformer) -> TransformerBridge:
    """A ``TransformerBridge`` (``boot_native``) computing the same logits as ``model``.

    ``bridge(tokens)`` equals ``model(tokens)`` (``[batch, pos, d_vocab_out]``) up to float
    rounding; hooks with the same TransformerLens names (``hook_embed``,
    ``blocks.{i}.attn.hook_pattern``, ``blocks.{i}.mlp.hook_post``, ...) see the same
    activations. A factorized embedding is
    handed over as the full product ``W_A @ W_B``; ``output_scale`` is folded into ``W_U``.
    The bridge has the model's dtype and device and no tokenizer.
    """
    if not isinstance(model, Transformer):
        raise GrokinterpError(
            f"model must be a grokinterp transformer (model.name = 'transformer'); got {type(model).__name__}"
        )
    cfg = model.cfg
    if cfg.act_fn not in _ACT_FNS:
        raise GrokinterpError(
            f"act_fn={cfg.act_fn!r} has no TransformerBridge equivalent; allowed: {', '.join(_ACT_FNS)}"
        )
    use_ln = cfg.normalization == "LN"
    eps = model.ln_final.eps if use_ln else _LN_EPS
    W_E = model.embed.weight.detach()
    W_pos = model.pos_embed.W_pos.detach()
    W_U = model.unembed.W_U.detach()
    TransformerBridge, TransformerBridgeConfig = _boot_native()
    bridge_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=W_pos.shape[0],
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=W_E.shape[0],
        d_vocab_out=W_U.shape[1],
        act_fn=cfg.act_fn,
        normalization_type="LN" if use_ln else None,
        eps=eps,
        attn_only=False,
        positional_embedding_type="standard",
        attention_dir="causal",
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        model_name=f"grokinterp-{cfg.name}",
        init_weights=False,  # every weight is overwritten below
        dtype=W_E.dtype,
    )
    # nn.Linear's default init draws from the global RNG: keep the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        bridge = TransformerBridge.boot_native(
            bridge_cfg, tokenizer=None, device=W_E.device, dtype=W_E.dtype
        )
    bridge.load_state_dict(_to_bridge_state(model), strict=True)
    bridge.eval()
    return bridge


@torch.no_grad()
def _to_bridge_state(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    W_U = model.unembed.W_U * model.unembed.output_scale
    b_U = (
        model.unembed.b_U * model.unembed.output_scale
        if model.unembed.b_U is not None
        else torch.zeros(W_U.shape[1])
    )
    state = {
        "embed.weight": model.embed.weight,
        "pos_embed.weight": model.pos_embed.W_pos,
        "unembed.weight": W_U.T,
        "unembed.bias": b_U,
    }
    for i, block in enumerate(model.blocks):
        pre = f"blocks.{i}."
        attn, mlp = block.attn, block.mlp
        for name in ("Q", "K", "V"):
            w = getattr(attn, f"W_{name}")
            state[pre + f"attn.{name.lower()}.weight"] = rearrange(w, "h d e -> (h e) d")
            state[pre + f"attn.{name.lower()}.bias"] = torch.zeros(cfg.n_heads * cfg.d_head)
        state[pre + "attn.o.weight"] = rearrange(attn.W_O, "h e d -> d (h e)")
        state[pre + "attn.o.bias"] = torch.zeros(cfg.d_model)
        state[pre + "mlp.in.weight"] = mlp.W_in.T
        state[pre + "mlp.in.bias"] = mlp.b_in if mlp.b_in is not None else torch.zeros(cfg.d_mlp)
        state[pre + "mlp.out.weight"] = mlp.W_out.T
        state[pre + "mlp.out.bias"] = (
            mlp.b_out if mlp.b_out is not None else torch.zeros(cfg.d_model)
        )
        if cfg.normalization == "LN":
            for ln in ("ln1", "ln2"):
                state[pre + f"{ln}.weight"] = getattr(block, ln).w
                state[pre + f"{ln}.bias"] = getattr(block, ln).b
    if cfg.normalization == "LN":
        state["ln_final.weight"] = model.ln_final.w
        state["ln_final.bias"] = model.ln_final.b
    ref = model.embed.weight
    return {k: v.detach().to(device=ref.device, dtype=ref.dtype).clone() for k, v in state.items()}


def from_transformer_bridge(bridge: TransformerBridge, task: Task) -> Transformer:
    """Our ``transformer`` for ``task`` with the weights of a ``boot_native`` bridge.

    The inverse of :func:`to_transformer_bridge`. The bridge must be of a kind our model can
    represent: standard positional embeddings, ``normalization_type`` None or ``"LN"`` (eps
    1e-5), ReLU or GELU MLP, zero attention and unembedding biases, ``d_vocab`` equal to the
    task's vocabulary and ``d_vocab_out`` to its number of classes. The returned model has
    ``bias=True`` and ``output_scale=1``.
    """
    bcfg = bridge.cfg
    norm = bcfg.normalization_type.upper() if bcfg.normalization_type else None
    checks = [
        (
            norm in (None, "LN"),
            f"normalization_type={bcfg.normalization_type!r} (allowed: None, 'LN')",
        ),
        (norm is None or math.isclose(bcfg.eps, _LN_EPS), f"eps={bcfg.eps!r} (allowed: {_LN_EPS})"),
        (
            (bcfg.act_fn or "").lower() in _ACT_FNS,
            f"act_fn={bcfg.act_fn!r} (allowed: {', '.join(_ACT_FNS)})",
        ),
        (not bcfg.attn_only and not bcfg.gated_mlp, "attn_only / gated_mlp (must be False)"),
        (
            bcfg.positional_embedding_type == "standard",
            f"positional_embedding_type={bcfg.positional_embedding_type!r}",
        ),
        (
            bcfg.attention_dir == "causal",
            f"attention_dir={bcfg.attention_dir!r} (allowed: 'causal')",
        ),
        (
            bcfg.n_key_value_heads in (None, bcfg.n_heads),
            "n_key_value_heads (grouped-query attention)",
        ),
        (not bcfg.final_rms, "final_rms=True"),
        (
            not bcfg.use_attn_scale
            or bcfg.attn_scale <= 0
            or math.isclose(bcfg.attn_scale, math.sqrt(bcfg.d_head)),
            f"attn_scale={bcfg.attn_scale!r} (allowed: sqrt(d_head))",
        ),
    ]
    for ok, what in checks:
        if not ok:
            raise GrokinterpError(f"bridge has {what}: our transformer cannot represent it")
    if task.input_kind != "tokens":
        raise GrokinterpError(f"task {task.name!r} has vector inputs; the transformer needs tokens")
    seq = task.x_train.shape[1]
    d_vocab_out = bcfg.d_vocab_out if bcfg.d_vocab_out > 0 else bcfg.d_vocab
    if (bcfg.d_vocab, d_vocab_out) != (task.vocab_size, task.n_classes) or bcfg.n_ctx < seq:
        raise GrokinterpError(
            f"bridge (d_vocab={bcfg.d_vocab}, d_vocab_out={d_vocab_out}, n_ctx={bcfg.n_ctx}) does not fit task "
            f"{task.name!r} (vocab_size={task.vocab_size}, n_classes={task.n_classes}, sequence length {seq})"
        )

    s = {k: v.detach() for k, v in bridge.state_dict().items()}
    zero_keys = ["unembed.bias"] + [
        f"blocks.{i}.attn.{n}.bias" for i in range(bcfg.n_layers) for n in "qkvo"
    ]
    nonzero = [k for k in zero_keys if k in s and s[k].abs().max() > 0]
    if nonzero:
        raise GrokinterpError(
            f"bridge has nonzero biases our transformer lacks: {', '.join(nonzero)}"
        )

    cfg = ModelConfig(
        name="transformer",
        n_layers=bcfg.n_layers,
        d_model=bcfg.d_model,
        n_heads=bcfg.n_heads,
        d_head=bcfg.d_head,
        d_mlp=bcfg.d_mlp,
        act_fn=bcfg.act_fn.lower(),
        normalization="LN" if norm == "LN" else "none",
        bias=True,
    )
    h = bcfg.n_heads
    state = {
        "embed.W_E": s["embed.weight"],
        "pos_embed.W_pos": s["pos_embed.weight"][
            :seq
        ],  # positions past the task's length are unused
        "unembed.W_U": s["unembed.weight"].T,
    }
    for i in range(bcfg.n_layers):
        pre = f"blocks.{i}."
        for name in ("Q", "K", "V"):
            w = s[pre + f"attn.{name.lower()}.weight"]
            state[pre + f"attn.W_{name}"] = rearrange(w, "(h e) d -> h d e", h=h)
        state[pre + "attn.W_O"] = rearrange(s[pre + "attn.o.weight"], "d (h e) -> h e d", h=h)
        state[pre + "mlp.W_in"] = s[pre + "mlp.in.weight"].T
        state[pre + "mlp.b_in"] = s[pre + "mlp.in.bias"]
        state[pre + "mlp.W_out"] = s[pre + "mlp.out.weight"].T
        state[pre + "mlp.b_out"] = s[pre + "mlp.out.bias"]
        if norm == "LN":
            for ln in ("ln1", "ln2"):
                state[pre + f"{ln}.w"] = s[pre + f"{ln}.weight"]
                state[pre + f"{ln}.b"] = s[pre + f"{ln}.bias"]
    if norm == "LN":
        state["ln_final.w"] = s["ln_final.weight"]
        state["ln_final.b"] = s["ln_final.bias"]

    with torch.random.fork_rng(
        devices=[]
    ):  # the random init is overwritten; spare the caller's RNG
        model = Transformer(cfg, task)
    ref = s["embed.weight"]
    model.to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict({k: v.contiguous().clone() for k, v in state.items()}, strict=True)
    return model


__all__ = ["from_transformer_bridge", "to_transformer_bridge"]
