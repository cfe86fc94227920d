"""Loss spikes and the Slingshot mechanism.

Thilak, Littwin, Zhai, Saremi, Paiss, Susskind 2022, "The Slingshot Mechanism: An Empirical Study
of Adaptive Optimizers and the Grokking Phenomenon" (arXiv 2206.04817; NeurIPS 2022 HITY
workshop): late in training, adaptive optimizers (Adam, AdamW, RMSProp) go through cycles of a
stable phase in which the norm of the **last layer's weights grows** rapidly, an ensuing **spike
of the training loss**, and a norm plateau. Without explicit regularisation, grokking happens
almost only at the onset of such a Slingshot, and not without one.

* :func:`loss_spikes` — a pure function of a training-loss curve ``(steps, loss)``: the spikes,
  each with its peak step, onset and end, peak loss, the loss before it and their ratio.
* :func:`spike_norms` — the last-layer weight norm around each spike (its growth during the
  stable phase before the spike, and after the spike).
* The ``slingshot`` analysis (:func:`make_slingshot`) records the last layer's weight norm
  ``‖W_U‖`` at every checkpoint; its summary detects the spikes in ``metrics.jsonl``'s
  ``train_loss`` and relates them to the norm and to the step at which the run generalises.

Why a log scale and a trailing median: a training loss spans many decades (a Slingshot takes it
from ~1e-7 back to ~1), so a spike is a jump in ``log10 loss`` above the median of the preceding
evaluations — a baseline that a few spike points do not move, and that a falling curve never
exceeds (a descending loss is never a spike). The jump must exceed both ``min_ratio`` (a factor
on the loss) and ``z`` robust standard deviations of the curve's evaluation-to-evaluation noise,
so evaluation noise is never a spike. Spikes between two evaluations are invisible: evaluate
often (``train.eval_every``) when looking for them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import as_floats, grok_times
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "LAST_LAYER",
    "Spike",
    "last_layer_name",
    "loss_spikes",
    "make_slingshot",
    "slingshot_applies",
    "slingshot_summary",
    "spike_norms",
]

# grokinterp's models all read out through ``unembed.W_U`` (DESIGN §3)
LAST_LAYER = "unembed.W_U"


@dataclass(frozen=True)
class Spike:
    """One loss spike: ``step`` (the peak), ``start_step``/``end_step`` (first and last evaluation
    above the baseline), the peak ``loss``, the ``baseline`` loss before it (median of the
    preceding window) and ``ratio = loss / baseline``."""

    step: int
    start_step: int
    end_step: int
    loss: float
    baseline: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _robust_sigma(values: Sequence[float]) -> float:
    """1.4826 × the median absolute deviation: the standard deviation of Gaussian noise."""
    if len(values) < 2:
        return 0.0
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


def loss_spikes(
    steps: Sequence[int] | Tensor,
    loss: Sequence[float] | Tensor,
    *,
    min_ratio: float = 10.0,
    z: float = 6.0,
    window: int = 10,
    min_history: int = 3,
    merge: int = 1,
) -> list[Spike]:
    """The spikes of a training-loss curve (Thilak et al. 2022's Slingshot loss spikes).

    An evaluation ``i`` is *above baseline* when ``log10 loss_i − b_i ≥ max(log10 min_ratio, z·σ)``,
    with ``b_i`` the median of ``log10 loss`` over the up to ``window`` preceding evaluations
    (at least ``min_history`` of them) and ``σ`` the robust (MAD) standard deviation of the
    evaluation-to-evaluation changes of ``log10 loss`` over the whole curve, divided by √2 (the
    noise of one point). Runs of consecutive points above baseline, separated by at most
    ``merge`` points below it, form one spike; its ``step`` is the evaluation of highest loss.

    Args:
        steps: evaluated steps, strictly increasing.
        loss: training loss at those steps (> 0; NaN/None points are skipped).
        min_ratio: smallest loss / baseline factor that counts (default 10: one decade).
        z: robust standard deviations of the curve's noise a spike must also exceed.
        window: evaluations in the trailing baseline.
        min_history: evaluations needed before a point can be a spike.
        merge: below-baseline points allowed inside one spike.

    Returns:
        The spikes in step order (empty for a smooth or only-falling curve).
    """
    s, y = as_floats(steps, "steps"), as_floats(loss, "loss")
    if len(s) != len(y):
        raise GrokinterpError(f"steps and loss must have one length, got {len(s)} and {len(y)}")
    if any(b <= a for a, b in zip(s, s[1:], strict=False)):
        raise GrokinterpError("steps must be strictly increasing")
    if not (isinstance(min_ratio, int | float) and min_ratio > 1 and math.isfinite(min_ratio)):
        raise GrokinterpError(f"min_ratio must be a finite number > 1, got {min_ratio!r}")
    if not (isinstance(z, int | float) and z >= 0 and math.isfinite(z)):
        raise GrokinterpError(f"z must be a finite number ≥ 0, got {z!r}")
    for name, v, lo in (
        ("window", window, 1),
        ("min_history", min_history, 1),
        ("merge", merge, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise GrokinterpError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    pts = [(int(a), b) for a, b in zip(s, y, strict=True) if math.isfinite(b)]
    if any(b <= 0 for _, b in pts):
        raise GrokinterpError("loss must be > 0 (spikes are found on a log scale)")
    st = [a for a, _ in pts]
    lg = [math.log10(b) for _, b in pts]
    if len(lg) <= min_history:
        return []
    sigma = _robust_sigma([b - a for a, b in zip(lg, lg[1:], strict=False)]) / math.sqrt(2)
    jump = max(math.log10(min_ratio), z * sigma)
    base = [math.nan] * len(lg)
    above = [False] * len(lg)
    for i in range(min_history, len(lg)):
        base[i] = statistics.median(lg[max(0, i - window) : i])
        above[i] = lg[i] - base[i] >= jump
    spikes: list[Spike] = []
    i = 0
    while i < len(lg):
        if not above[i]:
            i += 1
            continue
        start, end, gap = i, i, 0
        j = i + 1
        while j < len(lg) and gap <= merge:
            if above[j]:
                end, gap = j, 0
            else:
                gap += 1
            j += 1
        peak = max(range(start, end + 1), key=lambda k: (lg[k], -k))
        b = 10 ** base[start]
        spikes.append(Spike(st[peak], st[start], st[end], 10 ** lg[peak], b, 10 ** lg[peak] / b))
        i = end + 1
    return spikes


def _at_or_before(steps: Sequence[int], values: Sequence[float], t: int) -> float | None:
    best = None
    for s, v in zip(steps, values, strict=True):
        if s <= t:
            best = v
        else:
            break
    return best


def _at_or_after(steps: Sequence[int], values: Sequence[float], t: int) -> float | None:
    return next((v for s, v in zip(steps, values, strict=True) if s >= t), None)


def spike_norms(
    spikes: Sequence[Spike], steps: Sequence[int] | Tensor, norms: Sequence[float] | Tensor
) -> list[dict[str, float | None]]:
    """For each spike, the last-layer norm from the checkpoints ``(steps, norms)``:
    ``norm_before`` (last checkpoint at or before the onset), ``norm_after`` (first at or after the
    end), and ``growth`` = ``norm_before`` / the norm at the end of the previous spike (the first
    checkpoint for the first one) — Thilak et al.'s norm growth in the stable phase before a
    Slingshot (> 1: the norm grew). None where no checkpoint lies on that side."""
    s = [int(a) for a in as_floats(steps, "steps")]
    v = as_floats(norms, "norms")
    if len(s) != len(v):
        raise GrokinterpError(f"steps and norms must have one length, got {len(s)} and {len(v)}")
    out = []
    prev_end = s[0] if s else 0
    for sp in spikes:
        before = _at_or_before(s, v, sp.start_step)
        after = _at_or_after(s, v, sp.end_step)
        ref = _at_or_before(s, v, prev_end) if s else None
        growth = before / ref if before is not None and ref else None
        out.append({"norm_before": before, "norm_after": after, "growth": growth})
        prev_end = sp.end_step
    return out


# ---------------------------------------------------------------------------------------------
# The ``slingshot`` analysis
# ---------------------------------------------------------------------------------------------


def last_layer_name(state: Mapping[str, Tensor]) -> str | None:
    """The name of the last layer's weight in a state dict (``unembed.W_U``), or None."""
    return LAST_LAYER if LAST_LAYER in state else None


def slingshot_applies(run: Any) -> str | None:
    """None if ``slingshot`` applies: checkpoints with a last layer ``unembed.W_U`` and a
    training-loss curve in ``metrics.jsonl``."""
    if not run.steps:
        return "the run has no checkpoint"
    if last_layer_name(run.load_state(run.steps[0])) is None:
        return f"the model has no last layer named {LAST_LAYER}"
    if not any(m.get("train_loss") is not None for m in run.metrics):
        return "metrics.jsonl has no train_loss"
    return None


def slingshot_summary(run: Any, results: Mapping[str, Tensor]) -> dict[str, Any]:
    """The spikes of the run's training loss (:func:`loss_spikes` on ``metrics.jsonl``):
    ``spike_steps`` (peaks), ``spike_ratios`` (peak / baseline), with the last-layer norm before
    each and its growth since the previous spike (:func:`spike_norms`, from the analysis's
    ``last_layer_norm``); ``generalize_step`` and the last spike at or before it
    (``spike_before_generalization``; Thilak et al.: grokking starts at a Slingshot), and the
    last-layer norm at the first and last checkpoint."""
    rows = [m for m in run.metrics if m.get("train_loss") is not None]
    spikes = loss_spikes([m["step"] for m in rows], [m["train_loss"] for m in rows])
    steps = [int(s) for s in results["steps"]] if "steps" in results else list(run.steps)
    norm = [float(v) for v in results["last_layer_norm"]]
    rel = spike_norms(spikes, steps, norm)
    gen = grok_times(run.metrics).generalize_step
    before = [sp.step for sp in spikes if gen is not None and sp.start_step <= gen]
    return {
        "n_spikes": len(spikes),
        "spike_steps": [sp.step for sp in spikes],
        "spike_ratios": [sp.ratio for sp in spikes],
        "norm_before_spike": [r["norm_before"] for r in rel],
        "norm_growth_before_spike": [r["growth"] for r in rel],
        "generalize_step": gen,
        "spike_before_generalization": before[-1] if before else None,
        "last_layer_norm_start": norm[0],
        "last_layer_norm_final": norm[-1],
    }


@register_analysis("slingshot", applies=slingshot_applies, summarize=slingshot_summary)
def make_slingshot(run: Any) -> Measure:
    """Slingshot mechanism (Thilak et al. 2022): the last layer's weight norm at every checkpoint.

    Key ``last_layer_norm``: the Frobenius norm of ``unembed.W_U`` (the readout; its bias is not
    part of the paper's "last layer weights"). The loss spikes themselves come from
    ``metrics.jsonl`` (:func:`slingshot_summary`), evaluated more often than checkpoints.
    """

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        return {"last_layer_norm": state[LAST_LAYER].double().norm().float()}

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        w = batch.params[LAST_LAYER].double().flatten(1)
        return {"last_layer_norm": w.norm(dim=1).float()}

    return Measure(at_step=at_step, at_steps=at_steps)
