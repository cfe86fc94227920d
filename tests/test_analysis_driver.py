"""The analysis driver (analysis/registry.py): chunk sizing and what an interruption keeps."""

from __future__ import annotations

import pytest
import torch

from grokinterp.analysis import over_training
from grokinterp.analysis.registry import ANALYSES, Measure, _chunk_size, cache_info
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
