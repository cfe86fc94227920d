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
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from grokinterp.config import GrokinterpError

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
        m = m.to(torch.bool)
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
    neurons = neurons.to(torch.bool)
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


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=-1) == y).to(torch.float64).mean())


def ablated_accuracy(model: nn.Module, x: Tensor, y: Tensor, layer: int, keep: Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)`` with the neurons of MLP ``layer`` outside ``keep``
    removed (their activation zeroed at ``blocks.{layer}.mlp.hook_post``, which removes their
    outgoing contribution)."""
    name = f"blocks.{layer}.mlp.hook_post"
    if name not in dict(model.named_modules()):
        raise GrokinterpError(f"model has no hook point {name!r}")
    keep_f = keep.to(dtype=next(model.parameters()).dtype)

    def ablate(act: Tensor, hook=None) -> Tensor:
        return act * keep_f

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model.run_with_hooks(x, fwd_hooks=[(name, ablate)])
    finally:
        model.train(was_training)
    return _accuracy(logits, y)


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

    def keep_of(k: int) -> Tensor:
        keep = torch.zeros(d_mlp, dtype=torch.bool)
        keep[order[:k]] = True
        return keep

    full = ablated_accuracy(model, x, y, layer, torch.ones(d_mlp, dtype=torch.bool))
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
