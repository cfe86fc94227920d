"""Linking a weak model's embedding to the circuits a GrokTransfer target forms.

GrokTransfer (Xu, Ni, Wang, Hu 2025, "Let Me Grok for You: Accelerating Grokking via Embedding
Transfer from a Weaker Model", ICLR 2025) trains a small model, takes its token embedding
``E_W [d_vocab, r]`` and initialises the target's factorized embedding ``E_T = A·B`` with
``A = E_W``. This module asks how much of the target's final algorithm is inherited from E_W:

- **Fourier spectra** (Nanda, Chan, Lieberum, Smith, Steinhardt 2023, "Progress measures for
  grokking via mechanistic interpretability"): per frequency k, the norm of the embedding
  (``=`` row left out, rows in cyclic-group order, see :func:`grokinterp.analysis.fourier.group_indexing`)
  projected on ``{cos_k, sin_k}`` — of E_W, of ``A·B`` at initialisation (step 0) and of the
  target's effective embedding at every checkpoint.
- **Key frequencies** with :func:`grokinterp.analysis.fourier.key_frequencies` (two-class Otsu split
  of the log-energy spectrum). ``K_W`` = E_W's key frequencies ("the frequencies most present in
  E_W"), ``K_T`` = the target's, read once it generalizes.
- **Overlap score** ``|K_T ∩ K_W| / |K_T|``: the fraction of the target's key frequencies that E_W
  already carried. **Permutation baseline**: the same score after relabelling the frequencies of
  E_W uniformly at random (equivalently a uniformly random ``K_W`` of the same size), whose mean
  is exactly ``|K_W| / K`` (hypergeometric); the p-value is the fraction of permutations scoring
  at least the observed value (:func:`overlap_test`).
- **Subspaces**: principal angles (Björck & Golub 1973) between the column space of E_W and the
  top-r left-singular subspace of the target embedding, r = E_W's width; the fraction of the
  target embedding's energy inside E_W's column space; and linear CKA (Kornblith, Norouzi, Lee,
  Hinton 2019, "Similarity of Neural Network Representations Revisited"). All three work on the
  embeddings as functions of the token (rows = group elements) after removing the mean over
  tokens, which carries no Fourier information.

**Vector inputs** (the ``mlp`` on XOR-cluster data, the paper's §3): E_W is the weak model's
first-layer weight ``W_in [input_dim, r]`` and the target's "embedding" its effective first layer
``W_in [input_dim, d_mlp]`` (``A·B``; :func:`grokinterp.models.first_layer_weight`). There is no
Fourier structure, so the spectra, key frequencies and overlaps are left out; the subspace
measures compare the column spaces in input space (rows = input coordinates, not centred; CKA
centres by definition), and for ``xor_cluster`` ``signal_energy`` is the share of the first
layer's energy on the two signal coordinates ``x₁, x₂`` (the rest is on the noise coordinates).

The pure tensor measures (spectra, overlaps, subspaces and their batched forms) are in
:mod:`grokinterp.analysis.transfer_measures`, re-exported here; this module finds E_W, maps the
measures over a run's checkpoints and summarises the result.

The analysis ``"transfer"`` applies to factorized-embedding runs and to runs that
:mod:`grokinterp.experiments.transfer` marked as GrokTransfer runs (``RunConfig.notes`` starting
with ``groktransfer {json}``, including the scratch and random-A baselines of a comparison).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grokinterp.analysis import fourier as F
from grokinterp.analysis.batch import CheckpointBatch
from grokinterp.analysis.curves import DEFAULT_THRESHOLD, first_crossing, grok_times
from grokinterp.analysis.registry import Measure, register_analysis

# The pure measures live in transfer_measures; re-exported so `transfer.X` keeps working.
from grokinterp.analysis.transfer_measures import (
    embedding_spectrum,
    energy_fraction,
    group_rows,
    key_frequency_masks,
    linear_cka,
    orthonormal_basis,
    overlap_score,
    overlap_test,
    principal_angles,
    signal_energy,
    subspace_energy,
    subspace_measures,
    task_indexing,
)
from grokinterp.config import GrokinterpError
from grokinterp.store import Run, load_tensors

NOTES_PREFIX = "groktransfer "

# fmt: off
__all__ = [
    "NOTES_PREFIX", "transfer_info", "transfer_applies", "weak_embedding", "group_rows",
    "embedding_spectrum", "energy_fraction", "overlap_score", "overlap_test", "orthonormal_basis",
    "principal_angles", "subspace_energy", "linear_cka", "signal_energy", "key_frequency_masks",
    "subspace_measures", "make_transfer", "transfer_summary", "SUMMARY_LABELS",
]
# fmt: on


# ---------------------------------------------------------------------------------------------
# Which runs, and where E_W comes from
# ---------------------------------------------------------------------------------------------


def transfer_info(run: Run) -> dict[str, Any] | None:
    """The GrokTransfer record in ``run.config.notes`` (``groktransfer {json}``), or None."""
    notes = run.config.notes or ""
    if not notes.startswith(NOTES_PREFIX):
        return None
    try:
        info = json.loads(notes[len(NOTES_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def transfer_applies(run: Run) -> str | None:
    """None if the ``transfer`` analysis applies to ``run``, else a one-line reason."""
    task, model = run.config.task.name, run.config.model.name
    if model != "mlp" and not task.startswith("mod_"):
        return f"transfer needs a modular-arithmetic task (mod_*) or an mlp, not {task!r}"
    if model not in ("transformer", "embed_mlp", "mlp"):
        return f"transfer needs a token model (transformer, embed_mlp) or an mlp, not {model!r}"
    if run.config.model.embedding != "factorized" and transfer_info(run) is None:
        return "transfer needs a GrokTransfer run (factorized embedding or groktransfer notes)"
    return None


def _embedding_from_file(path: Path) -> Tensor:
    tensors = load_tensors(path)
    for key in ("E_W", "embed.W_A", "embed.W_E"):
        if key in tensors:
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise GrokinterpError(f"{path} holds no E_W / embed.W_A / embed.W_E tensor")


def weak_embedding(run: Run, source: str | None = None) -> tuple[Tensor, str]:
    """``(E_W [d_vocab, r], description)`` for a GrokTransfer run.

    Looked up in order: ``source`` (a safetensors file, or ``RUN_DIR@STEP`` of a weak run); the
    ``weak_embedding`` file or ``weak_run``/``weak_step`` recorded in the run's notes; the
    ``embed.W_A`` of its ``train.init_state`` (for a random-A ablation that is the random A).
    """
    from grokinterp.models import first_layer_weight  # lazy: models import TransformerLens

    candidates: list[str] = []
    if source:
        candidates.append(str(source))
    info = transfer_info(run) or {}
    if info.get("weak_embedding"):
        candidates.append(str(info["weak_embedding"]))
    if info.get("weak_run") is not None and info.get("weak_step") is not None:
        candidates.append(f"{info['weak_run']}@{info['weak_step']}")
    if run.config.train.init_state:
        candidates.append(str(run.config.train.init_state))
    for cand in candidates:
        if "@" in cand and not Path(cand).is_file():
            path, _, step = cand.rpartition("@")
            if Path(path, "run.json").is_file() and step.isdigit():
                state = Run.open(path).load_state(int(step))
                return first_layer_weight(state).float(), f"weak run {path} at step {step}"
        elif Path(cand).is_file():
            return _embedding_from_file(Path(cand)).float(), cand
        if cand == source:
            raise GrokinterpError(
                f"weak_embedding={source!r}: not a safetensors file or RUN_DIR@STEP of a run"
            )
    raise GrokinterpError(
        f"cannot find the weak embedding E_W of {run.path}: pass weak_embedding=FILE or RUN@STEP"
    )


def _padded_angles(Q_W: Tensor, U_T: Tensor, r: int) -> Tensor:
    """:func:`principal_angles` of one checkpoint as float32 ``[r]``, NaN-padded when the
    target subspace is narrower than E_W's (as :func:`subspace_measures` pads its rows)."""
    angles = torch.full((r,), float("nan"), dtype=torch.float64)
    a = principal_angles(Q_W, U_T)
    angles[: len(a)] = a
    return angles.float()


# _ON_CPU: the batched paths do their small float64 SVDs/QRs on the CPU even from a GPU: faster
# there (H200, p = 113, 58 checkpoints: 0.42-0.55 s on the GPU, 0.27 s on its CPU).
def _key(E_W: Tensor, source: str) -> dict[str, str]:  # where E_W came from, and its digest
    raw = E_W.detach().cpu().contiguous().float().numpy().tobytes()
    return {"weak_source": source, "weak_digest": hashlib.sha256(raw).hexdigest()[:16]}


# ---------------------------------------------------------------------------------------------
# The registered analysis
# ---------------------------------------------------------------------------------------------


# Display names of transfer_summary's keys (the CLI and the report format the values).
SUMMARY_LABELS = {
    "kind": "run kind",
    "fit_step": "train accuracy reaches 95% (step)",
    "generalize_step": "test accuracy reaches 95% (step)",
    "analysis_step": "analysed at step (first ≥ 95% test, else last)",
    "generalized": "reaches 95% test accuracy",
    "fourier": "Fourier spectra (token inputs)",
    "cka_init": "linear CKA(E_W, target) at init",
    "cka": "linear CKA(E_W, target), analysed",
    "subspace_energy_init": "target energy in span(E_W) at init",
    "subspace_energy": "target energy in span(E_W), analysed",
    "max_angle_deg_init": "largest principal angle (deg) at init",
    "max_angle_deg": "largest principal angle (deg), analysed",
    "weak_signal_energy": "E_W energy on the signal coordinates x1, x2",
    "signal_energy_init": "target W_in energy on x1, x2 at init",
    "signal_energy": "target W_in energy on x1, x2, analysed",
    "weak_keys": "E_W key frequencies K_W",
    "init_keys": "target key frequencies at step 0",
    "target_keys": "target key frequencies K_T, analysed",
    "overlap": "overlap |K_T ∩ K_W| / |K_T|",
    "overlap_baseline": "overlap, permutation baseline",
    "overlap_p_value": "overlap p-value (permutations)",
    "overlap_p_exact": "overlap p-value (exact)",
    "overlap_init": "overlap at step 0",
    "energy_in_weak_keys_init": "target Fourier energy in K_W at init",
    "energy_in_weak_keys": "target Fourier energy in K_W, analysed",
    "energy_chance": "Fourier energy in K_W by chance",
}


def _freqs(mask: Tensor) -> list[int]:
    return [int(i) + 1 for i in torch.nonzero(mask > 0.5).flatten()]


def transfer_summary(
    run: Run,
    results: dict[str, Tensor],
    level: float = DEFAULT_THRESHOLD,
    n_perm: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline numbers of a ``transfer`` result (keys with or without the ``transfer/`` prefix).

    ``fit_step`` / ``generalize_step``: :func:`~grokinterp.analysis.curves.grok_times` at
    ``level``; ``analysis_step`` = the first *checkpoint* whose test accuracy is ≥ ``level``
    (else the last checkpoint, with ``generalized = False``), where the target's key frequencies
    are read and tested against E_W's with :func:`overlap_test`.
    """
    r = {k.removeprefix("transfer/"): v for k, v in results.items()}
    # `grokinterp analyze` passes the keys without "steps" and covers every checkpoint
    steps = [int(s) for s in r.get("steps", run.steps)]
    acc = {m["step"]: m["test_acc"] for m in run.metrics if m.get("test_acc") is not None}
    gen = first_crossing(steps, [acc.get(s) for s in steps], level)
    i = steps.index(gen) if gen is not None else len(steps) - 1
    info = transfer_info(run) or {}
    times = grok_times(run.metrics, level)
    out: dict[str, Any] = {
        "kind": info.get("kind", "transfer" if run.config.model.embedding == "factorized" else "?"),
        "fit_step": times.fit_step,
        "generalize_step": times.generalize_step,
        "analysis_step": steps[i],
        "generalized": gen is not None,
        "fourier": "spectrum" in r,
        "cka_init": float(r["cka"][0]),
        "cka": float(r["cka"][i]),
        "subspace_energy_init": float(r["subspace_energy"][0]),
        "subspace_energy": float(r["subspace_energy"][i]),
        "max_angle_deg_init": math.degrees(float(torch.nan_to_num(r["principal_angles"][0]).max())),
        "max_angle_deg": math.degrees(float(torch.nan_to_num(r["principal_angles"][i]).max())),
    }
    if "signal_energy" in r:
        out["weak_signal_energy"] = float(r["weak_signal_energy"][0])
        out["signal_energy_init"] = float(r["signal_energy"][0])
        out["signal_energy"] = float(r["signal_energy"][i])
    if not out["fourier"]:  # vector inputs (mlp): no Fourier spectra
        return out
    K = r["spectrum"].shape[1]
    weak_keys, init_keys = _freqs(r["weak_key_mask"][0]), _freqs(r["key_mask"][0])
    target_keys = _freqs(r["key_mask"][i])
    test = overlap_test(target_keys, weak_keys, K, n_perm=n_perm, seed=seed)
    return out | {
        "weak_keys": weak_keys,
        "init_keys": init_keys,
        "target_keys": target_keys,
        "overlap": test["score"],
        "overlap_baseline": test["baseline"],
        "overlap_p_value": test["p_value"],
        "overlap_p_exact": test["p_exact"],
        "overlap_init": overlap_score(init_keys, weak_keys),
        "energy_in_weak_keys_init": float(r["energy_in_weak_keys"][0]),
        "energy_in_weak_keys": float(r["energy_in_weak_keys"][i]),
        "energy_chance": len(weak_keys) / K,
    }


@register_analysis(
    "transfer", applies=transfer_applies, summarize=transfer_summary, labels=SUMMARY_LABELS
)
def make_transfer(run: Run, weak_embedding_source: str | None = None) -> Measure:
    """GrokTransfer: target embedding spectrum, key frequencies, overlap and subspaces vs E_W.

    Per checkpoint (``K`` = number of frequencies, ``r`` = E_W's width): ``spectrum [K]`` of the
    target's effective embedding, ``key_mask [K]`` (its key frequencies), ``gini``;
    ``weak_spectrum [K]`` and ``weak_key_mask [K]`` (E_W's, constant); ``overlap`` =
    ``|K_T ∩ K_W| / |K_T|`` and ``overlap_expected`` = ``|K_W| / K`` (chance level);
    ``energy_in_weak_keys`` (share of the target's Fourier energy in ``K_W``); ``principal_angles
    [r]``, ``subspace_energy`` and ``cka`` between the (token-centred) E_W and the target embedding.

    For an ``mlp`` (vector inputs) only ``principal_angles``, ``subspace_energy`` and ``cka``
    between E_W and the target's first layer ``W_in``, plus ``signal_energy`` and
    ``weak_signal_energy`` on ``xor_cluster`` (module docstring). Batched path:
    :func:`key_frequency_masks`, :func:`subspace_measures`; cache key: E_W's source and digest.
    """
    from grokinterp.models import effective_embedding  # lazy: models import TransformerLens

    if run.config.model.name == "mlp":
        return _first_layer_transfer(run, weak_embedding_source)
    task = run.task()
    p = int(task.p)
    E_W, source = weak_embedding(run, weak_embedding_source)
    W = group_rows(E_W, task.name, p)
    weak_spec = F.frequency_norms(W)
    K = weak_spec.numel()
    weak_keys = F.select_key_frequencies(weak_spec)
    weak_mask = torch.zeros(K)
    weak_mask[[k - 1 for k in weak_keys]] = 1
    Wc = W - W.mean(0, keepdim=True)
    Q_W = orthonormal_basis(Wc, r=min(W.shape[1], W.shape[0]))
    r = Q_W.shape[1]

    def at_step(step: int, state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
        T = group_rows(effective_embedding(state).cpu(), task.name, p)
        spec = F.frequency_norms(T)
        keys = F.select_key_frequencies(spec)
        mask = torch.zeros(K)
        mask[[k - 1 for k in keys]] = 1
        Tc = T - T.mean(0, keepdim=True)
        U_T = orthonormal_basis(Tc, r=min(r, *Tc.shape))
        return {
            "spectrum": spec.float(),
            "key_mask": mask,
            "gini": torch.tensor(F.gini(spec)),
            "weak_spectrum": weak_spec.float(),
            "weak_key_mask": weak_mask,
            "overlap": torch.tensor(overlap_score(keys, weak_keys)),
            "overlap_expected": torch.tensor(len(weak_keys) / K),
            "energy_in_weak_keys": torch.tensor(energy_fraction(spec, weak_keys)),
            "principal_angles": _padded_angles(Q_W, U_T, r),
            "subspace_energy": torch.tensor(subspace_energy(Tc, Wc)),
            "cka": torch.tensor(linear_cka(W, T)),
        }

    rows = task_indexing(task.name, p).a_tokens

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        T = effective_embedding(batch.params)[:, rows.to(batch.device)].double().cpu()  # _ON_CPU
        C, spec = len(T), F.frequency_norms(T)  # [C, K]
        mask, s2 = key_frequency_masks(spec).float(), spec.pow(2)
        in_weak = (s2 @ weak_mask.double()) / s2.sum(1).clamp_min(1e-300)  # 0 if no energy
        return {
            "spectrum": spec.float(),
            "key_mask": mask,
            "gini": F.gini_rows(spec).float(),
            "weak_spectrum": weak_spec.float().repeat(C, 1),
            "weak_key_mask": weak_mask.repeat(C, 1),
            "overlap": ((mask * weak_mask).sum(1) / mask.sum(1)).float(),
            "overlap_expected": torch.full((C,), len(weak_keys) / K),
            "energy_in_weak_keys": in_weak.float(),
            **subspace_measures(T, W, r, center=True),
        }

    return Measure(at_step=at_step, at_steps=at_steps, key=_key(E_W, source))


def _first_layer_transfer(run: Run, source: str | None) -> Measure:
    """The ``transfer`` analysis of an ``mlp``: E_W vs the target's first layer, no Fourier."""
    from grokinterp.models import first_layer_weight  # lazy: models import TransformerLens

    E_W, where = weak_embedding(run, source)
    E_W = E_W.double()
    d_in = int(run.task().input_dim)
    if E_W.ndim != 2 or E_W.shape[0] != d_in:
        raise GrokinterpError(
            f"E_W has shape {tuple(E_W.shape)}; the run's first layer takes {d_in} inputs"
        )
    xor = run.config.task.name == "xor_cluster"
    Q_W = orthonormal_basis(E_W, r=min(E_W.shape))
    r = Q_W.shape[1]
    weak_signal = signal_energy(E_W) if xor else 0.0

    def at_step(step: int, state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
        T = first_layer_weight(state).cpu().double()
        U_T = orthonormal_basis(T, r=min(r, *T.shape))
        out = {
            "principal_angles": _padded_angles(Q_W, U_T, r),
            "subspace_energy": torch.tensor(subspace_energy(T, E_W)),
            "cka": torch.tensor(linear_cka(E_W, T)),
        }
        if xor:
            out["signal_energy"] = torch.tensor(signal_energy(T))
            out["weak_signal_energy"] = torch.tensor(weak_signal)
        return out

    def at_steps(batch: CheckpointBatch) -> dict[str, Tensor]:
        T = first_layer_weight(batch.params).double().cpu()  # [C, input_dim, d_mlp]; _ON_CPU
        out = subspace_measures(T, E_W, r, center=False)
        if xor:
            total = T.pow(2).sum((-2, -1))
            share = torch.where(total > 0, T[:, :2].pow(2).sum((-2, -1)) / total, 0.0)
            out["signal_energy"] = share.float()
            out["weak_signal_energy"] = torch.full_like(out["cka"], weak_signal)
        return out

    return Measure(at_step=at_step, at_steps=at_steps, key=_key(E_W, where))
