"""The functional, seed-batched forward of the grokinterp models (issue 9; issue 14).

:class:`FastForward` computes the logits of a model built by :func:`grokinterp.models.build_model`
from a dict of parameters that carry a leading seed dimension ``S`` (``S = 1`` for a single run),
so one batched GEMM serves many seeds. It is the same function as the module's forward with
``last_position_only = True``, float rounding aside; the training engine
(:mod:`grokinterp.training.engines.fast`) checks that at start-up with :meth:`FastForward.check`.

- Only what the loss reads is computed: for the transformer of Nanda, Chan, Lieberum, Smith,
  Steinhardt 2023 ("Progress measures for grokking via mechanistic interpretability") the last
  block runs attention queries, MLP and unembedding at the last position only.
- **Token tables instead of per-sample first-layer matmuls.** Inputs are tokens from a small
  vocabulary, so everything the first layer computes before positions mix (residual
  ``W_E[t] + W_pos[j]``, LayerNorm, queries, keys, values; for ``embed_mlp`` the first
  ``W_in``) is a function of (position, token): it is computed once per vocabulary row and
  gathered per sample. The gather's backward is a GEMM with the cached transposed one-hot matrix
  of the fixed inputs on CUDA (never the slow ``index_put`` with accumulate, which was 71% of a
  plain step on an H100) and an ``index_add_`` on CPU.

Models: ``transformer`` (Nanda et al. 2023), ``embed_mlp`` (Minegishi et al. 2024; Xu et al.
2025), ``mlp`` (Liu et al. 2023). This module never imports the training layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grokinterp.config import GrokinterpError, ModelConfig
from grokinterp.models.components import make_activation
from grokinterp.models.hooked import class_logits
from grokinterp.tasks import Task

# One-hot matrices larger than this (elements) are not cached: the gather's backward then uses
# index_add_ (atomics on CUDA) instead of a GEMM.
MAX_ONEHOT_ELEMENTS = 50_000_000


# ============================================================================ precision


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA on (``tf32``) or off inside the block, restored after it.

    Scoped rather than global, so one trainer's ``train.tf32`` never leaks into another's
    computation (or a user's) in the same process. A captured CUDA graph keeps the kernels
    chosen at capture time, so replays need no flag.
    """
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


# ============================================================================ gathers


@dataclass
class Gather:
    """Which table rows each sample reads: ``flat[n·P + k] = k·V + tokens[n, positions[k]]``.

    ``onehot_t [P, V, N]`` (cached for the training inputs on CUDA) turns the backward into one
    batched GEMM ``onehot_t @ grad``; without it the backward is ``index_add_``.
    """

    flat: torch.Tensor  # [N·P] int64
    n: int
    n_pos: int
    vocab: int
    onehot_t: torch.Tensor | None = None


def make_gather(
    tokens: torch.Tensor, positions: list[int], vocab: int, onehot_dtype: torch.dtype | None
) -> Gather:
    """A :class:`Gather` of ``tokens [N, n_ctx]`` at ``positions``; ``onehot_dtype`` caches the
    transposed one-hot matrix for a GEMM backward (``None``: ``index_add_`` backward)."""
    sel = tokens[:, positions]  # [N, P]
    n, n_pos = sel.shape
    offsets = torch.arange(n_pos, device=tokens.device) * vocab
    flat = (sel + offsets).reshape(-1)
    onehot_t = None
    if onehot_dtype is not None and n * n_pos * vocab <= MAX_ONEHOT_ELEMENTS:
        onehot_t = F.one_hot(sel.T, vocab).to(onehot_dtype).transpose(1, 2).contiguous()
    return Gather(flat, n, n_pos, vocab, onehot_t)


class _TableGather(torch.autograd.Function):
    """``out[s, n, k] = table[s, k·V + tok[n, k]]`` whose backward is a GEMM or an index_add_."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, flat: torch.Tensor, onehot_t, n: int, n_pos: int):
        ctx.save_for_backward(flat, onehot_t)
        ctx.shape, ctx.n, ctx.n_pos = table.shape, n, n_pos
        s, _, w = table.shape
        return table.index_select(1, flat).view(s, n, n_pos, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, onehot_t = ctx.saved_tensors
        s, rows, w = ctx.shape
        if onehot_t is not None:
            # Per position k: [V, N] @ [N, w] for every seed, one batched GEMM that sums each
            # table row's gradient. The one-hot is broadcast over seeds (batch stride 0) and the
            # gradient read in place (row stride P·w), so no [S, N, P, w] copy is made.
            grad = grad.reshape(s, ctx.n, ctx.n_pos, w)
            parts = [
                torch.bmm(onehot_t[k].expand(s, -1, -1), grad[:, :, k]) for k in range(ctx.n_pos)
            ]
            return torch.cat(parts, 1), None, None, None, None
        out = grad.new_zeros(s, rows, w)
        out.index_add_(1, flat, grad.reshape(s, ctx.n * ctx.n_pos, w))
        return out, None, None, None, None


def gather_rows(table: torch.Tensor, g: Gather) -> torch.Tensor:
    """``table [S, P·V, w]`` → per-sample rows ``[S, N, P, w]``."""
    return _TableGather.apply(table, g.flat, g.onehot_t, g.n, g.n_pos)


# ============================================================================ forward


def _bc(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Broadcast a per-seed vector ``[S, d]`` against ``[S, ..., d]`` of ``ndim`` dims."""
    return v.view(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5):
    """TransformerLens LayerNorm (as ``grokinterp.models.transformer.LayerNorm``), per seed."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale * _bc(w, x.ndim) + _bc(b, x.ndim)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x [S, ..., d_in] @ w [S, d_in, d_out] (+ b [S, d_out])`` as one batched GEMM."""
    s, d_in = x.shape[0], x.shape[-1]
    x2 = x.reshape(s, -1, d_in)
    out = torch.baddbmm(b.unsqueeze(1), x2, w) if b is not None else torch.bmm(x2, w)
    return out.view(*x.shape[:-1], w.shape[-1])


@dataclass
class Inputs:
    """A fixed input set prepared for :meth:`FastForward.logits` (tokens or vectors)."""

    n: int
    x: torch.Tensor | None = None  # vector inputs [N, D]
    all_pos: Gather | None = None  # transformer per-position rows (K/V; Q and residual if needed)
    last_pos: Gather | None = None  # 1-layer transformer: residual at the last position
    scores: Gather | None = None  # 1-layer transformer: rows of the attention-score table
    pair: Gather | None = None  # embed_mlp: positions 0 and 1


class FastForward:
    """Functional class logits ``[S, N, n_classes]`` of a grokinterp model from parameters with a
    leading seed dimension ``S``; equal (to float rounding) to the module's class logits
    (:func:`~grokinterp.models.class_logits`) with ``last_position_only = True``.

    Models: ``transformer`` (Nanda et al. 2023), ``embed_mlp`` (Minegishi et al. 2024; Xu et
    al. 2025), ``mlp`` (Liu et al. 2023). Token models compute their first layer on per-token
    tables (see the module docstring).
    """

    SUPPORTED = ("transformer", "embed_mlp", "mlp")

    def __init__(self, cfg: ModelConfig, task: Task, device: torch.device, dtype: torch.dtype):
        if cfg.name not in self.SUPPORTED:
            raise GrokinterpError(f"the fast forward does not know model {cfg.name!r}")
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.vocab = task.vocab_size
        self.n_ctx = task.x_train.shape[1] if task.input_kind == "tokens" else None
        self.act = make_activation(cfg.act_fn)
        self.gemm_backward = device.type == "cuda"

    # ------------------------------------------------------------------ inputs
    def prepare(self, x: torch.Tensor, backward: bool = True) -> Inputs:
        """Index tensors (and, with ``backward`` on CUDA, the one-hot GEMM operand) for ``x``."""
        x = x.to(self.device)
        if self.cfg.name == "mlp":
            return Inputs(n=len(x), x=x.to(self.dtype))
        oh = self.dtype if backward and self.gemm_backward else None
        if self.cfg.name == "embed_mlp":
            return Inputs(n=len(x), pair=make_gather(x, [0, 1], self.vocab, oh))
        p, v = x.shape[1], self.vocab
        if self.cfg.n_layers > 1:
            return Inputs(n=len(x), all_pos=make_gather(x, list(range(p)), v, oh))
        # score-table row of (key position j, query token u, key token t): j·V² + u·V + t
        rows = torch.arange(p, device=x.device) * v * v + x[:, p - 1 :] * v + x
        return Inputs(
            n=len(x),
            all_pos=make_gather(x, list(range(p)), v, oh),
            last_pos=make_gather(x, [p - 1], v, oh),
            scores=Gather(rows.reshape(-1), len(x), p, v * v),  # index_add_ backward
        )

    # ------------------------------------------------------------------ forward
    def logits(self, params: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
        name = self.cfg.name
        if name == "transformer":
            return self._transformer(params, inputs)
        if name == "embed_mlp":
            return self._embed_mlp(params, inputs)
        return self._mlp(params, inputs)

    def _embedding(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embed.W_E" in params:
            return params["embed.W_E"]
        return torch.bmm(params["embed.W_A"], params["embed.W_B"])

    def _unembed(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = _linear(x, params["unembed.W_U"], params.get("unembed.b_U"))
        return out * self.cfg.output_scale if self.cfg.output_scale != 1.0 else out

    def _mlp_block(self, params: dict[str, torch.Tensor], i: int, x: torch.Tensor, pre=None):
        """``act(x @ W_in + b_in) [@ W_out + b_out]``; ``pre`` given skips the first matmul."""
        p = f"blocks.{i}.mlp."
        if pre is None:
            pre = _linear(x, params[p + "W_in"], params.get(p + "b_in"))
        post = self.act(pre)
        if p + "W_out" not in params:
            return post
        return _linear(post, params[p + "W_out"], params.get(p + "b_out"))

    # --- transformer (Nanda et al. 2023)
    def _transformer(self, params: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
        cfg = self.cfg
        s = next(iter(params.values())).shape[0]
        h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
        ln = cfg.normalization == "LN"
        n_layers = cfg.n_layers
        n, p = inputs.n, self.n_ctx

        def qkv_weights(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            a = f"blocks.{i}.attn."
            # [S, H, d, e] -> [S, d, H·e] so one GEMM serves all heads
            return tuple(
                params[a + "W_" + k].permute(0, 2, 1, 3).reshape(s, d, h * e) for k in "QKV"
            )

        # ---- first layer on per-(position, token) tables
        emb = self._embedding(params)  # [S, V, d]
        x0 = emb.unsqueeze(1) + params["pos_embed.W_pos"][:, :p].unsqueeze(2)  # [S, P, V, d]
        hx = _layer_norm(x0, params["blocks.0.ln1.w"], params["blocks.0.ln1.b"]) if ln else x0
        w_q, w_k, w_v = qkv_weights(0)
        vocab = x0.shape[2]
        hx_rows = hx.reshape(s, p * vocab, d)
        k_tab = torch.bmm(hx_rows, w_k)  # [S, P·V, He]
        v = gather_rows(torch.bmm(hx_rows, w_v), inputs.all_pos).view(s, n, p, h, e)
        if n_layers == 1:
            # Only the last position is read, so its query depends on one token u and each
            # key on one token t: the scores q_u·k_{j,t} form a small [P, V, V, H] table that
            # is gathered per sample (no per-sample keys or q·k products at all).
            q_tab = torch.bmm(hx[:, -1], w_q).view(s, vocab, h, e).transpose(1, 2)
            k_tab = k_tab.view(s, p * vocab, h, e).permute(0, 2, 3, 1)
            # One GEMM per (seed, head), [V, e] @ [e, P·V] (an einsum or a 4-D matmul would
            # regroup seeds by S and change the rounding of one seed's result).
            table = torch.bmm(q_tab.reshape(s * h, vocab, e), k_tab.reshape(s * h, e, p * vocab))
            table = table.view(s, h, vocab, p, vocab) / math.sqrt(e)
            table = table.permute(0, 3, 2, 4, 1).reshape(s, p * vocab * vocab, h)  # [S, P·V·V, H]
            scores = gather_rows(table, inputs.scores)  # [S, N, P, H]
            resid = gather_rows(x0[:, -1], inputs.last_pos)  # [S, N, 1, d]
            resid = self._attend_mlp(params, 0, resid, v, scores=scores)
        else:
            q_tab = torch.bmm(hx_rows, w_q)
            k = gather_rows(k_tab, inputs.all_pos).view(s, n, p, h, e)
            q = gather_rows(q_tab, inputs.all_pos).view(s, n, p, h, e)
            resid = gather_rows(x0.reshape(s, p * vocab, d), inputs.all_pos)  # [S, N, P, d]
            resid = self._attend_mlp(params, 0, resid, v, q=q, k=k)
        # ---- later layers: ordinary per-sample computation
        for i in range(1, n_layers):
            last = i == n_layers - 1
            hx = resid
            if ln:
                hx = _layer_norm(resid, params[f"blocks.{i}.ln1.w"], params[f"blocks.{i}.ln1.b"])
            w_q, w_k, w_v = qkv_weights(i)
            hq = hx[:, :, -1:] if last else hx
            q = _linear(hq, w_q, None).view(s, n, -1, h, e)
            kv = _linear(hx, torch.cat([w_k, w_v], -1), None)
            k = kv[..., : h * e].reshape(s, n, p, h, e)
            v = kv[..., h * e :].reshape(s, n, p, h, e)
            resid = self._attend_mlp(params, i, resid[:, :, -1:] if last else resid, v, q=q, k=k)
        x = resid[:, :, -1]
        if ln:
            x = _layer_norm(x, params["ln_final.w"], params["ln_final.b"])
        return self._unembed(params, x)

    def _attend_mlp(self, params, i: int, resid, v, q=None, k=None, scores=None):
        """Causal attention of queries ``q [S,N,Q,H,e]`` (the last ``Q`` positions) over
        ``k, v [S,N,P,H,e]`` (or, for one query, given ``scores [S,N,P,H]``), then the MLP;
        returns the new residual ``[S, N, Q, d]``."""
        cfg = self.cfg
        s, n, p, h, e = v.shape
        nq = 1 if scores is not None else q.shape[2]
        scale = math.sqrt(e)
        if nq == 1:  # the last position sees every position: no mask
            if scores is None:
                scores = (q * k).sum(-1) / scale  # [S, N, P, H]
            pattern = scores.softmax(dim=2)
            z = (pattern.unsqueeze(-1) * v).sum(2, keepdim=True)  # [S, N, 1, H, e]
        else:
            scores = torch.einsum("snqhe,snkhe->snhqk", q, k) / scale
            mask = torch.ones(nq, p, dtype=torch.bool, device=q.device).tril(p - nq)
            pattern = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            z = torch.einsum("snhqk,snkhe->snqhe", pattern, v)
        w_o = params[f"blocks.{i}.attn.W_O"].reshape(s, h * e, cfg.d_model)
        resid = resid + _linear(z.reshape(s, n, nq, h * e), w_o, None)
        hx = resid
        if cfg.normalization == "LN":
            hx = _layer_norm(resid, params[f"blocks.{i}.ln2.w"], params[f"blocks.{i}.ln2.b"])
        return resid + self._mlp_block(params, i, hx)

    # --- embed_mlp (Minegishi et al. 2024; GrokTransfer's FNN, Xu et al. 2025)
    def _embed_mlp(self, params: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
        cfg = self.cfg
        emb = self._embedding(params)  # [S, V, d_embed]
        w_in = params["blocks.0.mlp.W_in"]
        if cfg.combine == "sum":  # (E[a] + E[b]) W = (E W)[a] + (E W)[b]
            t = torch.bmm(emb, w_in)
            tab = torch.cat([t, t], 1)
        else:  # [E[a], E[b]] W = (E W_top)[a] + (E W_bottom)[b]
            de = emb.shape[-1]
            tab = torch.cat([torch.bmm(emb, w_in[:, :de]), torch.bmm(emb, w_in[:, de:])], 1)
        pre = gather_rows(tab, inputs.pair).sum(2)  # [S, N, d_mlp]
        if "blocks.0.mlp.b_in" in params:
            pre = pre + params["blocks.0.mlp.b_in"].unsqueeze(1)
        x = self._mlp_block(params, 0, None, pre=pre)
        for i in range(1, cfg.n_layers):
            x = self._mlp_block(params, i, x)
        return self._unembed(params, x)

    # --- mlp on vector inputs (Omnigrok, Liu et al. 2023)
    def _mlp(self, params: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
        w_in = params.get("blocks.0.mlp.W_in")
        if w_in is None:  # factorized first layer (GrokTransfer on vectors): x @ (A·B)
            w_in = self._embedding(params)
        pre = torch.matmul(inputs.x, w_in)  # [N, D] @ [S, D, m] -> [S, N, m]
        if "blocks.0.mlp.b_in" in params:
            pre = pre + params["blocks.0.mlp.b_in"].unsqueeze(1)
        x = self._mlp_block(params, 0, None, pre=pre)
        for i in range(1, self.cfg.n_layers):
            x = self._mlp_block(params, i, x)
        return self._unembed(params, x)

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def check(self, model: nn.Module, x: torch.Tensor, rtol: float | None = None) -> str | None:
        """Why these logits do not match the module's class logits on ``x`` (last position
        only, :func:`~grokinterp.models.class_logits`) to float rounding,
        or None when they do. Errors of the functional forward are part of the reason (a model
        variant it does not know), never swallowed silently."""
        rtol = rtol if rtol is not None else (1e-4 if self.dtype == torch.float32 else 1e-9)
        was_training = model.training
        model.eval()
        try:
            with matmul_precision(False):  # the check is always at full precision
                ref = class_logits(model, x)
                params = {k: p.unsqueeze(0) for k, p in model.named_parameters()}
                out = self.logits(params, self.prepare(x, backward=False))[0]
        except (KeyError, RuntimeError, IndexError, ValueError) as e:
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return f"the functional forward failed ({type(e).__name__}: {text})"
        finally:
            model.train(was_training)
        if out.shape != ref.shape:
            return f"its logits have shape {tuple(out.shape)}, the model's {tuple(ref.shape)}"
        if not bool(torch.isfinite(out).all()):
            return "its logits are not finite"
        err, tol = float((out - ref).abs().max()), float(rtol * (1 + ref.abs().max()))
        if err > tol:
            return f"its logits differ from the model's by {err:.3g} (tolerance {tol:.3g})"
        return None

    def agrees_with(self, model: nn.Module, x: torch.Tensor, rtol: float | None = None) -> bool:
        """Whether these logits match the module's class logits on ``x`` to float rounding."""
        return self.check(model, x, rtol) is None

    @classmethod
    def build(
        cls, cfg: ModelConfig, task: Task, device: torch.device, dtype: torch.dtype
    ) -> FastForward | None:
        """A FastForward for ``cfg``, or None for a model it does not know."""
        try:
            return cls(cfg, task, device, dtype)
        except GrokinterpError:
            return None


__all__ = [
    "MAX_ONEHOT_ELEMENTS",
    "FastForward",
    "Gather",
    "Inputs",
    "gather_rows",
    "make_gather",
    "matmul_precision",
]
