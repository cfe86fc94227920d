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
checkpoint. Over many checkpoints, :func:`batched_ranks` computes the ranks of ``C`` feature
matrices at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch, last_position_only
from grokinterp.analysis.complexity import preactivation_hooks
from grokinterp.analysis.curves import drop_step, transition_step
from grokinterp.analysis.inputs import model_inputs, sample_split
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "batched_ranks",
    "effective_rank",
    "feature_rank",
    "layer_features",
    "layer_ranks",
    "make_rank",
    "rank_applies",
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


def _tolerance(n: int, d: int, dtype: torch.dtype, rtol: float | None) -> float:
    """The relative tolerance of :func:`feature_rank` and :func:`batched_ranks`."""
    if rtol is not None and not (isinstance(rtol, (int, float)) and 0 <= rtol < float("inf")):
        raise GrokinterpError(f"rtol must be a finite number ≥ 0 or None, got {rtol!r}")
    return max(n, d) * torch.finfo(dtype).eps if rtol is None else float(rtol)


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
    tol = _tolerance(*f.shape, f.dtype, rtol)
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

    def reduce(t: Tensor) -> Tensor:
        t = t.detach()
        if t.ndim == 2:
            return t
        if t.ndim == 3 and position is not None:
            return t[:, position]
        return t.reshape(t.shape[0], -1)

    def keep(name: str, pre: Tensor) -> None:
        out[f"pre:{name}"] = reduce(pre)

    handles = []
    if residual:
        for name, mod in model.named_modules():
            if name.startswith("blocks.") and name.endswith(".hook_resid_post"):
                block = name[: -len(".hook_resid_post")]

                def grab(mod: nn.Module, args: tuple, o: Tensor, block: str = block) -> None:
                    out[f"resid:{block}"] = reduce(o)

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


# ---------------------------------------------------------------------------------------------
# Many feature matrices at once
# ---------------------------------------------------------------------------------------------

# The Gram route (eigenvalues of the d×d covariance FᵀF instead of singular values of F) squares
# the spectrum: in float64 its eigenvalues carry an absolute error of order size·eps64·λ_max, so
# singular values below about √(size·eps64)·σ_max are noise there. It is taken only when the rank
# tolerance is this factor above that noise — always for float32 features with the default
# tolerance, whose threshold max(n, d)·eps32·σ_max is far higher; otherwise (float64 features,
# rtol=0, small matrices) the singular values come from the SVD, as in feature_rank.
_GRAM_MARGIN = 1e4


def batched_ranks(
    features: Tensor, rtol: float | None = None, center: bool = False
) -> tuple[Tensor, Tensor]:
    """Numerical and effective ranks of ``C`` feature matrices ``features [C, n, d]`` at once:
    ``(LongTensor[C], float64 Tensor[C])``, the batched :func:`feature_rank` (same tolerance
    rule, from the **input** dtype) and :func:`effective_rank`.

    Computed in float64, from the eigenvalues of the smaller Gram matrix (``FᵀF`` or ``FFᵀ``,
    one batched ``eigvalsh``: far cheaper than an SVD of a tall matrix, on a GPU above all) when
    the tolerance lies well above the Gram route's round-off (see ``_GRAM_MARGIN``), else from
    batched singular values. No input checks beyond the shape: the features come from a model.
    """
    if features.ndim != 3 or 0 in features.shape:
        raise GrokinterpError(
            f"features must be [C, n, d] with n, d ≥ 1, got {tuple(features.shape)}"
        )
    _, n, d = features.shape
    dtype = features.dtype if features.is_floating_point() else torch.get_default_dtype()
    tol = _tolerance(n, d, dtype, rtol)
    # float64: the default threshold of float32 features, ~1e-4·σ_max, is ~1e-8·λ_max in the
    # Gram's eigenvalues, below float32 round-off
    f = features.to(torch.float64)
    if center:
        f = f - f.mean(dim=1, keepdim=True)
    eps64 = torch.finfo(torch.float64).eps
    if tol * tol > _GRAM_MARGIN * max(n, d) * eps64:
        gram = f.mT @ f if d <= n else f @ f.mT
        s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(-1)  # descending
    else:
        s = torch.linalg.svdvals(f)
    numerical = (s > tol * s[:, :1]).sum(dim=-1)  # a zero matrix: σ_max = 0, rank 0
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # 0·log 0 = 0
    effective = torch.where(total[:, 0] > 0, entropy.exp(), torch.zeros_like(entropy))
    return numerical, effective


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


def rank_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """Per layer (``layers``, in key order): the effective rank at the first checkpoint, its
    maximum, its final value and the step at which it has fallen half-way from its maximum to the
    minimum after it (:func:`~grokinterp.analysis.curves.drop_step`; None without a real drop);
    and the step at which test accuracy is half-way through its jump."""
    layers = sorted(k.split("/", 1)[1] for k in results if k.startswith("effective/"))
    curves = [results[f"effective/{name}"].double() for name in layers]
    return {
        "test_acc_transition_step": transition_step(run.metrics, "test_acc", 0.5),
        "layers": layers,
        "effective_rank_start": [float(v[0]) for v in curves],
        "effective_rank_max": [float(v.max()) for v in curves],
        "effective_rank_final": [float(v[-1]) for v in curves],
        "rank_drop_step": [drop_step(run.steps, v) for v in curves],
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

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        feats = layer_features(model, model_inputs(x, model), residual=residual, position=position)
        out = {}
        for name, f in feats.items():
            out[f"numerical/{name}"] = torch.tensor(feature_rank(f, rtol=rtol, center=center))
            out[f"effective/{name}"] = torch.tensor(effective_rank(f, center=center))
        return out

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        with last_position_only(batch.model, position == -1):
            feats = batch.apply(
                lambda model, xs: layer_features(model, xs, residual=residual, position=position),
                model_inputs(x, batch.model),
            )
        out = {}
        for name, f in feats.items():  # f: [C, n, d]
            numerical, effective = batched_ranks(f, rtol=rtol, center=center)
            out[f"numerical/{name}"] = numerical
            out[f"effective/{name}"] = effective.float()  # the reference's dtype
        return out

    return Measure(at_step=at_step, at_steps=at_steps, key={"n_points": len(x)})
