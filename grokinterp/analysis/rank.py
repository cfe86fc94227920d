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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grokinterp.analysis.complexity import preactivation_hooks
from grokinterp.config import GrokinterpError


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
    if rtol is not None and not (isinstance(rtol, (int, float)) and 0 <= rtol < float("inf")):
        raise GrokinterpError(f"rtol must be a finite number ≥ 0 or None, got {rtol!r}")
    s = singular_values(f, center=center)
    smax = float(s[0]) if s.numel() else 0.0
    if smax == 0.0:
        return 0
    if rtol is None:
        rtol = max(f.shape) * torch.finfo(f.dtype).eps
    return int((s > rtol * smax).sum())


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
