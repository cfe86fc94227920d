"""Fourier progress measures over a run's checkpoints: the ``"fourier"`` analysis.

Nanda, Chan, Lieberum, Smith, Steinhardt (2023), "Progress measures for grokking via mechanistic
interpretability", §5: restricted loss, excluded loss, Gini coefficient of the Fourier norms of the
embedding and of ``W_L = W_out W_U``, total weight norm, and the per-neuron variance explained by
one frequency, tracked over training with the *key frequencies of the final model* held fixed.

Which measures apply to which operation (see :func:`grokinterp.analysis.fourier.group_indexing`):

==========================================  ======================================================
task                                         measures
==========================================  ======================================================
``mod_add``, ``mod_sub``                     all, on ``Z_p`` (``sub`` reads b as -b)
``mod_mul``, ``mod_div`` (prime p)           all, on ``Z_{p-1}`` after the discrete-log re-indexing
                                             (pairs with a zero operand are off the grid: excluded
                                             loss uses the non-zero training pairs)
other ``mod_*`` (x^2+y^2, ..., composite     spectra only (embedding, W_L, Gini, weight norm,
p for mul)                                   neuron fractions on the plain (a, b) grid); no
                                             restricted/excluded loss, key frequencies from W_E
==========================================  ======================================================

Models: ``transformer`` (neurons: every MLP layer at the last position; ``W_L`` of the last
layer) and ``embed_mlp`` (neurons: every hidden layer; ``W_L = W_out W_U`` with ``mlp_out``, else
``W_U``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis import fourier as F
from grokinterp.analysis.registry import register_analysis
from grokinterp.config import GrokinterpError
from grokinterp.models import effective_embedding

__all__ = [
    "FourierContext",
    "fourier_applies",
    "fourier_summary",
    "fourier_table",
    "grokking_window",
    "half_drop_step",
    "make_fourier",
]

MODELS = ("transformer", "embed_mlp")


def fourier_applies(run: Any) -> str | None:
    """None if the ``fourier`` analysis applies to ``run``, else a one-line reason."""
    task, model = run.config.task.name, run.config.model.name
    if not task.startswith("mod_"):
        return f"fourier needs a modular-arithmetic task (mod_*), not {task!r}"
    if model not in MODELS:
        return f"fourier needs a token model ({', '.join(MODELS)}), not {model!r}"
    return None


class FourierContext:
    """Everything about a run that does not change between checkpoints: the group re-indexing,
    the grid inputs, train/test index sets, labels and the key frequencies."""

    def __init__(self, task: Any, model_name: str, n_layers: int):
        if task.p is None:
            raise GrokinterpError("fourier needs a modular task with p")
        self.p = int(task.p)
        op = task.name.removeprefix("mod_")
        if op in ("mul", "div") and not F.is_prime(self.p):
            op = "other"  # no primitive root: no discrete-log re-indexing
        self.indexing = F.group_indexing(
            op if op in ("add", "sub", "mul", "div") else "other", self.p
        )
        self.model_name = model_name
        self.n_layers = n_layers
        n = self.indexing.n
        self.n, self.K = n, n // 2
        self.x_all = torch.cat([task.x_train, task.x_test])
        self.y_all = torch.cat([task.y_train, task.y_test])
        self.n_train = len(task.x_train)
        pos = self.indexing.positions(self.x_all[:, 0], self.x_all[:, 1])
        on = pos >= 0
        # which row of x_all sits at each grid position (the grid must be fully covered)
        self.grid_rows = torch.full((n * n,), -1, dtype=torch.long)
        self.grid_rows[pos[on]] = torch.nonzero(on).squeeze(1)
        if (self.grid_rows < 0).any():
            raise GrokinterpError(
                f"task {task.name} does not cover the full {n}x{n} grid needed for Fourier analysis"
            )
        self.grid_labels = self.y_all[self.grid_rows]
        train_on = on.clone()
        train_on[self.n_train :] = False
        self.train_positions = pos[train_on]
        self.hook_names = [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]

    @property
    def is_sum(self) -> bool:
        return self.indexing.is_sum

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """Logits on all task inputs ``[N, C]`` and neuron activations on the grid
        ``[n_neurons, n, n]`` (one forward pass)."""
        acts: dict[str, Tensor] = {}

        def keep(t: Tensor, hook: Any) -> None:
            acts[hook.name] = t[:, -1] if t.ndim == 3 else t  # transformer: last position

        hooks = [(name, keep) for name in self.hook_names]
        if self.model_name == "transformer":
            # Only the last position is read out, and the last layer's MLP never feeds another
            # position: run it (and everything after it) on the last position only (3x less work).
            last = self.n_layers - 1
            hooks.insert(0, (f"blocks.{last}.hook_resid_mid", lambda t, hook: t[:, -1:]))
        logits = model.run_with_hooks(self.x_all, fwd_hooks=hooks)
        neurons = torch.cat([acts[name] for name in self.hook_names], dim=-1)[self.grid_rows]
        return logits, neurons.T.reshape(-1, self.n, self.n)

    def grid_logits(self, logits: Tensor) -> Tensor:
        return logits[self.grid_rows].double()

    def embedding(self, state: dict[str, Tensor]) -> Tensor:
        """``W_E`` without ``=``, rows in group order ``[n, d]``."""
        return effective_embedding(state)[self.indexing.a_tokens].double()

    def w_logit(self, state: dict[str, Tensor]) -> Tensor:
        """``W_L^T`` (neuron-to-logit map, one row per output class in group order) ``[n, d_mlp]``."""
        last = f"blocks.{self.n_layers - 1}.mlp.W_out"
        W_U = state["unembed.W_U"].double()
        W_L = state[last].double() @ W_U if last in state else W_U
        return W_L[:, self.indexing.class_tokens].T

    def key_frequencies_of(
        self, model: nn.Module, state: dict[str, Tensor], source: str
    ) -> list[int]:
        if source == "embedding" or (source == "logits" and not self.is_sum):
            return F.key_frequencies(self.embedding(state))
        if source == "logits":
            logits, _ = self.evaluate(model)
            return F.select_key_frequencies(
                F.logit_frequency_energy(self.grid_logits(logits)).sqrt()
            )
        if source == "neurons":
            _, neurons = self.evaluate(model)
            best, _ = F.neuron_clusters(F.neuron_frequency_fractions(neurons))
            sizes = torch.bincount(best, minlength=self.K + 1)[1:]
            # +1: an empty cluster next to a small one must not look like an infinite drop
            return F.select_key_frequencies(sizes.double() + 1)
        raise GrokinterpError(
            f"key_freq_source must be logits, embedding or neurons, got {source!r}"
        )


@contextmanager
def _one_thread():
    """Run on one intra-op thread: the per-checkpoint tensors are small (p^2 x d_mlp), so thread
    start-up costs more than it saves, badly so on a shared CPU (measured 5x slower with 2 threads
    on a loaded 2-core machine, benchmarks/bench_fourier.py). The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits.double(), labels)


@register_analysis("fourier", applies=fourier_applies)
def make_fourier(
    run: Any,
    key_freqs: Sequence[int] | None = None,
    key_freq_source: str = "logits",
    reference_step: int | None = None,
) -> Callable[[int, dict[str, Tensor], nn.Module], dict[str, Tensor]]:
    """Factory of the per-checkpoint Fourier measures (Nanda et al. 2023, §5).

    Args:
        run: a :class:`grokinterp.store.Run` of a modular task with a token model.
        key_freqs: the key frequencies (1-based); default: computed once from the
            ``reference_step`` checkpoint and held fixed over training, as in the paper.
        key_freq_source: ``"logits"`` (default; largest drop in the logits' ``cos/sin w_k(a+b)``
            energy, the quantity the restricted loss keeps), ``"embedding"`` (of ``W_E``'s norms) or
            ``"neurons"`` (of the number of neurons whose best frequency is ``k``).
            :func:`grokinterp.analysis.fourier.select_key_frequencies` documents the rule.
        reference_step: checkpoint the key frequencies come from (default: the last one).

    Returns per checkpoint (``K = n // 2`` frequencies, ``M`` MLP neurons, all layers):
        ``embed_norms [K]``, ``embed_gini``, ``wl_norms [K]``, ``wl_gini``, ``weight_norm``,
        ``train_loss``, ``test_loss``, ``neuron_freq [M]`` (best frequency, 0 = dead),
        ``neuron_frac [M]``, ``neurons_85`` (share of neurons with > 85 % of their variance in one
        frequency, the paper's statistic), ``cluster_sizes [K + 1]`` (index 0 = dead),
        ``embed_key_mask [K]`` (that checkpoint's own embedding key frequencies), ``step``,
        ``key_mask [K]`` (the fixed key frequencies), and for add/sub/mul/div also
        ``logit_norms [K]``, ``logit_key_fraction`` (share of the logits' non-constant
        variance in the key ``a+b`` directions), ``restricted_loss`` (full grid),
        ``excluded_loss`` (training pairs).
    """
    reason = fourier_applies(run)
    if reason is not None:
        raise GrokinterpError(reason)
    cfg = run.config.model
    ctx = FourierContext(run.task(), cfg.name, cfg.n_layers)
    if key_freqs is None:
        steps = run.steps
        if not steps:
            raise GrokinterpError(f"run {run.path} has no checkpoints")
        ref = steps[-1] if reference_step is None else int(reference_step)
        model = run.model(ref)
        freqs = ctx.key_frequencies_of(model, run.load_state(ref), key_freq_source)
    else:
        freqs = sorted({int(k) for k in key_freqs})
        if not freqs or freqs[0] < 1 or freqs[-1] > ctx.K:
            raise GrokinterpError(
                f"key_freqs must be integers in 1..{ctx.K}, got {list(key_freqs)}"
            )
    key_mask = torch.zeros(ctx.K, dtype=torch.bool)
    key_mask[torch.tensor(freqs) - 1] = True
    y_train = ctx.y_all[: ctx.n_train]
    y_test = ctx.y_all[ctx.n_train :]

    @torch.no_grad()
    def per_checkpoint(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        with _one_thread():
            return _measures(step, state, model)

    def _measures(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        logits, neurons = ctx.evaluate(model)
        embed_norms = F.frequency_norms(ctx.embedding(state))
        wl_norms = F.frequency_norms(ctx.w_logit(state))
        fracs = F.neuron_frequency_fractions(neurons)
        best, best_frac = F.neuron_clusters(fracs)
        emb_keys = torch.zeros(ctx.K, dtype=torch.bool)
        emb_keys[torch.tensor(F.select_key_frequencies(embed_norms)) - 1] = True
        out = {
            "step": torch.tensor(step),
            "embed_norms": embed_norms.float(),
            "embed_gini": F.gini_rows(embed_norms).float(),
            "wl_norms": wl_norms.float(),
            "wl_gini": F.gini_rows(wl_norms).float(),
            "weight_norm": torch.sqrt(sum(p.double().pow(2).sum() for p in model.parameters())),
            "train_loss": _cross_entropy(logits[: ctx.n_train], y_train),
            "test_loss": _cross_entropy(logits[ctx.n_train :], y_test)
            if len(y_test)
            else torch.tensor(math.nan, dtype=torch.float64),
            "neuron_freq": best,
            "neuron_frac": best_frac.float(),
            "neurons_85": (best_frac > 0.85).double().mean(),
            "cluster_sizes": torch.bincount(best, minlength=ctx.K + 1),
            "embed_key_mask": emb_keys,
            "key_mask": key_mask,
        }
        if ctx.is_sum:
            L = ctx.grid_logits(logits)
            energy = F.logit_frequency_energy(L)
            out["logit_norms"] = energy.sqrt().float()
            out["logit_key_fraction"] = energy[key_mask].sum() / energy.sum().clamp_min(1e-300)
            out["restricted_loss"] = torch.tensor(
                F.restricted_loss(L, freqs, labels=ctx.grid_labels), dtype=torch.float64
            )
            out["excluded_loss"] = torch.tensor(
                F.excluded_loss(L, freqs, labels=ctx.grid_labels, positions=ctx.train_positions),
                dtype=torch.float64,
            )
        return out

    return per_checkpoint


# ---------------------------------------------------------------------------------------------
# Summaries of the over-training curves
# ---------------------------------------------------------------------------------------------


def half_drop_step(steps: Tensor, values: Tensor) -> int | None:
    """First step after the curve's maximum at which it has made half of its (log-scale) descent
    from that maximum to its final value: ``log y <= (log max y + log y_final) / 2``.

    A threshold-free "when did this loss fall" marker, used to compare restricted and test loss.
    None if the curve does not fall.
    """
    y = torch.as_tensor(values, dtype=torch.float64).clamp_min(1e-300).log()
    s = torch.as_tensor(steps)
    i_max = int(torch.argmax(y))
    if y[-1] >= y[i_max]:
        return None
    mid = (y[i_max] + y[-1]) / 2
    after = torch.nonzero(y[i_max:] <= mid).squeeze(1)
    return int(s[i_max + int(after[0])])


def half_rise_step(steps: Tensor, values: Tensor) -> int | None:
    """First step at which a rising curve has covered half of its range from its initial
    value to its maximum (linear scale; for the Gini coefficient)."""
    y = torch.as_tensor(values, dtype=torch.float64)
    s = torch.as_tensor(steps)
    top = float(y.max())
    if top <= float(y[0]):
        return None
    mid = (float(y[0]) + top) / 2
    return int(s[int(torch.nonzero(y >= mid)[0])])


def excluded_rise(steps: Tensor, excluded: Tensor) -> tuple[int, int]:
    """``(start, peak)``: the excluded loss's peak step and the step of its minimum before the
    peak, where it starts to rise (Nanda et al. 2023: it rises during circuit formation)."""
    y = torch.as_tensor(excluded, dtype=torch.float64)
    s = torch.as_tensor(steps)
    peak = int(torch.argmax(y))
    start = int(torch.argmin(y[: peak + 1]))
    return int(s[start]), int(s[peak])


def grokking_window(metrics: list[dict], level: float = 0.95) -> tuple[int | None, int | None]:
    """``(t_mem, t_gen)``: first evaluated steps with train / test accuracy >= ``level``
    (Minegishi et al.'s 95 % convention); the span between them is the grokking delay."""

    def first(key: str) -> int | None:
        for m in metrics:
            if m.get(key) is not None and m[key] >= level:
                return int(m["step"])
        return None

    return first("train_acc"), first("test_acc")


def fourier_summary(
    results: dict[str, Tensor], prefix: str = "fourier/", steps: Sequence[int] | None = None
) -> dict[str, Any]:
    """Headline numbers of an over-training result (keys ``"fourier/..."`` plus ``"steps"``, or
    the same keys without the prefix):
    key frequencies, where the excluded loss rises, where restricted and test loss fall, Gini at
    the start and the end and where it rises, final weight norm and share of 85 %-neurons."""
    r = {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix)}
    if not r:  # already without the prefix (e.g. the per-analysis dict of `grokinterp analyze`)
        r = dict(results)
    if steps is None:
        steps = results["steps"] if "steps" in results else r.get("step")
    if steps is None:
        raise GrokinterpError("results hold no 'steps' (or 'step'); pass steps=")
    steps = torch.as_tensor(steps)
    key = (torch.nonzero(r["key_mask"][-1]).squeeze(1) + 1).tolist()
    out: dict[str, Any] = {
        "key_frequencies": key,
        "embed_gini_start": float(r["embed_gini"][0]),
        "embed_gini_final": float(r["embed_gini"][-1]),
        "embed_gini_rise_step": half_rise_step(steps, r["embed_gini"]),
        "wl_gini_start": float(r["wl_gini"][0]),
        "wl_gini_final": float(r["wl_gini"][-1]),
        "wl_gini_rise_step": half_rise_step(steps, r["wl_gini"]),
        "test_loss_fall_step": half_drop_step(steps, r["test_loss"]),
        "weight_norm_start": float(r["weight_norm"][0]),
        "weight_norm_final": float(r["weight_norm"][-1]),
        "neurons_85_final": float(r["neurons_85"][-1]),
    }
    if "restricted_loss" in r:
        start, peak = excluded_rise(steps, r["excluded_loss"])
        out.update(
            excluded_rise_step=start,
            excluded_peak_step=peak,
            restricted_loss_fall_step=half_drop_step(steps, r["restricted_loss"]),
            logit_key_fraction_final=float(r["logit_key_fraction"][-1]),
            restricted_loss_final=float(r["restricted_loss"][-1]),
            excluded_loss_final=float(r["excluded_loss"][-1]),
        )
    return out


def format_summary(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows for a CLI table."""

    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return ", ".join(map(str, v))
        return str(v)

    labels = {
        "key_frequencies": "key frequencies",
        "excluded_rise_step": "excluded loss starts rising (step)",
        "excluded_peak_step": "excluded loss peak (step)",
        "restricted_loss_fall_step": "restricted loss half-way down (step)",
        "test_loss_fall_step": "test loss half-way down (step)",
        "embed_gini_start": "Gini of W_E spectrum, start",
        "embed_gini_final": "Gini of W_E spectrum, final",
        "embed_gini_rise_step": "Gini of W_E half-way up (step)",
        "wl_gini_start": "Gini of W_L spectrum, start",
        "wl_gini_final": "Gini of W_L spectrum, final",
        "wl_gini_rise_step": "Gini of W_L half-way up (step)",
        "logit_key_fraction_final": "logit variance in key freqs, final",
        "restricted_loss_final": "restricted loss, final",
        "excluded_loss_final": "excluded loss, final",
        "weight_norm_start": "total weight norm, start",
        "weight_norm_final": "total weight norm, final",
        "neurons_85_final": "neurons >85% one frequency, final",
    }
    return [(labels[k], fmt(summary[k])) for k in labels if k in summary]


def fourier_table(run: Any, results: dict[str, Tensor]) -> Any:
    """A ``rich`` table of :func:`fourier_summary` plus the run's grokking window, for
    ``grokinterp analyze RUN --only fourier`` (registered in ``cli.ANALYSIS_SUMMARIES``)."""
    from rich.table import Table

    table = Table(title=f"fourier: {getattr(run, 'name', run)}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    t_mem, t_gen = grokking_window(run.metrics)
    table.add_row("train acc >= 95% / test acc >= 95% (step)", f"{t_mem} / {t_gen}")
    steps = None
    if "steps" not in results and "step" not in results and "fourier/step" not in results:
        steps = run.steps  # an older cache without the step key: `analyze` covers every step
    for label, value in format_summary(fourier_summary(results, steps=steps)):
        table.add_row(label, value)
    return table
