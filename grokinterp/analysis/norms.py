"""Sparse and dense subnetwork norms.

Merrill, Tsilivis, Shukla 2023, "A Tale of Two Circuits: Grokking as Competition of Sparse and
Dense Subnetworks" (ICLR 2023 workshop). On sparse parity, a 1-hidden-layer ReLU MLP contains a
*sparse* subnetwork (a few neurons of large norm, which generalizes) and a *dense* one (memorizes);
at the grokking transition the sparse subnetwork's norm grows while the complement's decays. The
neuron norm is the L2 norm of its incoming weights; the sparse subnetwork is the smallest set of
top-k neurons by norm that reproduces the full model's train accuracy.

Parameter names follow grokinterp / TransformerLens: an MLP layer ``i`` has ``blocks.{i}.mlp.W_in
[d_in, d_mlp]`` (and ``b_in``); the neuron's outgoing weights are the rows of ``blocks.{i}.mlp.W_out``
if present, else of the next layer's ``blocks.{i+1}.mlp.W_in``, else of ``unembed.W_U``.

A model at chance has no sparse subnetwork to speak of: every subnetwork, the empty one
included, "reproduces" chance accuracy. :func:`smallest_reproducing_topk` then returns
``k = CHANCE_K = -1`` (undefined) instead of a misleading ``k = 0`` — see its docstring.

This module also registers the ``norms`` analysis (:func:`make_norms`): the per-checkpoint
reference (``Measure.at_step``, the functions above, one checkpoint at a time) and a batched path
(``Measure.at_steps``) that computes a whole chunk of checkpoints at once — per-neuron norms as
reductions over the stacked weights, and the top-k search as a few ``vmap``-ed forward passes that
evaluate several candidate ``k`` (the next levels of each checkpoint's binary search) at once,
the part of the model before the ablated layer being computed once per pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import transition_step
from grokinterp.analysis.inputs import model_inputs, sample_split
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.analysis.topk import (
    CHANCE_K,
    ablated_accuracy,
    batched_topk,
    chance_accuracy,
)
from grokinterp.config import GrokinterpError
from grokinterp.store import load_tensors

__all__ = [
    "CHANCE_K",
    "ablated_accuracy",
    "chance_accuracy",
    "make_norms",
    "mlp_layers",
    "neuron_masks",
    "neuron_norms",
    "norms_applies",
    "norms_summary",
    "outgoing_name",
    "smallest_reproducing_topk",
    "subnetwork_norms",
]

_W_IN = re.compile(r"^blocks\.(\d+)\.mlp\.W_in$")


def subnetwork_norms(params: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, float]:
    """L1 and L2 norms of the masked (sparse) part of ``params`` and of its complement (dense).

    For every name in ``mask`` (a bool tensor of the parameter's shape, True = in the sparse
    subnetwork, as in ``analysis.tickets.magnitude_mask``): the sparse part is ``w[mask]``, the
    dense part ``w[~mask]``. Norms are taken over all masked tensors together (the L2 norm is that
    of the concatenated vector). Parameters not named in ``mask`` are ignored. Returns
    ``sparse_l1, sparse_l2, dense_l1, dense_l2, sparse_count, dense_count`` (Merrill et al. 2023).
    """
    if not isinstance(mask, Mapping) or not mask:
        raise GrokinterpError("mask must be a non-empty mapping {parameter name: bool tensor}")
    s1 = s2 = d1 = d2 = 0.0
    sc = dc = 0
    for name, m in mask.items():
        if name not in params:
            raise GrokinterpError(f"mask names parameter {name!r}, which params does not have")
        w = params[name].detach().to(torch.float64)
        if not isinstance(m, Tensor) or m.shape != w.shape:
            raise GrokinterpError(
                f"mask[{name!r}] must be a tensor of shape {tuple(w.shape)} (that of the parameter)"
            )
        m = m.to(device=w.device, dtype=torch.bool)
        a = w.abs()
        s1 += float(a[m].sum())
        d1 += float(a[~m].sum())
        s2 += float((a[m] ** 2).sum())
        d2 += float((a[~m] ** 2).sum())
        sc += int(m.sum())
        dc += int((~m).sum())
    return {
        "sparse_l1": s1,
        "sparse_l2": s2**0.5,
        "dense_l1": d1,
        "dense_l2": d2**0.5,
        "sparse_count": float(sc),
        "dense_count": float(dc),
    }


def mlp_layers(params: Mapping[str, Tensor]) -> list[int]:
    """Indices ``i`` of the MLP layers (``blocks.{i}.mlp.W_in`` present), sorted."""
    return sorted(int(m.group(1)) for k in params if (m := _W_IN.match(k)))


def outgoing_name(params: Mapping[str, Tensor], layer: int) -> str:
    """Name of the matrix whose rows are the outgoing weights of layer ``layer``'s neurons."""
    d_mlp = params[f"blocks.{layer}.mlp.W_in"].shape[1]
    for name in (
        f"blocks.{layer}.mlp.W_out",
        f"blocks.{layer + 1}.mlp.W_in",
        "unembed.W_U",
    ):
        w = params.get(name)
        if w is not None and w.ndim == 2 and w.shape[0] == d_mlp:
            return name
    raise GrokinterpError(f"cannot find the outgoing weights of MLP layer {layer}")


def neuron_masks(
    params: Mapping[str, Tensor], layer: int, neurons: Tensor, include_bias: bool = True
) -> dict[str, Tensor]:
    """Bool masks selecting the parameters of ``neurons`` (bool ``[d_mlp]``) in MLP ``layer``.

    The neuron's parameters are its column of ``W_in``, its ``b_in`` entry (``include_bias``) and its
    row of outgoing weights (:func:`outgoing_name`); feed the result to :func:`subnetwork_norms`.
    """
    w_in = params[f"blocks.{layer}.mlp.W_in"]
    neurons = neurons.to(device=w_in.device, dtype=torch.bool)
    if neurons.shape != (w_in.shape[1],):
        raise GrokinterpError(f"neurons must be a bool tensor of shape [{w_in.shape[1]}] (d_mlp)")
    masks = {f"blocks.{layer}.mlp.W_in": neurons[None, :].expand_as(w_in).clone()}
    b = f"blocks.{layer}.mlp.b_in"
    if include_bias and params.get(b) is not None:
        masks[b] = neurons.clone()
    out = outgoing_name(params, layer)
    masks[out] = neurons[:, None].expand_as(params[out]).clone()
    return masks


def neuron_norms(
    params: Mapping[str, Tensor], include_bias: bool = True
) -> dict[int, dict[str, Tensor]]:
    """Per-neuron L2 norms of every MLP layer: ``{layer: {"in": Tensor[d_mlp], "out": Tensor[d_mlp]}}``.

    ``in``: norm of the neuron's incoming weights (column of ``W_in``, plus its ``b_in`` entry when
    ``include_bias``) — Merrill et al. 2023's neuron norm. ``out``: norm of its outgoing weights.
    """
    layers = mlp_layers(params)
    if not layers:
        raise GrokinterpError("params has no MLP layer (blocks.{i}.mlp.W_in)")
    res: dict[int, dict[str, Tensor]] = {}
    for i in layers:
        w_in = params[f"blocks.{i}.mlp.W_in"].detach().to(torch.float64)
        sq = (w_in**2).sum(dim=0)
        b = params.get(f"blocks.{i}.mlp.b_in")
        if include_bias and b is not None:
            sq = sq + b.detach().to(torch.float64) ** 2
        w_out = params[outgoing_name(params, i)].detach().to(torch.float64)
        res[i] = {"in": sq.sqrt(), "out": w_out.norm(dim=1)}
    return res


def smallest_reproducing_topk(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    layer: int = 0,
    scores: Tensor | None = None,
    tol: float = 0.0,
    search: str = "binary",
) -> dict[str, object]:
    """The smallest ``k`` such that the top-k neurons of MLP ``layer`` reproduce the model's accuracy.

    Merrill et al. 2023: neurons ranked by ``scores`` (default: incoming-weight L2 norm,
    :func:`neuron_norms`), ties broken by index; the kept set is the top k, the others are ablated
    (:func:`ablated_accuracy`); ``k`` is the smallest with accuracy ≥ full accuracy − ``tol``.
    ``search="binary"`` assumes accuracy is monotone in k (``log2(d_mlp)`` forward passes; the
    returned k always satisfies the criterion and k−1 does not); ``"scan"`` tries every k upwards
    (exact, ``d_mlp`` passes). ``k = d_mlp`` keeps every neuron and is the model itself.

    **A model at chance** — full accuracy ≤ :func:`chance_accuracy` (the most common label's
    frequency in ``y``, the best a constant prediction does, plus ``CHANCE_SE`` = 3 binomial
    standard errors) — has no meaningful sparse subnetwork: the empty set "reproduces" its
    accuracy, which would read as ``k = 0``, a perfectly sparse model. Then
    ``k = CHANCE_K = -1`` (undefined), ``keep`` is empty and
    ``accuracy`` is that of the empty subnetwork (every neuron of the layer ablated). A model
    above chance may still get ``k = 0`` when the layer is not needed (e.g. a residual stream
    that carries the answer past it).

    Returns ``k``, ``accuracy`` (of the top-k model), ``full_accuracy``, ``keep`` (bool [d_mlp]).
    """
    if search not in ("binary", "scan"):
        raise GrokinterpError(f"search must be 'binary' or 'scan', got {search!r}")
    if not (0 <= tol <= 1):
        raise GrokinterpError(f"tol must be in [0, 1], got {tol!r}")
    params = dict(model.state_dict())
    if f"blocks.{layer}.mlp.W_in" not in params:
        raise GrokinterpError(
            f"layer={layer!r} is not an MLP layer; available: {mlp_layers(params)}"
        )
    if scores is None:
        scores = neuron_norms(params)[layer]["in"]
    d_mlp = params[f"blocks.{layer}.mlp.W_in"].shape[1]
    if scores.shape != (d_mlp,):
        raise GrokinterpError(f"scores must have shape [{d_mlp}] (d_mlp of layer {layer})")
    # Stable descending order: equal scores keep the lower index first (deterministic ties).
    order = torch.sort(scores.detach().to(torch.float64), descending=True, stable=True).indices
    order = order.cpu()

    def keep_of(k: int) -> Tensor:
        keep = torch.zeros(d_mlp, dtype=torch.bool)
        keep[order[:k]] = True
        return keep

    full = ablated_accuracy(model, x, y, layer, torch.ones(d_mlp, dtype=torch.bool))
    if full <= chance_accuracy(y):
        keep = keep_of(0)
        return {
            "k": CHANCE_K,
            "accuracy": ablated_accuracy(model, x, y, layer, keep),
            "full_accuracy": full,
            "keep": keep,
        }
    target = full - tol - 1e-12
    if search == "scan":
        k = next(
            k
            for k in range(d_mlp + 1)
            if ablated_accuracy(model, x, y, layer, keep_of(k)) >= target
        )
    else:
        lo, hi = 0, d_mlp  # invariant: acc(hi) ≥ target; acc(lo) < target unless lo satisfies
        if ablated_accuracy(model, x, y, layer, keep_of(0)) >= target:
            hi = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ablated_accuracy(model, x, y, layer, keep_of(mid)) >= target:
                hi = mid
            else:
                lo = mid
        k = hi
    keep = keep_of(k)
    return {
        "k": k,
        "accuracy": ablated_accuracy(model, x, y, layer, keep),
        "full_accuracy": full,
        "keep": keep,
    }


def _neuron_parts(
    params: Mapping[str, Tensor], layer: int, out_name: str, include_bias: bool
) -> dict[str, Tensor]:
    """Per-neuron float64 sums over the neuron's parameters, for stacked ``params`` (leading
    axes kept): ``in_sq``/``in_l1`` (W_in column, with b_in when ``include_bias``),
    ``out_sq``/``out_l1`` (outgoing row). Float64 as in :func:`neuron_norms` and
    :func:`subnetwork_norms`: ties in the norm ranking must be the reference's."""
    w_in = params[f"blocks.{layer}.mlp.W_in"].to(torch.float64)
    w_out = params[out_name].to(torch.float64)
    in_sq, in_l1 = (w_in**2).sum(dim=-2), w_in.abs().sum(dim=-2)
    b = params.get(f"blocks.{layer}.mlp.b_in")
    if include_bias and b is not None:
        b = b.to(torch.float64)
        in_sq, in_l1 = in_sq + b**2, in_l1 + b.abs()
    return {
        "in_sq": in_sq,
        "in_l1": in_l1,
        "out_sq": (w_out**2).sum(dim=-1),
        "out_l1": w_out.abs().sum(dim=-1),
    }


def _split_norms(parts: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """:func:`subnetwork_norms` of :func:`neuron_masks` for ``keep`` ``[..., d_mlp]``."""
    keep = keep.to(parts["in_sq"].device, torch.float64)
    sq = parts["in_sq"] + parts["out_sq"]
    l1 = parts["in_l1"] + parts["out_l1"]
    return {
        "sparse_l2": (sq * keep).sum(-1).sqrt(),
        "dense_l2": (sq * (1 - keep)).sum(-1).sqrt(),
        "sparse_l1": (l1 * keep).sum(-1),
        "dense_l1": (l1 * (1 - keep)).sum(-1),
    }


# ---------------------------------------------------------------------------------------------
# The "norms" analysis
# ---------------------------------------------------------------------------------------------


def norms_applies(run: Any) -> str | None:
    """None if ``norms`` applies (the model has ``blocks.{i}.mlp.W_in`` MLP layers). Reads the
    first checkpoint's parameter names (one small file), builds no model."""
    if not run.steps:
        return "the run has no checkpoint"
    if not mlp_layers(run.load_state(run.steps[0])):
        return "the model has no MLP layer (blocks.{i}.mlp.W_in)"
    return None


def norms_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """Headline numbers, per MLP layer (lists aligned with ``layers``): ``final_k``, the smallest
    reproducing top-k at the last checkpoint (``-1``: the model is at chance there), and the L2
    norm of that set of neurons vs the rest (``sparse_l2_*`` vs ``dense_l2_*``) at the first and
    the last checkpoint; ``test_acc_half_way_step``, where test accuracy is half-way through its
    change (context for the norms' turn)."""
    layers = sorted(int(k.split("/", 1)[1]) for k in results if k.startswith("final_k/"))
    last = {
        "sparse_l2_start": ("final_sparse_l2", 0),
        "dense_l2_start": ("final_dense_l2", 0),
        "sparse_l2_end": ("final_sparse_l2", -1),
        "dense_l2_end": ("final_dense_l2", -1),
    }
    out: dict[str, Any] = {
        "layers": layers,
        "final_k": [int(results[f"k/{i}"][-1]) for i in layers],
        "d_mlp": [int(results[f"in_norm/{i}"].shape[-1]) for i in layers],
    }
    for name, (key, row) in last.items():
        out[name] = [float(results[f"{key}/{i}"][row]) for i in layers]
    out["test_acc_half_way_step"] = transition_step(run.metrics, "test_acc", 0.5)
    return out


@register_analysis("norms", applies=norms_applies, summarize=norms_summary)
def make_norms(
    run: Any,
    layers: Sequence[int] | None = None,
    include_bias: bool = True,
    tol: float = 0.0,
    search: str = "binary",
    n_samples: int | None = None,
    mask: str | None = None,
    seed: int = 0,
) -> Measure:
    """Sparse/dense subnetwork norms (Merrill et al. 2023) of every MLP layer.

    Per MLP layer ``i`` (all, or ``layers``): ``in_norm/i``, ``out_norm/i`` ``[d_mlp]`` per-neuron
    L2 norms of incoming (with ``b_in`` when ``include_bias``) and outgoing weights; ``k/i``, the
    smallest top-k by incoming norm whose subnetwork (other neurons of layer i ablated) reaches the
    full model's train accuracy − ``tol`` (:func:`smallest_reproducing_topk`, ``search``; ``-1``
    when the model is at chance), with ``topk_acc/i``; ``sparse_l2/i``, ``dense_l2/i`` (and
    ``_l1``): norms of the parameters of those k neurons (W_in column, b_in, outgoing row) vs. the
    other neurons; ``final_*`` the same for the fixed sparse set of the **last** checkpoint (so
    one set is followed through training; ``final_k/i`` its size, ``-1`` if the last checkpoint is
    at chance and the set empty). ``train_acc``: full-model accuracy on the (``n_samples``)
    training points. With ``mask`` (a safetensors file of bool masks, e.g. a grokking ticket),
    ``mask/sparse_l2`` etc.: norms of the masked vs unmasked weights (:func:`subnetwork_norms`).

    The last checkpoint's sparse sets are chosen here, once, and recorded in the measure's
    ``key`` (``reference_step``, ``final_k``, ``final_keep`` indices per layer).
    """
    task = run.task()
    x, y = sample_split(task, "train", n_samples, seed)
    last_step = run.steps[-1]
    state_last = run.load_state(last_step)
    all_layers = mlp_layers(state_last)
    chosen = list(all_layers if layers is None else layers)
    bad = [i for i in chosen if i not in all_layers]
    if bad or not chosen:
        raise GrokinterpError(
            f"layers must be a non-empty subset of the MLP layers {all_layers}, got {chosen}"
        )
    if search not in ("binary", "scan"):
        raise GrokinterpError(f"search must be 'binary' or 'scan', got {search!r}")
    if not (isinstance(tol, (int, float)) and 0 <= tol <= 1):
        raise GrokinterpError(f"tol must be in [0, 1], got {tol!r}")
    mask_tensors = None
    if mask is not None:
        mask_tensors = {k: v.bool() for k, v in load_tensors(mask).items()}
        unknown = sorted(set(mask_tensors) - set(state_last))
        if unknown:
            raise GrokinterpError(
                f"mask names parameters the model does not have: {', '.join(unknown)}"
            )
        wrong = sorted(k for k, v in mask_tensors.items() if v.shape != state_last[k].shape)
        if wrong:
            raise GrokinterpError(
                f"mask tensors {', '.join(wrong)} do not have their parameter's shape"
            )
    out_names = {i: outgoing_name(state_last, i) for i in chosen}

    # The sparse set of the final model, followed through training (batched search on one
    # checkpoint: the same search as the reference, fewer forward passes).
    final_model = run.model(last_step)
    xl = model_inputs(x, final_model)
    stacked = {k: v[None] for k, v in state_last.items()}
    final_keep: dict[int, Tensor] = {}
    final_k: dict[int, int] = {}
    for i in chosen:
        scores = _neuron_parts(stacked, i, out_names[i], include_bias)["in_sq"].sqrt()
        res = batched_topk(final_model, stacked, xl, y, i, scores, tol, search)
        final_keep[i], final_k[i] = res["keep"][0], int(res["k"][0])
    key = {
        "reference_step": int(last_step),
        "final_k": {str(i): final_k[i] for i in chosen},
        "final_keep": {str(i): torch.nonzero(final_keep[i]).flatten().tolist() for i in chosen},
    }

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        xs = model_inputs(x, model)
        norms = neuron_norms(state, include_bias=include_bias)
        out: dict[str, Tensor] = {}
        for i in chosen:
            scores = norms[i]["in"]
            res = smallest_reproducing_topk(
                model, xs, y, layer=i, scores=scores, tol=tol, search=search
            )
            out["train_acc"] = torch.tensor(res["full_accuracy"])
            out[f"in_norm/{i}"] = norms[i]["in"].float()
            out[f"out_norm/{i}"] = norms[i]["out"].float()
            out[f"k/{i}"] = torch.tensor(res["k"])
            out[f"topk_acc/{i}"] = torch.tensor(res["accuracy"])
            for prefix, keep in (("", res["keep"]), ("final_", final_keep[i])):
                sub = subnetwork_norms(state, neuron_masks(state, i, keep, include_bias))
                for key_ in ("sparse_l2", "dense_l2", "sparse_l1", "dense_l1"):
                    out[f"{prefix}{key_}/{i}"] = torch.tensor(sub[key_])
            out[f"final_k/{i}"] = torch.tensor(final_k[i])
        if mask_tensors is not None:
            sub = subnetwork_norms(state, mask_tensors)
            for key_, v in sub.items():
                out[f"mask/{key_}"] = torch.tensor(v)
        return out

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        P, C, dev = batch.params, len(batch), batch.device
        xs = model_inputs(x, batch.model)
        out: dict[str, Tensor] = {}
        for i in chosen:
            parts = _neuron_parts(P, i, out_names[i], include_bias)
            in_norm = parts["in_sq"].sqrt()
            res = batched_topk(batch.model, P, xs, y, i, in_norm, tol, search)
            out["train_acc"] = res["full_accuracy"].float()
            out[f"in_norm/{i}"] = in_norm.float()
            out[f"out_norm/{i}"] = parts["out_sq"].sqrt().float()
            out[f"k/{i}"] = res["k"]
            out[f"topk_acc/{i}"] = res["accuracy"].float()
            final = final_keep[i].to(dev).expand(C, -1)
            for prefix, keep in (("", res["keep"]), ("final_", final)):
                for key_, v in _split_norms(parts, keep).items():
                    out[f"{prefix}{key_}/{i}"] = v.float()
            out[f"final_k/{i}"] = torch.full((C,), final_k[i], dtype=torch.long)
        if mask_tensors is not None:
            s1 = s2 = d1 = d2 = 0
            sc = dc = 0
            for name, m in mask_tensors.items():
                a = P[name].to(torch.float64).abs().flatten(1)
                keep = m.to(dev).flatten().to(torch.float64)
                s1, d1 = s1 + (a * keep).sum(1), d1 + (a * (1 - keep)).sum(1)
                s2, d2 = s2 + (a**2 * keep).sum(1), d2 + (a**2 * (1 - keep)).sum(1)
                sc, dc = sc + int(m.sum()), dc + int((~m).sum())
            mask_out = {
                "sparse_l1": s1,
                "sparse_l2": s2**0.5,
                "dense_l1": d1,
                "dense_l2": d2**0.5,
                "sparse_count": torch.full((C,), float(sc), dtype=torch.float64),
                "dense_count": torch.full((C,), float(dc), dtype=torch.float64),
            }
            for key_, v in mask_out.items():
                out[f"mask/{key_}"] = v.float()
        return {k: v.cpu() for k, v in out.items()}

    return Measure(at_step=at_step, at_steps=at_steps, key=key)
