"""Rank of learned representations.

Fan, Pascanu, Jaggi 2024, "Deep Grokking: Would Deep Neural Networks Generalize Better?": the
numerical rank of each layer's pre-activation features on a fixed sample set drops when a deep
MLP starts to generalize (and shows a double descent with two-stage generalization). Their code
takes the rank of the features' covariance, i.e. of the *centred* features; :func:`layer_ranks`
does that by default (``center=True``) but computes it from the singular values of the centred
feature matrix itself, which is better conditioned than forming the covariance.

Because the numerical rank saturates in float32 (every tiny singular value is above round-off),
the effective rank of Roy & Vetterli 2007 ("The effective rank: a measure of effective
dimensionality", EUSIPCO) is provided as a smooth companion.

Registered as the ``rank`` analysis (:func:`make_rank`): both ranks of every layer at every
checkpoint. Over many checkpoints it uses :mod:`grokinterp.analysis.rank_batched`
(:func:`batched_ranks`, :func:`batched_linear_ranks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch, last_position_only
from grokinterp.analysis.complexity import activation_modules, preactivation_hooks
from grokinterp.analysis.curves import (
    drop_step,
    generalization_window,
    largest_drop,
    transition_step,
)
from grokinterp.analysis.inputs import model_inputs, sample_split
from grokinterp.analysis.rank_batched import (
    batched_linear_ranks,
    batched_ranks,
    input_weight,
    rank_tolerance,
)
from grokinterp.analysis.registry import Measure, cache_info, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "batched_linear_ranks",
    "batched_ranks",
    "effective_rank",
    "feature_rank",
    "layer_features",
    "layer_ranks",
    "make_rank",
    "rank_applies",
    "rank_caps",
    "rank_summary",
    "singular_values",
]


def _check_features(features: Tensor) -> Tensor:
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise GrokinterpError("features must be a 2-D tensor [n, d]")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise GrokinterpError(
            f"features must have n ≥ 1 and d ≥ 1, got shape {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        features = features.to(torch.get_default_dtype())
    if not torch.isfinite(features).all():
        raise GrokinterpError("features must be finite (no NaN or inf)")
    return features


def singular_values(features: Tensor, center: bool = False) -> Tensor:
    """Singular values of ``features [n, d]`` in descending order, computed in float64.

    ``center=True`` subtracts the per-feature mean first (the rank of the covariance matrix).
    """
    f = _check_features(features).to(torch.float64)
    if center:
        f = f - f.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(f)


def feature_rank(features: Tensor, rtol: float | None = None, center: bool = False) -> int:
    """Numerical rank of ``features [n, d]``: the number of singular values above a tolerance.

    The tolerance is ``rtol · σ_max``. With ``rtol=None`` it is ``σ_max · max(n, d) · eps``, eps
    being the machine epsilon of the **input** dtype (float32: 1.19e-7; float64: 2.22e-16) — the
    convention of ``numpy.linalg.matrix_rank`` / ``torch.linalg.matrix_rank``: singular values
    below it are indistinguishable from round-off of a matrix stored in that dtype. The SVD itself
    runs in float64. ``center=True`` gives the rank of the feature covariance (Fan et al. 2024's
    code). A zero matrix has rank 0.
    """
    f = _check_features(features)
    tol = rank_tolerance(*f.shape, f.dtype, rtol)
    s = singular_values(f, center=center)
    smax = float(s[0]) if s.numel() else 0.0
    if smax == 0.0:
        return 0
    return int((s > tol * smax).sum())


def effective_rank(features: Tensor, center: bool = False) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j``.

    ``H`` is the Shannon entropy (natural log, ``0·log 0 = 0``) of the singular values normalised
    to sum to one. It lies in ``[1, min(n, d)]`` (0 for a zero matrix), equals ``k`` for ``k``
    equal non-zero singular values and varies smoothly when singular values decay.
    """
    s = singular_values(features, center=center)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _per_sample(t: Tensor, position: int | None) -> Tensor:
    """Activations as ``[n, d]``: sequences ``[n, T, d]`` at ``position``, or flattened over
    positions with ``position=None``."""
    t = t.detach()
    if t.ndim == 2:
        return t
    if t.ndim == 3 and position is not None:
        return t[:, position]
    return t.reshape(t.shape[0], -1)


def layer_features(
    model: nn.Module,
    x: Tensor,
    residual: bool = True,
    position: int | None = -1,
) -> dict[str, Tensor]:
    """Representations of ``x`` at every layer: ``{name: Tensor[n, d]}``.

    * ``pre:<module>`` — the pre-activation features: the input of every activation module (for
      grokinterp models, ``blocks.{i}.mlp.act``, i.e. ``x @ W_in + b_in``), Fan et al. 2024's
      features.
    * ``resid:blocks.{i}`` — with ``residual=True`` and models that have
      ``blocks.{i}.hook_resid_post`` (transformers; for grokinterp MLPs it is the block output),
      the residual stream after each block.

    Sequence activations ``[n, T, d]`` are reduced to ``[n, d]`` at ``position`` (default the last
    token, where grokinterp transformers read the answer) or, with ``position=None``, flattened
    over positions to ``[n, T·d]``. Runs in eval mode without gradients.
    """
    out: dict[str, Tensor] = {}

    def keep(name: str, pre: Tensor) -> None:
        out[f"pre:{name}"] = _per_sample(pre, position)

    handles = []
    if residual:
        for name, mod in model.named_modules():
            if name.startswith("blocks.") and name.endswith(".hook_resid_post"):
                block = name[: -len(".hook_resid_post")]

                def grab(mod: nn.Module, args: tuple, o: Tensor, block: str = block) -> None:
                    out[f"resid:{block}"] = _per_sample(o, position)

                handles.append(mod.register_forward_hook(grab))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), preactivation_hooks(model, keep):
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


def layer_ranks(
    model: nn.Module,
    x: Tensor,
    rtol: float | None = None,
    center: bool = True,
    residual: bool = True,
    position: int | None = -1,
) -> dict[str, tuple[int, float]]:
    """``{layer name: (numerical rank, effective rank)}`` of :func:`layer_features` on ``x``.

    Fan, Pascanu, Jaggi 2024: per-layer rank of the (centred, by default) pre-activation features
    on a fixed sample set.
    """
    feats = layer_features(model, x, residual=residual, position=position)
    return {
        k: (feature_rank(f, rtol=rtol, center=center), effective_rank(f, center=center))
        for k, f in feats.items()
    }


def _features_and_inputs(
    model: nn.Module, x: Tensor, residual: bool, position: int | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:func:`layer_features` and, for every activation module inside a block with ``W_in`` (a
    grokinterp MLP block, whose pre-activation is ``x_in @ W_in + b_in``), that block's input
    ``x_in`` reduced like the features: ``({layer: features}, {"pre:<module>": x_in})``. Works
    under ``vmap`` (hooks only)."""
    inputs: dict[str, Tensor] = {}
    handles = []

    for name, _ in activation_modules(model):
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else None
        if parent is None or not hasattr(parent, "W_in"):
            continue  # not a grokinterp MLP block: its input is not a single linear map's

        def grab(mod: nn.Module, args: tuple, name: str = name) -> None:
            inputs.setdefault(
                f"pre:{name}", _per_sample(args[0], position)
            )  # first call only (shared: #k)

        handles.append(parent.register_forward_pre_hook(grab))
    try:
        feats = layer_features(model, x, residual=residual, position=position)
    finally:
        for h in handles:
            h.remove()
    return feats, inputs


def _cap_source(
    width: int, n_eff: int, input_rank: int | None, center: bool, fixed: bool
) -> tuple[int, str]:
    """``(cap, source)``: the smallest of the width, the samples and the input's rank bound."""
    cap, source = min(width, n_eff), ("samples" if n_eff < width else "width")
    if input_rank is not None:
        bound = input_rank if center else input_rank + 1  # uncentred, the bias adds a direction
        if bound < cap:
            cap, source = bound, ("input data" if fixed else "layer input")
    return cap, source


def rank_caps(
    model: nn.Module,
    x: Tensor,
    rtol: float | None = None,
    center: bool = True,
    residual: bool = True,
    position: int | None = -1,
) -> dict[str, dict[str, Any]]:
    """The most each layer's numerical rank can be on ``x``, and why: ``{layer: info}``.

    A pre-activation ``x_in @ W_in + b_in`` has rank at most that of its input ``x_in`` (centred:
    the bias drops out; uncentred: one more), at most its width, and at most the number of
    samples (minus one, centred). ``info``: ``width``, ``input_dim`` and ``input_rank`` (of the
    input of the block holding the activation, i.e. the module with ``W_in``; None where there is
    no such block), ``cap`` (the smallest bound), ``source`` (``"input data"`` when the input is
    the data itself, ``"layer input"`` when it is another layer's output, ``"samples"``,
    ``"width"``) and ``fixed_input``. A layer whose cap comes from the data (e.g. the first layer
    of an MLP on 8×8 digits: input rank ≤ 64 < width 200) keeps exactly that rank as long as
    ``W_in`` has full rank on the data's span: its rank *cannot drop* with generalisation (Fan et
    al. 2024's drop can only show in later layers). Same features and tolerance as
    :func:`layer_ranks`.
    """
    feats, inputs = _features_and_inputs(model, x, residual, position)
    n_eff = x.shape[0] - (1 if center else 0)
    out: dict[str, dict[str, Any]] = {}
    for layer, f in feats.items():
        inp = inputs.get(layer)
        fixed = inp is not None and inp.shape == x.shape and torch.equal(inp, x.to(inp.dtype))
        r_in = None if inp is None else feature_rank(inp, rtol=rtol, center=center)
        cap, source = _cap_source(int(f.shape[1]), n_eff, r_in, center, fixed)
        out[layer] = {
            "width": int(f.shape[1]),
            "input_dim": None if inp is None else int(inp.shape[1]),
            "input_rank": r_in,
            "cap": cap,
            "source": source,
            "fixed_input": fixed,
        }
    return out


# ---------------------------------------------------------------------------------------------
# The ``rank`` analysis
# ---------------------------------------------------------------------------------------------


def rank_applies(run: Any) -> str | None:
    """None if ``rank`` applies: a checkpoint, and hidden layers (every grokinterp model has an
    activation module per hidden layer; a model without any fails with a clear error when
    analysed). Decided from the config: instant."""
    if not run.steps:
        return "the run has no checkpoint"
    if run.config.model.n_layers < 1:
        return "the model has no hidden layer, hence no activation module"
    return None


def _summary_caps(
    run: Any, results: Mapping[str, Tensor], layers: list[str]
) -> dict[str, dict[str, Any]]:
    """Per layer: ``width``, ``cap`` and ``source`` at the last checkpoint, and the fraction of
    checkpoints whose numerical rank is at that checkpoint's cap; from the analysis's ``cap/`` and
    ``input_rank/`` rows and its cache key (widths, which layers read the data). {} for a cache
    written before caps were recorded (recompute it with ``--force``)."""
    try:
        info = cache_info(run, "rank") or {}
    except (AttributeError, TypeError):  # not a run on disk (a report's planted data)
        return {}
    static = (info.get("key") or {}).get("layers") or {}
    center = (info.get("params") or {}).get("center", True)
    n_points = (info.get("key") or {}).get("n_points")
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        cap = results.get(f"cap/{layer}")
        if cap is None or layer not in static or n_points is None:
            continue
        width, fixed = int(static[layer]["width"]), bool(static[layer]["fixed_input"])
        r_in = results.get(f"input_rank/{layer}")
        n_eff = int(n_points) - (1 if center else 0)
        c, source = _cap_source(
            width, n_eff, None if r_in is None else int(r_in[-1]), center, fixed
        )
        num = results.get(f"numerical/{layer}")
        at_cap = None if num is None else float((num.long() >= cap.long()).double().mean())
        out[layer] = {"width": width, "cap": c, "source": source, "at_cap": at_cap}
    return out


# A layer "cannot drop" when its cap comes from the fixed data and its numerical rank sits at
# the cap at (almost) every checkpoint: 90 %, so that the initialisation or one odd checkpoint
# does not hide it.
AT_CAP = 0.9


def rank_summary(
    run: Any, results: Mapping[str, Tensor], metrics: list[dict] | None = None
) -> dict[str, Any]:
    """Headline numbers of the feature rank (Fan et al. 2024), per layer (``layers``, in key
    order) unless said otherwise.

    * Around generalisation: ``generalize_step`` (test accuracy ≥ the grokking threshold),
      ``generalization_onset_step`` (where its rise starts) and ``generalization_window``
      ``[lo, hi]`` (:func:`~grokinterp.analysis.curves.generalization_window`: the onset / 2 to
      generalize_step × 2); ``drop_step_near_generalization``, the step at which the effective
      rank has fallen half-way from its maximum *inside that window* to the minimum after it
      (None without a fall of ≥ 5 %), and ``drop_fraction_near_generalization``, that fall's
      relative size. This is Fan et al.'s "rank drop with generalisation"; a fall during
      memorisation (the first hundred steps) lies outside the window.
    * ``rank_drop_step``: the same half-way step over the whole run (the largest fall anywhere,
      often the memorisation transient); ``effective_rank_start`` / ``_max`` / ``_final``.
    * Caps (:func:`rank_caps` on the last checkpoint): ``layer_width``, ``rank_cap``,
      ``cap_source``, ``capped`` (cap < width), ``at_cap_fraction`` (checkpoints whose numerical
      rank is at the cap) and ``cannot_drop``: the layers whose rank is pinned at the rank of
      the input data (source "input data", at the cap at ≥ 90 % of checkpoints).
    * ``test_acc_transition_step``: where test accuracy is half-way through its jump.

    ``metrics``: the run's metric rows (default ``run.metrics``).
    """
    metrics = run.metrics if metrics is None else metrics
    layers = sorted(k.split("/", 1)[1] for k in results if k.startswith("effective/"))
    steps = [int(s) for s in results["steps"]] if "steps" in results else list(run.steps)
    curves = [results[f"effective/{name}"].double() for name in layers]
    window = generalization_window(metrics)
    near = [
        largest_drop(steps, v, window["lo"], window["hi"]) if window else (None, 0.0)
        for v in curves
    ]
    caps = _summary_caps(run, results, layers)

    def cap(layer: str, key: str) -> Any:
        return caps[layer][key] if layer in caps else None

    at_cap = [cap(layer, "at_cap") for layer in layers]
    return {
        "test_acc_transition_step": transition_step(metrics, "test_acc", 0.5),
        "generalize_step": window["generalize_step"] if window else None,
        "generalization_onset_step": window["onset_step"] if window else None,
        "generalization_window": [window["lo"], window["hi"]] if window else None,
        "layers": layers,
        "effective_rank_start": [float(v[0]) for v in curves],
        "effective_rank_max": [float(v.max()) for v in curves],
        "effective_rank_final": [float(v[-1]) for v in curves],
        "drop_step_near_generalization": [d for d, _ in near],
        "drop_fraction_near_generalization": [f for _, f in near],
        "rank_drop_step": [drop_step(steps, v) for v in curves],
        "layer_width": [cap(layer, "width") for layer in layers],
        "rank_cap": [cap(layer, "cap") for layer in layers],
        "cap_source": [cap(layer, "source") for layer in layers],
        "capped": [
            None if layer not in caps else caps[layer]["cap"] < caps[layer]["width"]
            for layer in layers
        ],
        "at_cap_fraction": at_cap,
        "cannot_drop": [
            layer
            for layer, f in zip(layers, at_cap, strict=True)
            if cap(layer, "source") == "input data" and f is not None and f >= AT_CAP
        ],
    }


@register_analysis("rank", applies=rank_applies, summarize=rank_summary)
def make_rank(
    run: Any,
    split: str = "test",
    n_samples: int | None = 2000,
    rtol: float | None = None,
    center: bool = True,
    residual: bool = True,
    position: int | None = -1,
    seed: int = 0,
) -> Measure:
    """Feature rank per layer (Fan et al. 2024): numerical and effective rank of each layer's features.

    Features: the pre-activations of every activation module and (``residual``) each block's
    ``hook_resid_post``, on a fixed seeded sample of ``split`` (Fan et al.: 10 000 test images;
    2000 points here resolve ranks up to the widest grokinterp layer, d_mlp = 512, at a fraction
    of the cost); centred by default (their code takes the rank of the covariance). Keys
    ``numerical/<layer>`` (int, :func:`feature_rank` with tolerance ``rtol``) and
    ``effective/<layer>`` (:func:`effective_rank`, Roy & Vetterli 2007), where ``<layer>`` is
    ``pre:<activation module>`` or ``resid:blocks.{i}``.
    """
    x, _ = sample_split(run.task(), split, n_samples, seed)
    # What does not change over training: each layer's width, and whether it reads the data
    # itself (its rank cap is then the data's rank). From the last checkpoint, once.
    last = run.model(run.steps[-1])
    static = {
        k: {"width": v["width"], "fixed_input": v["fixed_input"]}
        for k, v in rank_caps(last, model_inputs(x, last), rtol, center, residual, position).items()
    }
    n_eff = len(x) - (1 if center else 0)
    shift = 0 if center else 1  # uncentred, the bias adds a direction

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        feats, inputs = _features_and_inputs(model, model_inputs(x, model), residual, position)
        out = {}
        for name, f in feats.items():
            out[f"numerical/{name}"] = torch.tensor(feature_rank(f, rtol=rtol, center=center))
            out[f"effective/{name}"] = torch.tensor(effective_rank(f, center=center))
            cap = min(int(f.shape[1]), n_eff)
            if name in inputs:
                r_in = feature_rank(inputs[name], rtol=rtol, center=center)
                out[f"input_rank/{name}"] = torch.tensor(r_in)
                cap = min(cap, r_in + shift)
            out[f"cap/{name}"] = torch.tensor(cap)
        return out

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        with last_position_only(batch.model, position == -1):
            feats, inputs = batch.apply(
                lambda model, xs: _features_and_inputs(model, xs, residual, position),
                model_inputs(x, batch.model),
            )
        out = {}
        for name, f in feats.items():  # f: [C, n, d]
            # a grokinterp MLP block's pre-activations: the spectrum from its d_in-wide input
            w = input_weight(name, f, inputs.get(name), batch.params) if center else None
            if w is not None:
                numerical, effective = batched_linear_ranks(f, inputs[name], w, rtol=rtol)
            else:
                numerical, effective = batched_ranks(f, rtol=rtol, center=center)
            out[f"numerical/{name}"] = numerical
            out[f"effective/{name}"] = effective.float()  # the reference's dtype
            cap = torch.full_like(numerical, min(int(f.shape[-1]), n_eff))
            if name in inputs:
                r_in = batched_ranks(inputs[name], rtol=rtol, center=center)[0]
                out[f"input_rank/{name}"] = r_in
                cap = torch.minimum(cap, r_in + shift)
            out[f"cap/{name}"] = cap
        return out

    # "layers" in the key: caches from before the caps were recorded are recomputed, not merged
    return Measure(at_step=at_step, at_steps=at_steps, key={"n_points": len(x), "layers": static})
