"""Training-dynamics measures over a run's checkpoints: ``rank``, ``complexity``, ``norms``,
``robustness`` (registered with :func:`grokinterp.analysis.over_training`), plus helpers that
locate where each measure turns.

==============  ===================================================  ==============================
analysis        paper                                                applies to
==============  ===================================================  ==============================
``rank``        Fan, Pascanu, Jaggi 2024, "Deep Grokking"             every model (activation modules)
``complexity``  Humayun, Balestriero, Baraniuk 2024, "Deep Networks   every model; token models in
                Always Grok and Here is Why"                          embedding space
``norms``       Merrill, Tsilivis, Shukla 2023, "A Tale of Two        every model with MLP layers
                Circuits"
``robustness``  Humayun et al. 2024 (delayed robustness)              vector-input tasks only
==============  ===================================================  ==============================

Every analysis fixes its inputs (a seeded sample of the split) once, in the factory, so that all
checkpoints are measured on the same points. Output keys are ``<quantity>/<layer>`` for per-layer
scalars so that each key keeps one shape across checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.complexity import (
    activation_modules,
    dead_neurons,
    local_complexity_per_layer,
)
from grokinterp.analysis.norms import (
    mlp_layers,
    neuron_masks,
    neuron_norms,
    smallest_reproducing_topk,
    subnetwork_norms,
)
from grokinterp.analysis.rank import effective_rank, feature_rank, layer_features
from grokinterp.analysis.registry import register_analysis
from grokinterp.analysis.robustness import pgd_accuracy
from grokinterp.config import GrokinterpError
from grokinterp.store import load_tensors

__all__ = [
    "complexity_applies",
    "complexity_phases",
    "domain_points",
    "drop_step",
    "make_complexity",
    "make_norms",
    "make_rank",
    "make_robustness",
    "norms_applies",
    "rank_applies",
    "robustness_applies",
    "sample_split",
    "summarize",
    "transition_step",
]

StepFn = Callable[[int, dict[str, Tensor], nn.Module], dict[str, Tensor]]
SETS = ("train", "test", "random")


# ----------------------------------------------------------------------------- inputs


def sample_split(
    task: Any, split: str, n_samples: int | None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a seeded random subset of ``n_samples`` points of ``split``.

    ``split`` is ``"train"``, ``"test"`` or ``"both"`` (train then test); ``n_samples=None`` keeps
    all points.
    """
    if split not in ("train", "test", "both"):
        raise GrokinterpError(f"split must be 'train', 'test' or 'both', got {split!r}")
    if split == "both":
        x = torch.cat([task.x_train, task.x_test])
        y = torch.cat([task.y_train, task.y_test])
    else:
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    if n_samples is not None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise GrokinterpError(f"n_samples must be an integer ≥ 1 or None, got {n_samples!r}")
        if n_samples < len(y):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_samples]
            idx = idx.sort().values
            x, y = x[idx], y[idx]
    return x, y


def domain_points(task: Any, n: int, seed: int = 0) -> Tensor:
    """``n`` random points of the input domain (Humayun et al. 2024's "random" samples).

    Vector tasks: uniform in the per-feature box ``[min, max]`` of the training inputs (a feature
    constant on the training set, e.g. a blank border pixel, stays constant). Token tasks: each
    position drawn uniformly from the tokens seen at that position in the training set — for a
    complete modular grid these are valid inputs, half train-like and half test-like.
    """
    g = torch.Generator().manual_seed(seed)
    x = task.x_train
    if x.is_floating_point():
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        return lo + (hi - lo) * torch.rand((n, *x.shape[1:]), generator=g, dtype=x.dtype)
    cols = []
    for j in range(x.shape[1]):
        vals = torch.unique(x[:, j])
        cols.append(vals[torch.randint(len(vals), (n,), generator=g)])
    return torch.stack(cols, dim=1)


def _model_inputs(x: Tensor, model: nn.Module) -> Tensor:
    if x.is_floating_point():
        p = next(model.parameters())
        return x.to(dtype=p.dtype, device=p.device)
    return x.to(next(model.parameters()).device)


# ----------------------------------------------------------------------------- rank


def rank_applies(run: Any) -> str | None:
    """None if ``rank`` applies (the model has activation modules), else the reason."""
    try:
        activation_modules(run.model(run.steps[0]))
    except GrokinterpError as e:
        return str(e)
    except IndexError:
        return "the run has no checkpoint"
    return None


@register_analysis("rank", applies=rank_applies)
def make_rank(
    run: Any,
    split: str = "test",
    n_samples: int | None = 2000,
    rtol: float | None = None,
    center: bool = True,
    residual: bool = True,
    position: int | None = -1,
    seed: int = 0,
) -> StepFn:
    """Feature rank per layer (Fan et al. 2024): numerical and effective rank of each layer's features.

    Features: the pre-activations of every activation module and (``residual``) each block's
    ``hook_resid_post``, on a fixed seeded sample of ``split`` (Fan et al.: 10 000 test images);
    centred by default (their code takes the rank of the covariance). Keys
    ``numerical/<layer>`` (int, :func:`feature_rank` with tolerance ``rtol``) and
    ``effective/<layer>`` (:func:`effective_rank`, Roy & Vetterli 2007), where ``<layer>`` is
    ``pre:<activation module>`` or ``resid:blocks.{i}``.
    """
    x, _ = sample_split(run.task(), split, n_samples, seed)

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        feats = layer_features(model, _model_inputs(x, model), residual=residual, position=position)
        out = {}
        for name, f in feats.items():
            out[f"numerical/{name}"] = torch.tensor(feature_rank(f, rtol=rtol, center=center))
            out[f"effective/{name}"] = torch.tensor(effective_rank(f, center=center))
        return out

    return at_step


# ----------------------------------------------------------------------------- complexity


def complexity_applies(run: Any) -> str | None:
    """None if ``complexity`` applies: activation modules, and ``hook_embed`` for token inputs."""
    reason = rank_applies(run)
    if reason:
        return reason
    if run.task().input_kind == "tokens":
        names = {n for n, _ in run.model(run.steps[0]).named_modules()}
        if "hook_embed" not in names:
            return "token model without a hook_embed hook point (the neighbourhood lives there)"
    return None


def _step0_embedding(run: Any, x: Tensor) -> Tensor:
    """Output of ``hook_embed`` at step 0 for tokens ``x``, flattened to ``[n, T·d]``."""
    model = run.model(run.steps[0])
    captured = {}
    hook = dict(model.named_modules())["hook_embed"].register_forward_hook(
        lambda m, a, o: captured.__setitem__("e", o.detach())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return captured["e"].reshape(len(x), -1)


def _neighbourhood_dim(run: Any, task: Any) -> int:
    if task.input_kind == "vector":
        return int(task.x_train[0].numel())
    return int(_step0_embedding(run, task.x_train[:1]).shape[1])


def _default_radius(run: Any, x: Tensor, rel: float) -> float:
    """``rel`` × the median L2 norm of the (step-0 embedded, for tokens) training points."""
    flat = x.reshape(len(x), -1) if x.is_floating_point() else _step0_embedding(run, x)
    return float(rel * flat.norm(dim=1).median())


@register_analysis("complexity", applies=complexity_applies)
def make_complexity(
    run: Any,
    radius: float | None = None,
    relative_radius: float = 0.05,
    n_directions: int | None = 25,
    n_samples: int | None = 1000,
    sets: Sequence[str] = SETS,
    seed: int = 0,
    chunk_size: int | None = None,
) -> StepFn:
    """Local complexity (Humayun et al. 2024) on train, test and random domain points.

    At every checkpoint, :func:`~grokinterp.analysis.complexity.local_complexity_per_layer` with a
    cross-polytope of ``n_directions`` (paper: 25; capped at the input dimension) random
    orthonormal directions and ``radius`` (default: ``relative_radius`` × the median norm of the
    training inputs — for token models of their step-0 embeddings, since the neighbourhood then
    lives in embedding space), on fixed seeded samples of ``n_samples`` points per set. Keys, per
    set ``s`` in ``sets``: ``s/mean`` (average over samples of the sum over layers), ``s/per_layer``
    ``[n_layers]`` (layer order of the activation modules), ``s/per_sample`` ``[n]``,
    ``s/dead_per_layer`` ``[n_layers]`` (neurons inactive on every point of the set: dead ReLUs
    draw no boundary, so a collapse of LC everywhere — random points included — that comes with
    them is neuron death, not region migration); and ``radius``.
    """
    task = run.task()
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise GrokinterpError(f"sets must be a non-empty subset of {SETS}, got {list(sets)!r}")
    inputs = {}
    for s in sets:
        if s == "random":
            n = n_samples if n_samples is not None else len(task.y_test)
            inputs[s] = domain_points(task, n, seed + 1)
        else:
            inputs[s] = sample_split(task, s, n_samples, seed)[0]
    r = radius if radius is not None else _default_radius(run, task.x_train, relative_radius)
    if n_directions is not None:
        # P is capped at the dimension of the neighbourhood: the input, or for token models the
        # concatenated embedding (known only from the model).
        n_directions = min(n_directions, _neighbourhood_dim(run, task))

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        out = {"radius": torch.tensor(float(r))}
        for s, x in inputs.items():
            per = local_complexity_per_layer(
                model, _model_inputs(x, model), r, n_directions, seed, chunk_size=chunk_size
            )
            stacked = torch.stack(list(per.values()), dim=1).to(torch.float64)  # [n, L]
            out[f"{s}/mean"] = stacked.sum(dim=1).mean()
            out[f"{s}/per_layer"] = stacked.mean(dim=0)
            out[f"{s}/per_sample"] = stacked.sum(dim=1).to(torch.int32)
            dead = dead_neurons(model, _model_inputs(x, model))
            out[f"{s}/dead_per_layer"] = torch.stack(list(dead.values()))
        return out

    return at_step


# ----------------------------------------------------------------------------- norms


def norms_applies(run: Any) -> str | None:
    """None if ``norms`` applies (the model has ``blocks.{i}.mlp.W_in`` MLP layers)."""
    if not run.steps:
        return "the run has no checkpoint"
    if not mlp_layers(run.load_state(run.steps[0])):
        return "the model has no MLP layer (blocks.{i}.mlp.W_in)"
    return None


@register_analysis("norms", applies=norms_applies)
def make_norms(
    run: Any,
    layers: Sequence[int] | None = None,
    include_bias: bool = True,
    tol: float = 0.0,
    search: str = "binary",
    n_samples: int | None = None,
    mask: str | None = None,
    seed: int = 0,
) -> StepFn:
    """Sparse/dense subnetwork norms (Merrill et al. 2023) of every MLP layer.

    Per MLP layer ``i`` (all, or ``layers``): ``in_norm/i``, ``out_norm/i`` ``[d_mlp]`` per-neuron
    L2 norms of incoming (with ``b_in`` when ``include_bias``) and outgoing weights; ``k/i``, the
    smallest top-k by incoming norm whose subnetwork (other neurons of layer i ablated) reaches the
    full model's train accuracy − ``tol`` (:func:`smallest_reproducing_topk`, ``search``), with
    ``topk_acc/i``; ``sparse_l2/i``, ``dense_l2/i`` (and ``_l1``): norms of the parameters of those
    k neurons (W_in column, b_in, outgoing row) vs. the other neurons; ``final_*`` the same for the
    fixed sparse set of the **last** checkpoint (so one set is followed through training).
    ``train_acc``: full-model accuracy on the (``n_samples``) training points. With ``mask`` (a
    safetensors file of bool masks, e.g. a grokking ticket), ``mask/sparse_l2`` etc.: norms of the
    masked vs unmasked weights (:func:`subnetwork_norms`).
    """
    task = run.task()
    x, y = sample_split(task, "train", n_samples, seed)
    state0 = run.load_state(run.steps[-1])
    all_layers = mlp_layers(state0)
    chosen = list(all_layers if layers is None else layers)
    bad = [i for i in chosen if i not in all_layers]
    if bad or not chosen:
        raise GrokinterpError(
            f"layers must be a non-empty subset of the MLP layers {all_layers}, got {chosen}"
        )
    mask_tensors = None
    if mask is not None:
        mask_tensors = {k: v.bool() for k, v in load_tensors(mask).items()}
        unknown = sorted(set(mask_tensors) - set(state0))
        if unknown:
            raise GrokinterpError(
                f"mask names parameters the model does not have: {', '.join(unknown)}"
            )

    # The sparse set of the final model, followed through training.
    final_model = run.model(run.steps[-1])
    final_norms = neuron_norms(state0, include_bias=include_bias)
    final_keep = {}
    for i in chosen:
        final_keep[i] = smallest_reproducing_topk(
            final_model,
            _model_inputs(x, final_model),
            y,
            layer=i,
            scores=final_norms[i]["in"],
            tol=tol,
            search=search,
        )["keep"]

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        xs = _model_inputs(x, model)
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
                for key in ("sparse_l2", "dense_l2", "sparse_l1", "dense_l1"):
                    out[f"{prefix}{key}/{i}"] = torch.tensor(sub[key])
            out[f"final_k/{i}"] = torch.tensor(int(final_keep[i].sum()))
        if mask_tensors is not None:
            sub = subnetwork_norms(state, mask_tensors)
            for key, v in sub.items():
                out[f"mask/{key}"] = torch.tensor(v)
        return out

    return at_step


# ----------------------------------------------------------------------------- robustness


def robustness_applies(run: Any) -> str | None:
    """None for vector-input tasks (digits, parity, xor); PGD needs continuous inputs."""
    if run.task().input_kind != "vector":
        return f"PGD robustness needs vector inputs (digits, sparse_parity, xor_cluster); {run.config.task.name!r} has tokens"
    return None


@register_analysis("robustness", applies=robustness_applies)
def make_robustness(
    run: Any,
    eps: Sequence[float] = (0.01, 0.03, 0.1),
    steps: int = 10,
    step_size: float | None = None,
    split: str = "test",
    n_samples: int | None = 500,
    clamp: bool = True,
    seed: int = 0,
) -> StepFn:
    """Accuracy under an L∞ PGD attack (Humayun et al. 2024's delayed robustness).

    For each ε in ``eps`` (paper: up to 0.2, 10 steps), :func:`pgd_accuracy` with ``steps`` steps
    of size ``step_size`` (default 2.5·ε/steps) on a fixed seeded sample of ``split``; ``clamp``
    keeps adversarial points in ``[min, max]`` of the training inputs. Keys ``accuracy`` ``[len(eps)]``,
    ``clean_accuracy``, ``eps``.
    """
    task = run.task()
    eps = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    if not eps or any(not (e >= 0 and math.isfinite(e)) for e in eps):
        raise GrokinterpError(f"eps must be a non-empty list of finite numbers ≥ 0, got {eps!r}")
    x, y = sample_split(task, split, n_samples, seed)
    box = (float(task.x_train.min()), float(task.x_train.max())) if clamp else None

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        xs = _model_inputs(x, model)
        accs = [pgd_accuracy(model, xs, y, e, step_size, steps, clamp=box, seed=seed) for e in eps]
        with torch.no_grad():
            clean = float((model(xs).argmax(-1) == y).double().mean())
        return {
            "accuracy": torch.tensor(accs),
            "clean_accuracy": torch.tensor(clean),
            "eps": torch.tensor(eps),
        }

    return at_step


# ----------------------------------------------------------------------------- turning points


def _np(v: Any) -> list[float]:
    if isinstance(v, Tensor):
        return [float(a) for a in v.detach().cpu().flatten()]
    return [float(a) for a in v]


def _smooth(v: list[float], window: int) -> list[float]:
    if window <= 1:
        return v
    h = window // 2
    return [
        sum(v[max(0, i - h) : i + h + 1]) / len(v[max(0, i - h) : i + h + 1]) for i in range(len(v))
    ]


def transition_step(
    metrics: Sequence[Mapping[str, Any]], key: str = "test_acc", fraction: float = 0.5
) -> int | None:
    """First evaluated step where ``key`` has covered ``fraction`` of its rise from its value at
    step 0 to its final value (``fraction=0.5``: the midpoint of the test-accuracy jump)."""
    rows = [m for m in metrics if m.get(key) is not None]
    if not rows:
        return None
    v0, v1 = rows[0][key], rows[-1][key]
    target = v0 + fraction * (v1 - v0)
    for m in rows:
        if (m[key] >= target) if v1 >= v0 else (m[key] <= target):
            return int(m["step"])
    return None


def drop_step(steps: Any, values: Any, fraction: float = 0.5, min_drop: float = 0.05) -> int | None:
    """Step at which ``values`` has fallen ``fraction`` of the way from its maximum to the minimum
    that follows it; None if that fall is smaller than ``min_drop`` × the maximum (no real drop).
    Used for the feature-rank drop (Fan et al. 2024)."""
    s, v = _np(steps), _np(values)
    if not v:
        return None
    i_max = max(range(len(v)), key=lambda i: v[i])
    tail = v[i_max:]
    v_min = min(tail)
    if v[i_max] - v_min <= min_drop * abs(v[i_max]):
        return None
    target = v[i_max] - fraction * (v[i_max] - v_min)
    for i in range(i_max, len(v)):
        if v[i] <= target:
            return int(s[i])
    return None


def complexity_phases(
    steps: Any, values: Any, smooth: int = 3, min_change: float = 0.05
) -> dict[str, Any]:
    """Descent → ascent → second descent of a local-complexity curve (Humayun et al. 2024).

    On the curve smoothed by a moving average of ``smooth`` checkpoints: ``peak`` is the index
    maximising the rise ``v[i] − min(v[:i+1])`` (end of the ascent), ``first_min`` the minimum
    before it (end of the first descent), ``second_min`` the minimum after it (end of the second
    descent so far). A phase is ``present`` when its change exceeds ``min_change`` × max |v|.
    Returns the steps and values of these points and the three presence flags.
    """
    s, raw = _np(steps), _np(values)
    if len(raw) < 2:
        raise GrokinterpError("complexity_phases needs at least two checkpoints")
    v = _smooth(raw, smooth)
    running_min, argmins = [], []
    for i, a in enumerate(v):
        if not running_min or a < running_min[-1]:
            running_min.append(a)
            argmins.append(i)
        else:
            running_min.append(running_min[-1])
            argmins.append(argmins[-1])
    peak = max(range(len(v)), key=lambda i: v[i] - running_min[i])
    first_min = argmins[peak]
    second_min = min(range(peak, len(v)), key=lambda i: v[i])
    scale = max(abs(a) for a in v) or 1.0
    return {
        "start_step": int(s[0]),
        "start_value": v[0],
        "first_min_step": int(s[first_min]),
        "first_min_value": v[first_min],
        "peak_step": int(s[peak]),
        "peak_value": v[peak],
        "second_min_step": int(s[second_min]),
        "second_min_value": v[second_min],
        "descent": v[0] - v[first_min] > min_change * scale,
        "ascent": v[peak] - v[first_min] > min_change * scale,
        "second_descent": v[peak] - v[second_min] > min_change * scale,
    }


def summarize(name: str, run: Any, results: Mapping[str, Tensor]) -> str:
    """A few text lines on where ``name``'s measure turns, for ``grokinterp analyze``.

    ``results`` holds that analysis's keys without the ``"<name>/"`` prefix, over all of the
    run's checkpoints (``run.steps``).
    """
    steps = torch.tensor(run.steps)
    t_half = transition_step(run.metrics, "test_acc", 0.5)
    head = f"[bold]{name}[/] (test accuracy half-way through its jump at step {t_half})"
    lines = [head]
    if name == "rank":
        for key in sorted(k for k in results if k.startswith("effective/")):
            v = results[key].float()
            lines.append(
                f"  {key.split('/', 1)[1]}: effective rank {float(v[0]):.1f} → max {float(v.max()):.1f}"
                f" → {float(v[-1]):.1f}; half-way drop at step {drop_step(steps, v)}"
            )
    elif name == "complexity":
        for s in SETS:
            if f"{s}/mean" not in results:
                continue
            ph = complexity_phases(steps, results[f"{s}/mean"])
            lines.append(
                f"  LC {s}: {ph['start_value']:.1f} → {ph['first_min_value']:.1f} @ {ph['first_min_step']}"
                f" → peak {ph['peak_value']:.1f} @ {ph['peak_step']} → {ph['second_min_value']:.1f}"
                f" @ {ph['second_min_step']} (descent {ph['descent']}, ascent {ph['ascent']},"
                f" second descent {ph['second_descent']})"
            )
    elif name == "norms":
        for key in sorted(k for k in results if k.startswith("final_k/")):
            i = key.split("/", 1)[1]
            sp, dn = results[f"final_sparse_l2/{i}"], results[f"final_dense_l2/{i}"]
            lines.append(
                f"  layer {i}: smallest reproducing top-k {int(results[f'k/{i}'][-1])} at the end;"
                f" that set's L2 norm {float(sp[0]):.2f} vs rest {float(dn[0]):.2f} at step 0"
                f" → {float(sp[-1]):.2f} vs {float(dn[-1]):.2f} at the end"
            )
    elif name == "robustness":
        acc, eps = results["accuracy"], results["eps"][0]
        for j, e in enumerate(eps.tolist()):
            rows = [{"step": int(s), "a": float(a)} for s, a in zip(steps, acc[:, j], strict=True)]
            lines.append(
                f"  PGD ε={e:g}: accuracy {float(acc[0, j]):.2f} → {float(acc[-1, j]):.2f},"
                f" half-way at step {transition_step(rows, 'a')}"
            )
    return "\n".join(lines)
