"""Batched ``tickets`` and ``transfer`` (Measure.at_steps) equal their per-checkpoint reference
(Measure.at_step / ``over_training(reference=True)``): masks, bits and counts exactly, float
measures within tolerance, on tiny runs (a plain token run, GrokTransfer token targets with and
without the embedding merge, a GrokTransfer XOR mlp), on the CPU and on CUDA."""

from __future__ import annotations

import pytest
import torch

from grokinterp.analysis import fourier as F
from grokinterp.analysis import over_training
from grokinterp.analysis import transfer as T
from grokinterp.analysis.registry import ANALYSES
from grokinterp.analysis.tickets import (
    _top_k_flat,
    keep_top,
    magnitude_mask,
    magnitude_masks,
    prunable_names,
)
from grokinterp.experiments import transfer as X
from grokinterp.training import train
from tests import test_transfer as TOK
from tests import test_transfer_xor as XOR
from tests.conftest import DEVICES
from tests.test_tickets_run import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("runs") / "tiny", progress=False)


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory):
    """A GrokTransfer token target (factorized throughout) and one merged at step 10."""
    tmp = tmp_path_factory.mktemp("tok")
    weak = train(TOK._cfg(TOK.WEAK), tmp / "weak", progress=False)
    plain = X.transfer(weak, TOK._cfg(TOK.TARGET), weak_at=10, out_dir=tmp / "a")
    merged = X.transfer(weak, TOK._cfg(TOK.TARGET), weak_at=10, out_dir=tmp / "b", merge_at=10)
    return plain, merged


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xor")
    weak = train(XOR._cfg(XOR.WEAK), tmp / "weak", progress=False)
    return X.transfer(weak, XOR._cfg(XOR.TARGET), weak_at=10, out_dir=tmp / "t", merge_at=10)


def _both(run, spec, device):
    ref = over_training(run, spec, progress=False, force=True, reference=True, device=device)
    new = over_training(run, spec, progress=False, force=True, device=device, chunk_size=3)
    assert list(ref) == list(new)
    return ref, new


# ------------------------------------------------------------------ tickets


def test_keep_top_breaks_ties_like_the_stable_sort():
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        n = int(torch.randint(1, 30, (1,), generator=g))
        x = torch.randint(0, 4, (3, n), generator=g).float()  # many ties
        x[0, : n // 3] = float("inf")
        for k in range(n + 1):
            want = torch.stack([_top_k_flat(row.double(), k) for row in x])
            assert torch.equal(keep_top(x, k), want), (x, k)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_masks_with_ties_equal_the_per_checkpoint_masks(scope):
    g = torch.Generator().manual_seed(1)
    shapes = {"embed.W_E": (12, 5), "blocks.0.mlp.W_in": (5, 7), "blocks.0.mlp.b_in": (7,)}
    # integer magnitudes with signs: |θ| ties everywhere, and exact zeros (a pruned network)
    stacked = {k: torch.randint(-3, 4, (4, *s), generator=g).float() for k, s in shapes.items()}
    names = prunable_names({k: v[0] for k, v in stacked.items()})
    assert names == ["blocks.0.mlp.W_in", "embed.W_E"]
    batched = magnitude_masks(stacked, names, 0.7, scope)  # flat [C, N], sorted names
    for c in range(4):
        want = magnitude_mask({k: v[c] for k, v in stacked.items()}, 0.7, scope)
        assert torch.equal(batched[c], torch.cat([want[k].reshape(-1) for k in names]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "params", [{}, {"scope": "layerwise", "sparsity": 0.3}, {"ref_step": 20, "sparsity": 0.0}]
)
def test_tickets_batched_equals_reference(tiny_run, device, params):
    ref, new = _both(tiny_run, {"tickets": params}, device)
    for k in ref:
        assert ref[k].dtype == new[k].dtype, k
        if k.endswith("kept_fraction"):  # count / size, correctly rounded in the batched path;
            assert torch.allclose(ref[k], new[k], rtol=1e-6, atol=0), k  # CUDA's mean: ±1 ulp
        else:  # masks, counts and the Jaccard ratios: exactly
            assert torch.equal(ref[k], new[k]), k
    s = ANALYSES["tickets"].summarize(tiny_run, new.of("tickets"))
    assert s["jaccard_ref_init"] == pytest.approx(float(new["tickets/jaccard_ref"][0]))
    assert s["ref_step"] == params.get("ref_step", tiny_run.steps[-1])


# ------------------------------------------------------------------ transfer


def test_key_frequency_masks_equal_select_key_frequencies():
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(9, generator=g, dtype=torch.float64) for _ in range(30)]
    rows += [torch.zeros(9), torch.tensor([3.0, 3, 1, 1, 0, 0, 0, 2, 2]), torch.ones(9)]
    rows += [torch.tensor([5.0, 0, 0, 5, 0, 0, 0, 0, 0])]
    masks = T.key_frequency_masks(torch.stack([r.double() for r in rows]))
    for r, m in zip(rows, masks, strict=True):
        assert [int(i) + 1 for i in torch.nonzero(m).flatten()] == F.select_key_frequencies(r)


def _close(ref, new, exact=()):
    for k in ref:
        assert ref[k].dtype == new[k].dtype and ref[k].shape == new[k].shape, k
        if k.split("/")[-1] in exact:
            assert torch.equal(ref[k], new[k]), k
        else:
            assert torch.allclose(ref[k], new[k], rtol=1e-5, atol=1e-6, equal_nan=True), k


@pytest.mark.parametrize("device", DEVICES)
def test_transfer_token_batched_equals_reference(token_runs, device):
    for run in token_runs:  # the merged run changes parameter layout at step 10
        ref, new = _both(run, ["transfer"], device)
        _close(ref, new, exact=("key_mask", "weak_key_mask", "weak_spectrum", "overlap"))
        s = ANALYSES["transfer"].summarize(run, new.of("transfer"))
        want = T.transfer_summary(run, ref.of("transfer"))
        assert s.keys() == want.keys()
        for k, v in want.items():  # floats: the tiny step-0 angles are rounding noise (~1e-6 deg)
            assert s[k] == (pytest.approx(v, rel=1e-4, abs=1e-4) if isinstance(v, float) else v), k
        assert s["subspace_energy_init"] == pytest.approx(1.0)  # E_T = E_W·B ⊂ span(E_W)


@pytest.mark.parametrize("device", DEVICES)
def test_transfer_xor_batched_equals_reference(xor_run, device):
    ref, new = _both(xor_run, ["transfer"], device)
    assert "transfer/spectrum" not in new and "transfer/signal_energy" in new
    _close(ref, new)
    assert float(new["transfer/principal_angles"][0].max()) < 1e-5  # A·B ⊂ span(A) at step 0
