"""The fast training engine (issue 9): the same training as the eager trainer, computed faster.

The eager trainer (:mod:`grokinterp.training.trainer`) runs the hooked module's forward. This
engine keeps everything else (optimizer, schedule, metrics, run format) and changes *how* the
same function is computed:

- **Functional, seed-batched forward** (:class:`FastForward`). Every parameter carries a leading
  seed dimension ``S`` (``S = 1`` for a single run), so the multi-seed engine
  (:mod:`grokinterp.training.multiseed`) uses the very same code. Only what the loss reads is
  computed: for the transformer of Nanda, Chan, Lieberum, Smith, Steinhardt 2023 ("Progress
  measures for grokking via mechanistic interpretability") the last block runs attention
  queries, MLP and unembedding at the last position only.
- **Token tables instead of per-sample first-layer matmuls.** Inputs are tokens from a small
  vocabulary, so everything the first layer computes before positions mix (residual
  ``W_E[t] + W_pos[j]``, LayerNorm, queries, keys, values; for ``embed_mlp`` the first
  ``W_in``) is a function of (position, token): it is computed once per vocabulary row and
  gathered per sample. The gather's backward is a GEMM with the cached transposed one-hot matrix
  of the fixed inputs on CUDA (never the slow ``index_put`` with accumulate, which was 71% of a
  plain step on an H100) and an ``index_add_`` on CPU. Same function, float rounding aside.
- **No host syncs inside a step.** Data stay on the device; metrics are computed on the device
  and read back once per evaluation.
- **Fused AdamW** (``fused=True``; ``capturable=True`` on CUDA) and, on CUDA, **the whole step
  (forward, backward, gradient filter, masks, optimizer) captured in one CUDA graph** once the
  learning-rate warm-up is over.
- **Checkpoint writes off the critical path**: tensors are copied to host memory asynchronously
  and written by a background thread, still atomically through
  :func:`grokinterp.store.save_tensors`; ``finish()`` waits for them.

Numerics contract: the fast and the eager engines compute the same function; their losses agree
to float rounding (``tests/test_fast.py`` compares 50 steps). ``train.tf32 = true`` opts into
TF32 matmuls on CUDA (about 1e-3 relative error per matmul; documented, off by default).

Engine choice: ``train.engine`` = ``"eager"`` | ``"fast"`` | ``"auto"`` (fast on CUDA, eager on
CPU, where runs are the bit-exact reference). A model the fast forward does not know, or whose
fast logits disagree with the module's at start-up, silently uses the module's own forward (the
other speed-ups still apply).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grokinterp.config import GrokinterpError, ModelConfig, RunConfig, TrainConfig
from grokinterp.models.components import make_activation
from grokinterp.store import atomic_write, save_tensors
from grokinterp.tasks import Task
from grokinterp.training.optim import make_optimizer, warmup_factor
from grokinterp.training.trainer import _resolve_device, _Trainer, loss_fn

ENGINES = ("auto", "eager", "fast")
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
    """Functional logits ``[S, N, n_classes]`` of a grokinterp model from parameters with a
    leading seed dimension ``S``; equal (to float rounding) to the module's forward with
    ``last_position_only = True``.

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
    def agrees_with(self, model: nn.Module, x: torch.Tensor, rtol: float | None = None) -> bool:
        """Whether these logits match ``model(x)`` (last-position-only) to float rounding."""
        rtol = rtol if rtol is not None else (1e-4 if self.dtype == torch.float32 else 1e-9)
        was_training = model.training
        model.eval()
        try:
            with matmul_precision(False):  # the check is always at full precision
                ref = model(x)
                params = {k: p.unsqueeze(0) for k, p in model.named_parameters()}
                out = self.logits(params, self.prepare(x, backward=False))[0]
        except (KeyError, RuntimeError, IndexError):
            return False
        finally:
            model.train(was_training)
        if out.shape != ref.shape:
            return False
        tol = rtol * (1 + ref.abs().max())
        return bool(((out - ref).abs().max() <= tol) & torch.isfinite(out).all())

    @classmethod
    def build(
        cls, cfg: ModelConfig, task: Task, device: torch.device, dtype: torch.dtype
    ) -> FastForward | None:
        """A FastForward for ``cfg``, or None for a model it does not know."""
        try:
            return cls(cfg, task, device, dtype)
        except GrokinterpError:
            return None


# ============================================================================ losses, metrics


def per_seed_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of each seed, ``[S]``, from ``logits [S, N, C]`` and labels ``y [N]``:
    the same definitions as :func:`grokinterp.training.trainer.loss_fn` (mean over samples)."""
    s, n, c = logits.shape
    if kind == "cross_entropy":
        logp = logits.log_softmax(-1)
        return -logp.gather(-1, y.expand(s, n).unsqueeze(-1)).squeeze(-1).mean(1)
    if kind == "mse":
        target = F.one_hot(y, c).to(logits.dtype)
        return (logits - target).pow(2).mean((1, 2))
    flat = F.multi_margin_loss(logits.reshape(s * n, c), y.repeat(s), reduction="none")
    return flat.view(s, n).mean(1)


def training_loss(
    fast: FastForward, kind: str, inputs: Inputs, y: torch.Tensor, compile: bool
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> Σ_seeds loss`` on the fixed training set; with ``compile`` (CUDA only)
    through ``torch.compile``, which fuses the elementwise and reduction work of the step."""

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return per_seed_loss(kind, fast.logits(params, inputs), y).sum()

    if compile and fast.device.type == "cuda":
        return torch.compile(loss, dynamic=False)
    return loss


def metrics_row(trainer: Any, vals: list[float]) -> dict[str, Any]:
    """The eager trainer's metrics row from summed [train loss, train correct, test loss,
    test correct, L2 norm, L1 norm] read back from the device in one transfer."""
    n_tr, n_te = len(trainer.y_train), len(trainer.y_test)
    return {
        "step": trainer.step,
        "train_loss": vals[0] / n_tr,
        "train_acc": round(vals[1]) / n_tr,
        "test_loss": vals[2] / n_te,
        "test_acc": round(vals[3]) / n_te,
        "weight_norm_l2": vals[4],
        "weight_norm_l1": vals[5],
        "lr": trainer.opt.param_groups[0]["lr"],
        "wall_time": round(trainer.wall, 4),
    }


def per_seed_norms(params: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-seed global L2 and L1 norms ``([S], [S])`` of stacked parameters ``[S, ...]``."""
    l2, l1 = [], []
    for p in params:
        flat = p.detach().flatten(1)
        l2.append(torch.linalg.vector_norm(flat, 2, dim=1))
        l1.append(torch.linalg.vector_norm(flat, 1, dim=1))
    return torch.linalg.vector_norm(torch.stack(l2), 2, dim=0), torch.stack(l1).sum(0)


def eager_optimizer_state(opt_state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``opt_state`` (of a fused / capturable optimizer) in the format the eager trainer's
    ``foreach`` optimizer saves, so ``state/latest.pt`` is the same whichever engine wrote it."""
    probe = make_optimizer([torch.zeros(1)], cfg).param_groups[0]
    flags = {k: probe[k] for k in ("foreach", "fused", "capturable") if k in probe}
    groups = [
        {**g, **{k: v for k, v in flags.items() if k in g}} for g in opt_state["param_groups"]
    ]
    return {"state": opt_state["state"], "param_groups": groups}


def adopt_fast_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """After ``load_state_dict`` of an eager-format state: restore the fused / capturable flags
    and keep Adam's step counters on the parameters' device, as the fused kernel needs."""
    cuda = device.type == "cuda"
    for g in opt.param_groups:
        if "capturable" in g:  # Adam / AdamW
            g.update(foreach=None, fused=True, capturable=cuda)
            for p in g["params"]:
                st = opt.state.get(p, {})
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def make_fast_optimizer(
    params: list[torch.Tensor], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW / Adam fused into one kernel (``capturable`` on CUDA, so a CUDA graph can hold
    it); SGD stays ``foreach``. Same hyper-parameters as :func:`optim.make_optimizer`."""
    cuda = device.type == "cuda"
    if cfg.optimizer in ("adamw", "adam"):
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return kind(
            params,
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay,
            fused=True,
            capturable=cuda,
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
    )


# ============================================================================ the step


class StepRunner:
    """Runs training steps: eagerly, or (CUDA, once warm-up is over) by replaying one CUDA
    graph of the whole step. ``loss()`` returns the scalar to differentiate; ``after_backward``
    and ``after_step`` hold masks, gradient filters and constraints."""

    EAGER_BEFORE_CAPTURE = 3  # CUDA graphs need a few warm-up iterations on a side stream

    def __init__(
        self,
        params: list[torch.Tensor],
        opt: torch.optim.Optimizer,
        loss: Callable[[], torch.Tensor],
        cfg: TrainConfig,
        device: torch.device,
        graphable: bool,
        after_backward: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
        before_capture: Callable[[], None] | None = None,
    ):
        self.params, self.opt, self.loss, self.cfg = params, opt, loss, cfg
        self.after_backward, self.after_step = after_backward, after_step
        self.before_capture = before_capture
        self.use_graph = graphable and device.type == "cuda"
        self.tf32 = cfg.tf32 and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(device) if self.use_graph else None
        self.eager_steps = 0

    def _body(self) -> None:
        self.loss().backward()
        if self.after_backward:
            self.after_backward()
        self.opt.step()
        if self.after_step:
            self.after_step()

    def _eager(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * warmup_factor(step, self.cfg.warmup_steps)
        self.opt.zero_grad(set_to_none=False)
        self._body()

    def step(self, step: int) -> None:
        """Do training step number ``step`` (0-based: the update that makes it ``step + 1``)."""
        if self.graph is not None:
            self.graph.replay()
            return
        with matmul_precision(self.tf32):
            self._step_uncaptured(step)

    def _step_uncaptured(self, step: int) -> None:
        warm = warmup_factor(step, self.cfg.warmup_steps) == 1.0
        if self.use_graph and warm and self.eager_steps >= self.EAGER_BEFORE_CAPTURE:
            self._capture(step)
            self.graph.replay()
            return
        if self.stream is not None:  # eager steps before capture run on the side stream
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._eager(step)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            self._eager(step)
        self.eager_steps += 1

    def _capture(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * warmup_factor(step, self.cfg.warmup_steps)
        if self.before_capture:  # e.g. let the checkpoint writer finish its CUDA calls
            self.before_capture()
        torch.cuda.synchronize()
        # Gradients allocated during capture live in the graph's pool and are overwritten
        # (not accumulated) by each replay, so no zero_grad is needed inside the graph.
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
            self._body()

    def release(self) -> None:
        """Drop the graph (parameters are about to change shape, e.g. an embedding merge)."""
        if self.graph is not None:
            torch.cuda.synchronize()
            self.graph = None
            self.opt.zero_grad(set_to_none=True)


# ============================================================================ async writes


_WRITERS: weakref.WeakSet = weakref.WeakSet()


class AsyncWriter:
    """One background thread that runs write jobs in order; :meth:`flush` waits for them and
    re-raises the first error. Pending jobs are also flushed at interpreter exit.

    One thread, also for many runs at once: 2, 4 and 8 threads sharded by run were measured
    slower (they compete with the training thread for the GIL; benchmarks/RESULTS.md)."""

    def __init__(self, max_pending: int = 512) -> None:
        # Bounded: if the disk falls behind, training waits rather than filling host memory.
        self.jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.newest_state: dict[Path, int] = {}  # run dir -> newest step whose state is queued
        _WRITERS.add(self)

    def submit(self, job: Callable[[], None]) -> None:
        if self.error is not None:
            self.flush()
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, daemon=True, name="grokinterp-io")
            self.thread.start()
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if self.error is None:
                    job()
            except BaseException as e:  # noqa: BLE001  (re-raised by flush in the caller)
                self.error = e
            finally:
                self.jobs.task_done()

    def flush(self) -> None:
        self.jobs.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


@atexit.register
def _flush_all_writers() -> None:
    for w in list(_WRITERS):
        try:
            w.jobs.join()
        except Exception:  # noqa: BLE001, S110
            pass


def to_host(tree: Any, dtype: torch.dtype | None = None) -> tuple[Any, torch.cuda.Event | None]:
    """Snapshot every tensor in ``tree`` (dicts, lists, tuples) now, for writing elsewhere.

    Tensors are packed per (dtype, device) into one new buffer (the snapshot): on CUDA then
    copied asynchronously into pinned memory (the training thread waits on nothing; the returned
    event says when the data are there), on CPU one copy. The returned tensors are views of
    those buffers (:func:`materialize` gives independent tensors). Floating tensors are cast to
    ``dtype`` first when given. (Keeping the snapshot on the GPU for the writer thread to move
    was measured slower: its small synchronous copies stall the training stream.)
    """
    groups: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}

    def collect(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            key = (t.dtype, t.is_cuda)
            group = groups.setdefault(key, [])
            group.append(t)
            return (_Slot, key, len(group) - 1)
        if isinstance(t, dict):
            return {k: collect(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(collect(v) for v in t)
        return t

    shaped = collect(tree)
    views: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}
    for key, tensors in groups.items():
        flat = torch.cat([t.reshape(-1) for t in tensors])  # a new buffer: a true snapshot
        if key[1]:
            host = torch.empty(flat.numel(), dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
        else:
            host = flat
        sizes = [t.numel() for t in tensors]
        views[key] = [v.view(t.shape) for v, t in zip(host.split(sizes), tensors, strict=True)]
    event = None
    if any(cuda for _, cuda in groups):
        event = torch.cuda.Event()
        event.record()

    def place(t: Any) -> Any:
        if isinstance(t, tuple) and len(t) == 3 and t[0] is _Slot:
            return views[t[1]][t[2]]
        if isinstance(t, dict):
            return {k: place(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(place(v) for v in t)
        return t

    return place(shaped), event


class _Slot:
    """Placeholder marking where a packed CUDA tensor goes back (see :func:`to_host`)."""


def materialize(tree: Any) -> Any:
    """``tree`` with every tensor cloned (independent storages, as the eager trainer saves)."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: materialize(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(materialize(v) for v in tree)
    return tree


def write_checkpoint(
    out: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    event: torch.cuda.Event | None,
    newest_state: dict[Path, int] | None = None,
) -> None:
    """Write ``steps/<step>.safetensors`` then ``state/latest.pt`` (both atomic), in the format
    of the eager trainer; waits for ``event`` (the device-to-host copies) first.

    When ``newest_state`` says a later state of this run is already queued, this (already
    superseded) ``latest.pt`` is not written: resume reads only the newest one.
    """
    if event is not None:
        event.synchronize()
    weights = materialize(weights)
    save_tensors(out / "steps" / f"{step:08d}.safetensors", weights, metadata={"step": str(step)})
    if newest_state is None or newest_state.get(out, step) <= step:
        state = materialize(state)
        atomic_write(out / "state" / "latest.pt", lambda tmp: torch.save(state, tmp))


@dataclass
class Snapshot:
    """Host copies of a checkpoint's weights and resume state (see :func:`snapshot`)."""

    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    event: torch.cuda.Event | None


def snapshot(
    step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], dtype: torch.dtype | None
) -> Snapshot:
    """Copy ``weights`` (cast to ``dtype``) and ``state`` to host memory now (asynchronously on
    CUDA: the returned event says when the copies are done)."""
    if dtype is None:  # one packed transfer for both
        (host_w, host_s), event = to_host((weights, state))
    else:
        host_w, ev1 = to_host(weights, dtype)
        host_s, ev2 = to_host(state)
        event = ev2 if ev2 is not None else ev1
    return Snapshot(step, host_w, host_s, event)


def submit_snapshot(writer: AsyncWriter, out: Path, snap: Snapshot) -> None:
    """Write ``snap`` as ``out``'s checkpoint on the writer's background thread."""
    writer.newest_state[out] = snap.step
    newest = writer.newest_state
    writer.submit(
        lambda: write_checkpoint(out, snap.step, snap.weights, snap.state, snap.event, newest)
    )


# ============================================================================ the trainer


def graph_blockers(tc: TrainConfig) -> list[str]:
    """Features whose per-step Python work or host syncs keep the step out of a CUDA graph."""
    out = []
    if tc.batch_size is not None:
        out.append("train.batch_size (minibatches are drawn on the host)")
    if tc.norm_constraint:
        out.append("train.norm_constraint (reads the norm on the host)")
    if tc.grokfast and tc.grokfast.get("kind") == "ma":
        out.append("train.grokfast kind 'ma' (a Python queue of gradients)")
    return out


class FastTrainer(_Trainer):
    """The eager :class:`~grokinterp.training.trainer._Trainer` with a fast step, device-side
    metrics and background checkpoint writes; the run directory it writes is the same."""

    def __init__(self, config: RunConfig, out: Path, progress: bool):
        super().__init__(config, out, progress)
        tc = config.train
        self.full_batch = tc.batch_size is None or tc.batch_size >= len(self.y_train)
        self.fast = FastForward.build(config.model, self.task, self.device, self.dtype)
        if self.fast is not None and not self.fast.agrees_with(self.model, self.x_train[:256]):
            self.fast = None  # an unknown model variant: use the module's own forward
        self.tf32 = tc.tf32 and self.device.type == "cuda"
        self.host_seconds = {"metrics": 0.0, "checkpoint": 0.0}  # training-thread time spent
        if self.fast is not None:
            self.train_inputs = self.fast.prepare(self.x_train) if self.full_batch else None
            self.train_loss = (
                training_loss(self.fast, tc.loss, self.train_inputs, self.y_train, tc.compile)
                if self.full_batch
                else None
            )
            self.eval_sets = [
                (self.fast.prepare(x[i : i + 16384], backward=False), y[i : i + 16384])
                for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test))
                for i in range(0, len(y), 16384)
            ]
            self.eval_split = [len(range(0, len(self.y_train), 16384))]
        self.runner: StepRunner | None = None
        self.writer = AsyncWriter()
        self._prefetched: Snapshot | None = None

    # ------------------------------------------------------------------ pieces
    def _build_optimizer(self, previous: torch.optim.Optimizer | None = None) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_fast_optimizer(self.params, self.cfg.train, self.device)
        if previous is not None:  # carry per-parameter moments over (GrokTransfer merge)
            for p in self.params:
                if p in previous.state:
                    self.opt.state[p] = previous.state[p]
        self.runner = None

    def stacked_params(self) -> dict[str, torch.Tensor]:
        return {k: p.unsqueeze(0) for k, p in self.model.named_parameters()}

    def _loss(self) -> torch.Tensor:
        kind = self.cfg.train.loss
        if self.full_batch:
            if self.fast is not None:
                return self.train_loss(self.stacked_params())
            return loss_fn(kind, self.model(self.x_train), self.y_train)
        x, y = self.batch()
        if self.fast is not None:
            logits = self.fast.logits(self.stacked_params(), self.fast.prepare(x, backward=False))
            return per_seed_loss(kind, logits, y).sum()
        return loss_fn(kind, self.model(x), y)

    def _after_backward(self) -> None:
        if self.masks:
            self.masks.apply_to_grads()
        if self.grad_filter:
            self.grad_filter(self.params)

    def _after_step(self) -> None:
        if self.masks:
            self.masks.apply_to_weights()
        if self.norm:
            self.norm(self.params)

    def _make_runner(self) -> StepRunner:
        return StepRunner(
            self.params,
            self.opt,
            self._loss,
            self.cfg.train,
            self.device,
            graphable=not graph_blockers(self.cfg.train),
            after_backward=self._after_backward,
            after_step=self._after_step,
            before_capture=self.writer.flush,
        )

    def train_step(self) -> None:
        if self.runner is None:
            self.runner = self._make_runner()
        self.runner.step(self.step)
        self.step += 1
        tc = self.cfg.train
        if tc.merge_embedding_at is not None and self.step == tc.merge_embedding_at:
            self.merge_embedding()

    def merge_embedding(self) -> None:
        if self.runner is not None:
            self.runner.release()
        super().merge_embedding()
        self.runner = None
        if self.fast is not None and self.full_batch:
            self.train_inputs = self.fast.prepare(self.x_train)
            tc = self.cfg.train
            self.train_loss = training_loss(
                self.fast, tc.loss, self.train_inputs, self.y_train, tc.compile
            )

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["optimizer"] = eager_optimizer_state(state["optimizer"], self.cfg.train)
        return state

    def load(self, state: dict[str, Any]) -> None:
        super().load(state)
        adopt_fast_optimizer_state(self.opt, self.device)
        self.runner = None

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def metrics(self) -> dict[str, Any]:
        """The eager trainer's metrics, computed on the device and read back in one sync.

        On CUDA the host runs ahead of the GPU by many queued steps. Everything this step needs
        from the host (the evaluation's kernels and, when a checkpoint follows, its snapshot) is
        queued *before* waiting, so that host work overlaps the GPU's backlog instead of
        leaving the GPU idle after the wait."""
        start = time.perf_counter()
        steps_done = None
        if self.device.type == "cuda":
            steps_done = torch.cuda.Event()
            steps_done.record()
        if self.step in self.ckpt_steps:
            self._prefetched = self._snapshot()
        with matmul_precision(self.tf32):
            values = self._metric_values()
        if steps_done is not None:  # the queued steps' GPU time is training time
            wait = time.perf_counter()
            steps_done.synchronize()
            self.wall += time.perf_counter() - wait
            start += time.perf_counter() - wait
        row = values() if callable(values) else values
        self.host_seconds["metrics"] += time.perf_counter() - start
        return row

    def _metric_values(self) -> dict[str, Any] | Callable[[], dict[str, Any]]:
        """The metrics row, or (fast forward) a function that reads it back from the device."""
        if self.fast is None:
            return super().metrics()
        kind = self.cfg.train.loss
        params = self.stacked_params()
        sums = []  # per chunk: (summed loss, correct count)
        for inputs, y in self.eval_sets:
            logits = self.fast.logits(params, inputs)
            sums.append(
                torch.stack(
                    [
                        per_seed_loss(kind, logits, y)[0] * len(y),
                        (logits[0].argmax(-1) == y).sum().to(logits.dtype),
                    ]
                )
            )
        k = self.eval_split[0]
        train_sum, test_sum = torch.stack(sums[:k]).sum(0), torch.stack(sums[k:]).sum(0)
        l2, l1 = per_seed_norms(p.unsqueeze(0) for p in self.params)
        vals = torch.cat([train_sum, test_sum, l2, l1]).double()
        return lambda: metrics_row(self, vals.tolist())

    # ------------------------------------------------------------------ checkpoints
    def _snapshot(self) -> Snapshot:
        dtype = torch.float16 if self.cfg.train.checkpoint_dtype == "float16" else None
        return snapshot(self.step, self.model.state_dict(), self.state(), dtype)

    def checkpoint(self) -> None:
        """Snapshot weights and resume state (or take the snapshot :meth:`metrics` queued for
        this step); write them on the background thread."""
        start = time.perf_counter()
        snap, self._prefetched = self._prefetched, None
        if snap is None or snap.step != self.step:
            snap = self._snapshot()
        else:  # host-side values decided after the evaluation
            snap.state.update(above_count=self.above_count, wall=self.wall)
        submit_snapshot(self.writer, self.out, snap)
        self.host_seconds["checkpoint"] += time.perf_counter() - start

    def finish(self) -> None:
        self.writer.flush()


def resolve_engine(config: RunConfig) -> str:
    """``"eager"`` or ``"fast"`` for ``config.train.engine`` (``auto``: fast on CUDA)."""
    engine = config.train.engine
    if engine not in ENGINES:
        raise GrokinterpError(
            f"train.engine={engine!r} is not valid; allowed: {', '.join(ENGINES)}"
        )
    if engine == "auto":
        return "fast" if _resolve_device(config.train.device).type == "cuda" else "eager"
    return engine


def make_trainer(config: RunConfig, out: Path, progress: bool) -> _Trainer:
    """The trainer object of the engine ``config.train.engine`` selects."""
    cls = FastTrainer if resolve_engine(config) == "fast" else _Trainer
    return cls(config, out, progress)


__all__ = [
    "ENGINES",
    "AsyncWriter",
    "FastForward",
    "FastTrainer",
    "Gather",
    "Inputs",
    "Snapshot",
    "StepRunner",
    "adopt_fast_optimizer_state",
    "eager_optimizer_state",
    "gather_rows",
    "graph_blockers",
    "make_fast_optimizer",
    "make_gather",
    "make_trainer",
    "materialize",
    "matmul_precision",
    "per_seed_loss",
    "per_seed_norms",
    "resolve_engine",
    "to_host",
    "training_loss",
    "snapshot",
    "submit_snapshot",
    "write_checkpoint",
]
