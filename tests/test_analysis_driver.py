"""The analysis driver (analysis/registry.py): chunk sizing, what an interruption keeps, and
checkpoints read once and stacked once for all the analyses of one call."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis import registry as R
from grokinterp.analysis.registry import ANALYSES, Analysis, Measure, _chunk_size, cache_info
from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from grokinterp.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    m = ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16)
    t = TrainConfig(steps=20, lr=3e-3, eval_every=4, checkpoint_every=4, checkpoint_log_steps=0)
    cfg = RunConfig(task=TaskConfig("mod_add", {"p": 7, "train_fraction": 0.5}), model=m, train=t)
    return train(cfg, tmp_path_factory.mktemp("driver") / "run", progress=False)


def _noop(step, state, model):
    return {}


def test_chunk_size_follows_the_memory_budget():
    cpu = torch.device("cpu")
    assert _chunk_size(Measure(at_step=_noop), cpu) == 8  # the CPU default
    assert _chunk_size(Measure(at_step=_noop, chunk=3), cpu) == 3  # the analysis's own cap
    # 136 MB per checkpoint (fourier at p = 113) fits once in the 256 MB CPU budget
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=136 << 20), cpu) == 1
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=40 << 20), cpu) == 6
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=1 << 40), cpu) == 1


def test_chunk_size_lifts_the_default_cap_for_analyses_that_state_their_memory(monkeypatch):
    cuda = torch.device("cuda")
    free = {"bytes": 80 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 141 << 30))
    assert _chunk_size(Measure(at_step=_noop), cuda) == 64  # unchanged without bytes
    # weight-only (1 MiB per checkpoint): the 1024 cap, not 64, and the analysis's own cap rules
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=1 << 20), cuda) == 1024
    small = Measure(at_step=_noop, bytes_per_checkpoint=1 << 20, chunk=300)
    assert _chunk_size(small, cuda) == 300
    # fourier at p = 113 (136 MiB): the 16 GiB budget gives 120, more than the old 64
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=136 << 20), cuda) == 120
    free["bytes"] = 1 << 30  # a busy GPU: a quarter of the free memory, 256 MiB
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=1 << 20), cuda) == 256
    assert R._shared_budget(cuda) == 128 << 20  # the shared stack: an eighth of the free memory
    free["bytes"] = 80 << 30
    assert R._shared_budget(cuda) == 4 << 30
    cpu = torch.device("cpu")
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=1 << 10), cpu) == 8
    assert _chunk_size(Measure(at_step=_noop, bytes_per_checkpoint=64 << 20), cpu) == 4


def _weight_sums(batch):
    """Per checkpoint and parameter tensor: the sum of its weights (float64; exact to compare)."""
    return {k: v.double().flatten(1).sum(1) for k, v in batch.params.items()}


def _writes_into_weights(batch):
    out = _weight_sums(batch)
    for v in batch.params.values():
        v.mul_(-1.0)  # a careless analysis: must not change what the next one reads
    return out


@contextmanager
def _analyses(**measures):
    """Temporarily registered analyses ``name -> Measure`` (factories that read no state)."""
    for name, m in measures.items():
        ANALYSES[name] = Analysis(name, lambda run, _m=m, **kw: _m, lambda run: None)
    try:
        yield list(measures)
    finally:
        for name in measures:
            dict.pop(ANALYSES, name)


def _sums(chunk=None, bytes_=None, fn=_weight_sums):
    return Measure(at_step=_noop, at_steps=fn, chunk=chunk, bytes_per_checkpoint=bytes_)


def _count_loads(run, monkeypatch):
    counts = Counter()
    load = type(run).load_state

    def counted(self, step):
        counts[step] += 1
        return load(self, step)

    monkeypatch.setattr(type(run), "load_state", counted)
    return counts


def _fresh(run, name):
    """``name`` computed alone, from the disk."""
    return over_training(run, [name], progress=False, force=True, device="cpu")


def test_checkpoints_are_read_once_for_all_analyses(run, monkeypatch):
    measures = {"t_c2": _sums(2), "t_c3": _sums(3), "t_big": _sums(bytes_=1), "t_dflt": _sums()}
    with _analyses(**measures) as names:
        counts = _count_loads(run, monkeypatch)
        alone = over_training(run, names[:1], progress=False, force=True, device="cpu")
        one = sum(counts.values())
        counts.clear()
        res = over_training(run, names, progress=False, force=True, device="cpu")
        # 4 analyses chunked 2, 3, 64 and 8 read what one reads: each checkpoint once (and the
        # first once more, for the template model)
        assert sum(counts.values()) == one == len(run.steps) + 1
        assert all(counts[s] == 1 for s in run.steps[1:])
        monkeypatch.undo()
        for name in names:
            for k, v in _fresh(run, name).of(name).items():
                assert torch.equal(res[f"{name}/{k}"], v), (name, k)
        assert torch.equal(res["t_c2/embed.W_E"], alone["t_c2/embed.W_E"])


def test_shared_checkpoints_give_the_results_of_separate_calls(run, monkeypatch):
    real = ["fourier", "rqi", "slingshot", "tickets", "norms"]
    # t_c4 goes first and builds the shared stack; the real analyses then read it in chunks of 5
    # (views). Same chunks alone: the batch size may change float32 results in the last bits.
    monkeypatch.setattr(R, "DEFAULT_CHUNK", {"cpu": 5})
    monkeypatch.setattr(R, "MAX_CHUNK", {"cpu": 5})
    with _analyses(t_c4=_sums(4)) as names:
        res = over_training(run, names + real, progress=False, force=True, device="cpu")
    for name in real:
        alone = _fresh(run, name).of(name)
        assert alone and alone.keys() == res.of(name).keys()
        for k, v in alone.items():
            assert torch.equal(res[f"{name}/{k}"], v), (name, k)


def test_over_budget_and_in_place_writes_still_give_the_right_results(run, monkeypatch):
    measures = {
        "t_c2": _sums(2),
        "t_bad": _sums(2, fn=_writes_into_weights),  # writes into the shared stack
        "t_c3": _sums(3),
        "t_c5": _sums(5),
    }
    with _analyses(**measures) as names:
        want = {n: _fresh(run, n).of(n) for n in names}
        for budget in (1 << 40, 0):  # everything shared; nothing shared
            monkeypatch.setattr(R, "CPU_SHARED_BYTES", budget)
            counts = _count_loads(run, monkeypatch)
            res = over_training(run, names, progress=False, force=True, device="cpu")
            for n in names:
                for k, v in want[n].items():
                    assert torch.equal(res[f"{n}/{k}"], v), (budget, n, k)
            if budget == 0:  # nothing shared: every analysis reads every checkpoint (+ the
                # template model's and the one read that found the stack too big)
                assert sum(counts.values()) == len(names) * len(run.steps) + 2
            monkeypatch.undo()


def test_an_interrupted_analysis_keeps_the_finished_chunks(run):
    orig = ANALYSES["fourier"].factory
    calls = {"n": 0}

    def failing(r, **kw):
        measure = orig(r, **kw)
        inner = measure.at_steps

        def at_steps(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # Ctrl-C during the third chunk
            return inner(batch)

        measure.at_steps = at_steps
        return measure

    object.__setattr__(ANALYSES["fourier"], "factory", failing)
    try:
        with pytest.raises(KeyboardInterrupt):
            over_training(run, ["fourier"], progress=False, chunk_size=2, force=True)
    finally:
        object.__setattr__(ANALYSES["fourier"], "factory", orig)
    assert cache_info(run, "fourier")["steps"] == run.steps[:4]  # two chunks of two
    again = over_training(run, ["fourier"], progress=False, chunk_size=2)
    assert again.computed["fourier"] == len(run.steps) - 4  # only the rest is computed
    full = over_training(run, ["fourier"], progress=False, force=True)
    for k in ("restricted_loss", "embed_gini", "neuron_freq"):
        torch.testing.assert_close(again[f"fourier/{k}"], full[f"fourier/{k}"])
