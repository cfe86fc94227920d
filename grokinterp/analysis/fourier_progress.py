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
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.analysis import fourier as F
from grokinterp.analysis.batch import CheckpointBatch, class_logits, last_position_only
from grokinterp.analysis.curves import (
    excluded_rise,
    fall_below_step,
    grok_times,
    half_rise_step,
)
from grokinterp.analysis.registry import Measure, register_analysis
from grokinterp.config import GrokinterpError

__all__ = [
    "SUMMARY_LABELS",
    "FourierContext",
    "fourier_applies",
    "fourier_summary",
    "make_fourier",
]

MODELS = ("transformer", "embed_mlp")
# Share of a neuron's variance in one frequency above which it counts as "one-frequency"
# (Nanda et al. 2023 report ~85 % of neurons above 85 %).
ONE_FREQUENCY = 0.85

# Labels for the CLI and the report (plain data: formatting lives there).
SUMMARY_LABELS = {
    "fit_step": "train accuracy reaches 95% (step)",
    "generalize_step": "test accuracy reaches 95% (step)",
    "key_frequencies": "key frequencies",
    "excluded_rise_step": "excluded loss starts rising (step)",
    "excluded_peak_step": "excluded loss peak (step)",
    "restricted_loss_fall_step": "restricted loss below half the chance loss (step)",
    "test_loss_fall_step": "test loss below half the chance loss (step)",
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

    def evaluate(self, model: nn.Module, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits on all task inputs ``[N, C]`` and neuron activations on the grid
        ``[n_neurons, n, n]`` (one forward pass). Traceable by ``vmap`` (no data-dependent
        shapes), so :meth:`CheckpointBatch.apply` runs it for many checkpoints at once."""
        x = self.x_all if x is None else x
        acts: dict[str, Tensor] = {}

        def keep(t: Tensor, hook: Any) -> None:
            acts[hook.name] = t[:, -1] if t.ndim == 3 else t  # transformer: last position

        hooks = [(name, keep) for name in self.hook_names]
        # Only the last position is read out, and the last layer's MLP never feeds another
        # position: the transformer runs its last block at the last position only (3x less work).
        with torch.no_grad(), last_position_only(model):
            logits = class_logits(model, x, fwd_hooks=hooks)
        rows = self.grid_rows.to(logits.device)
        neurons = torch.cat([acts[name] for name in self.hook_names], dim=-1)[rows]
        return logits, neurons.T.reshape(-1, self.n, self.n)

    def grid_logits(self, logits: Tensor) -> Tensor:
        """``[..., N, C]`` logits → ``[..., n*n, C]`` float64 on the grid, in group order."""
        return logits[..., self.grid_rows.to(logits.device), :].double()

    def embedding(self, state: dict[str, Tensor]) -> Tensor:
        """``W_E`` without ``=``, rows in group order ``[..., n, d]`` (float64)."""
        from grokinterp.models import effective_embedding  # lazy: models import TransformerLens

        E = effective_embedding(state)
        return E[..., self.indexing.a_tokens.to(E.device), :].double()

    def w_logit(self, state: dict[str, Tensor]) -> Tensor:
        """``W_L^T`` (neuron-to-logit map, one row per output class in group order)
        ``[..., n, d_mlp]`` (float64)."""
        last = f"blocks.{self.n_layers - 1}.mlp.W_out"
        W_U = state["unembed.W_U"].double()
        W_L = state[last].double() @ W_U if last in state else W_U
        return W_L[..., self.indexing.class_tokens.to(W_L.device)].transpose(-1, -2)

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
    """Run on one intra-op thread: the per-checkpoint tensors of the reference path are small
    (p^2 x d_mlp), so thread start-up costs more than it saves, badly so on a shared CPU
    (measured 5x slower with 2 threads on a loaded 2-core machine). The caller's setting is
    restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the second-to-last axis, batched over leading axes, in float64:
    a grokked model's losses reach 1e-7, below float32's resolution next to log-sum-exp ~ 1."""
    if logits.shape[-2] == 0:
        return torch.full(logits.shape[:-2], math.nan, dtype=torch.float64, device=logits.device)
    logp = torch.log_softmax(logits.double(), dim=-1)
    idx = labels.to(logits.device).expand(*logits.shape[:-1])[..., None]
    return -logp.gather(-1, idx).squeeze(-1).mean(-1)


class _Spectra:
    """The batched Fourier measures of a chunk of checkpoints (leading axis ``C``)."""

    def __init__(self, ctx: FourierContext, freqs: list[int]):
        self.ctx = ctx
        n, K = ctx.n, ctx.K
        self.key_mask = torch.zeros(K, dtype=torch.bool)
        self.key_mask[torch.tensor(freqs) - 1] = True
        D = F.sum_directions(n, torch.float64)  # [n, n*n]
        key_rows = F._rows_of(freqs, n)
        self.D = D
        self.D_keep = D[[0, *key_rows]]  # restricted logits: constant + key directions
        self.D_key = D[key_rows]  # excluded logits: subtract the key directions
        self.onehot = F._freq_onehot(n, torch.float64)  # basis row -> frequency

    def logit_measures(self, L: Tensor) -> dict[str, Tensor]:
        """Nanda et al. 2023 §5.1 on grid logits ``L [C, n*n, V]`` (float64)."""
        ctx, dev = self.ctx, L.device
        D, D_keep, D_key = self.D.to(dev), self.D_keep.to(dev), self.D_key.to(dev)
        energy = (D @ L).pow(2).sum(-1) @ self.onehot.to(dev)  # [C, K + 1]
        energy = energy[:, 1:]
        key = self.key_mask.to(dev)
        restricted = D_keep.T @ (D_keep @ L)
        excluded = L - D_key.T @ (D_key @ L)
        labels = ctx.grid_labels.to(dev)
        train = ctx.train_positions.to(dev)
        return {
            "logit_norms": energy.sqrt().float(),
            "logit_key_fraction": energy[:, key].sum(-1) / energy.sum(-1).clamp_min(1e-300),
            "restricted_loss": _mean_nll(restricted, labels),
            "excluded_loss": _mean_nll(excluded[:, train], labels[train]),
        }


@register_analysis(
    "fourier",
    applies=fourier_applies,
    summarize=lambda run, r: fourier_summary(r, steps=run.steps, metrics=run.metrics),
    labels=SUMMARY_LABELS,
)
def make_fourier(
    run: Any,
    key_freqs: Sequence[int] | None = None,
    key_freq_source: str = "logits",
    reference_step: int | None = None,
) -> Measure:
    """Fourier progress measures (Nanda et al. 2023, "Progress measures for grokking", §5).

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
    spectra = _Spectra(ctx, freqs)
    key_mask = spectra.key_mask
    y_train = ctx.y_all[: ctx.n_train]
    y_test = ctx.y_all[ctx.n_train :]

    def at_step(step: int, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """The per-checkpoint reference (one model, the paper's formulas one by one)."""
        with _one_thread(), torch.no_grad():
            logits, neurons = ctx.evaluate(model, ctx.x_all.to(next(model.parameters()).device))
            logits, neurons = logits.cpu(), neurons.cpu()
            state = {k: v.cpu() for k, v in state.items()}
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
                "train_loss": _mean_nll(logits[: ctx.n_train], y_train),
                "test_loss": _mean_nll(logits[ctx.n_train :], y_test),
                "neuron_freq": best,
                "neuron_frac": best_frac.float(),
                "neurons_85": (best_frac > ONE_FREQUENCY).double().mean(),
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
                    F.excluded_loss(
                        L, freqs, labels=ctx.grid_labels, positions=ctx.train_positions
                    ),
                    dtype=torch.float64,
                )
            return out

    param_names = None

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        """All measures for a chunk of checkpoints: one vmapped forward, batched transforms."""
        nonlocal param_names
        if param_names is None:
            param_names = [n for n, _ in batch.model.named_parameters()]
        C, dev, P = len(batch), batch.device, batch.params
        logits, neurons = batch.apply(ctx.evaluate, ctx.x_all.to(dev))  # [C,N,V], [C,M,n,n]
        embed_norms = F.frequency_norms(ctx.embedding(P))  # [C, K]
        wl_norms = F.frequency_norms(ctx.w_logit(P))
        M = neurons.shape[1]
        fracs = F.neuron_frequency_fractions(neurons.reshape(C * M, ctx.n, ctx.n))
        best, best_frac = F.neuron_clusters(fracs)
        best, best_frac = best.reshape(C, M), best_frac.reshape(C, M)
        cluster_sizes = torch.zeros(C, ctx.K + 1, dtype=torch.long, device=dev)
        cluster_sizes.scatter_add_(1, best, torch.ones_like(best))
        emb_keys = torch.zeros(C, ctx.K, dtype=torch.bool)
        for i, norms in enumerate(embed_norms.cpu()):  # K numbers each: cheap on the CPU
            emb_keys[i, torch.tensor(F.select_key_frequencies(norms)) - 1] = True
        sq = sum(P[n].double().pow(2).flatten(1).sum(-1) for n in param_names)
        out = {
            "step": torch.tensor(batch.steps),
            "embed_norms": embed_norms.float(),
            "embed_gini": F.gini_rows(embed_norms).float(),
            "wl_norms": wl_norms.float(),
            "wl_gini": F.gini_rows(wl_norms).float(),
            "weight_norm": sq.sqrt(),
            "train_loss": _mean_nll(logits[:, : ctx.n_train], y_train),
            "test_loss": _mean_nll(logits[:, ctx.n_train :], y_test),
            "neuron_freq": best,
            "neuron_frac": best_frac.float(),
            "neurons_85": (best_frac > ONE_FREQUENCY).double().mean(-1),
            "cluster_sizes": cluster_sizes,
            "embed_key_mask": emb_keys,
            "key_mask": key_mask.expand(C, -1),
        }
        if ctx.is_sum:
            out.update(spectra.logit_measures(ctx.grid_logits(logits)))
        return out

    return Measure(
        at_step=at_step,
        at_steps=at_steps,
        key={"key_freqs": freqs},
        bytes_per_checkpoint=_bytes_per_checkpoint(ctx, run),
    )


def _bytes_per_checkpoint(ctx: FourierContext, run: Any) -> int:
    """Activations of one checkpoint in a batch (float32 forward, neurons twice, the float64
    grid logits): the driver sizes chunks from it (≈ 136 MB at p = 113: one checkpoint per
    batch on a CPU, 64 on a GPU)."""
    m = run.config.model
    return 4 * len(ctx.x_all) * (m.n_layers * m.d_mlp * 2 + ctx.p + 3 * m.d_model * 4)


# ---------------------------------------------------------------------------------------------
# Summary of the over-training curves
# ---------------------------------------------------------------------------------------------


def fourier_summary(
    results: dict[str, Tensor],
    prefix: str = "fourier/",
    steps: Sequence[int] | None = None,
    metrics: Sequence[dict] | None = None,
) -> dict[str, Any]:
    """Headline numbers of an over-training result (keys ``"fourier/..."`` plus ``"steps"``, or
    the same keys without the prefix): key frequencies, where the excluded loss rises, where
    restricted and test loss fall, Gini at the start and the end and where it rises, final weight
    norm and share of one-frequency neurons; with the run's ``metrics`` also its
    :func:`~grokinterp.analysis.curves.grok_times` (``fit_step``, ``generalize_step``)."""
    r = {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix)}
    if not r:  # already without the prefix (e.g. one analysis's results)
        r = dict(results)
    if steps is None:
        steps = results["steps"] if "steps" in results else r.get("step")
    if steps is None:
        raise GrokinterpError("results hold no 'steps' (or 'step'); pass steps=")
    steps = torch.as_tensor(steps)
    out: dict[str, Any] = {}
    if metrics is not None:
        times = grok_times(metrics)
        out.update(fit_step=times.fit_step, generalize_step=times.generalize_step)
    # When a loss falls: first below half the chance loss log(C), C = 2K + 1 classes — one level
    # for restricted and test loss, so that "restricted falls first" compares like with like
    half_chance = math.log(2 * r["embed_norms"].shape[-1] + 1) / 2
    out.update(
        key_frequencies=(torch.nonzero(r["key_mask"][-1]).squeeze(1) + 1).tolist(),
        embed_gini_start=float(r["embed_gini"][0]),
        embed_gini_final=float(r["embed_gini"][-1]),
        embed_gini_rise_step=half_rise_step(steps, r["embed_gini"]),
        wl_gini_start=float(r["wl_gini"][0]),
        wl_gini_final=float(r["wl_gini"][-1]),
        wl_gini_rise_step=half_rise_step(steps, r["wl_gini"]),
        test_loss_fall_step=fall_below_step(steps, r["test_loss"], half_chance),
        weight_norm_start=float(r["weight_norm"][0]),
        weight_norm_final=float(r["weight_norm"][-1]),
        neurons_85_final=float(r["neurons_85"][-1]),
    )
    if "restricted_loss" in r:
        start, peak = excluded_rise(steps, r["excluded_loss"])
        out.update(
            excluded_rise_step=start,
            excluded_peak_step=peak,
            restricted_loss_fall_step=fall_below_step(steps, r["restricted_loss"], half_chance),
            logit_key_fraction_final=float(r["logit_key_fraction"][-1]),
            restricted_loss_final=float(r["restricted_loss"][-1]),
            excluded_loss_final=float(r["excluded_loss"][-1]),
        )
    return out
