"""Loss-spike detection (Thilak et al. 2022's Slingshot) on planted curves, and the analysis."""

from __future__ import annotations

import math

import pytest
import torch

from grokinterp.analysis.slingshot import Spike, loss_spikes, spike_norms
from grokinterp.config import GrokinterpError

STEPS = list(range(0, 5001, 10))


def smooth_loss(seed: int = 0, noise: float = 0.05) -> list[float]:
    """A training loss falling from ~2 to ~1e-7 (terminal phase), with log-normal noise."""
    g = torch.Generator().manual_seed(seed)
    eps = (torch.randn(len(STEPS), generator=g) * noise).tolist()
    return [(2 * math.exp(-s / 250) + 1e-7) * 10**e for s, e in zip(STEPS, eps, strict=True)]


def plant(loss: list[float], spikes: dict[int, float], width: int = 1) -> list[float]:
    """Multiply the loss at each planted step by its factor, with a smaller shoulder of
    ``width`` evaluations on each side (a Slingshot spike lasts a few evaluations)."""
    out = list(loss)
    for step, factor in spikes.items():
        i = STEPS.index(step)
        out[i] *= factor
        for w in range(1, width + 1):
            out[i - w] *= factor ** (0.5 / w)
            out[i + w] *= factor ** (0.3 / w)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_spikes_are_found_exactly(seed):
    planted = {900: 1e4, 1700: 300.0, 2750: 1e6, 4100: 50.0}
    found = loss_spikes(STEPS, plant(smooth_loss(seed), planted, width=2))
    assert [s.step for s in found] == sorted(planted)
    for s in found:
        assert s.start_step <= s.step <= s.end_step
        if planted[s.step] >= 1e4:  # shoulders a decade above the baseline belong to the spike
            assert s.start_step < s.step < s.end_step
        assert s.ratio == pytest.approx(planted[s.step], rel=0.5)  # vs the pre-spike median
    # single-evaluation spikes too
    assert [s.step for s in loss_spikes(STEPS, plant(smooth_loss(seed), planted))] == sorted(
        planted
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smooth_curves_have_no_spike(seed):
    assert loss_spikes(STEPS, smooth_loss(seed)) == []
    # a steady fall of many decades, and noise 5x larger, are not spikes either
    assert loss_spikes(STEPS, [10 ** (-s / 500) for s in STEPS]) == []
    assert loss_spikes(STEPS, smooth_loss(seed, noise=0.25)) == []
    # a factor 5 jump is below the default one decade
    assert loss_spikes(STEPS, plant(smooth_loss(seed), {2000: 5.0})) == []
    assert [
        s.step for s in loss_spikes(STEPS, plant(smooth_loss(seed), {2000: 5.0}), min_ratio=3)
    ] == [2000]


def test_spike_norms_relate_the_last_layer():
    # Thilak et al.: the norm grows in the stable phase, the loss spikes, the norm plateaus
    spikes = [Spike(1000, 990, 1010, 1.0, 1e-6, 1e6), Spike(3000, 2990, 3020, 1.0, 1e-6, 1e6)]
    steps = list(range(0, 5001, 500))
    norms = [1.0, 1.5, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    rel = spike_norms(spikes, steps, norms)
    assert rel[0] == {"norm_before": 1.5, "norm_after": 2.0, "growth": 1.5}
    assert rel[1] == {"norm_before": 3.0, "norm_after": 4.0, "growth": 1.5}  # 3.0 / 2.0 at 1010


def test_bad_input_is_one_line_error():
    with pytest.raises(GrokinterpError, match="one length"):
        loss_spikes([0, 1], [1.0])
    with pytest.raises(GrokinterpError, match="increasing"):
        loss_spikes([0, 0, 1], [1.0, 1.0, 1.0])
    with pytest.raises(GrokinterpError, match="> 0"):
        loss_spikes([0, 1, 2, 3, 4], [1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(GrokinterpError, match="min_ratio"):
        loss_spikes([0, 1], [1.0, 1.0], min_ratio=1)
    assert loss_spikes([0, 1], [1.0, float("nan")]) == []


def test_slingshot_analysis_over_a_run(tmp_path):
    from grokinterp.analysis import applicable, over_training
    from grokinterp.analysis.slingshot import slingshot_summary
    from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
    from grokinterp.training import train

    cfg = RunConfig(
        task=TaskConfig("mod_add", {"p": 7, "train_fraction": 0.5}),
        model=ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16),
        train=TrainConfig(
            steps=6, optimizer="adam", weight_decay=0.0, checkpoint_every=2, eval_every=1
        ),
        name="tiny-adam",
    )
    run = train(cfg, tmp_path / "run", progress=False)
    assert applicable(run)["slingshot"] is None
    ref = over_training(run, ["slingshot"], progress=False, reference=True, force=True)
    new = over_training(run, ["slingshot"], progress=False, force=True)
    assert torch.allclose(ref["slingshot/last_layer_norm"], new["slingshot/last_layer_norm"])
    w = run.load_state(run.steps[-1])["unembed.W_U"]
    assert float(new["slingshot/last_layer_norm"][-1]) == pytest.approx(float(w.norm()), rel=1e-6)
    s = slingshot_summary(run, new.of("slingshot"))
    assert s["n_spikes"] == len(s["spike_steps"]) == len(s["norm_growth_before_spike"])
    assert s["last_layer_norm_final"] == pytest.approx(float(w.norm()), rel=1e-6)


def test_report_sections_show_rqi_and_slingshot(tmp_path):
    from grokinterp.analysis import over_training
    from grokinterp.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
    from grokinterp.report.html import build_report
    from grokinterp.report.sections import dynamics as SD
    from grokinterp.report.sections.base import AnalysisData, RunData
    from grokinterp.training import train

    cfg = RunConfig(
        task=TaskConfig("mod_add", {"p": 7, "train_fraction": 0.5}),
        model=ModelConfig(name="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16),
        train=TrainConfig(steps=4, checkpoint_every=2, checkpoint_log_steps=0, eval_every=1),
        name="tiny-report",
    )
    run = train(cfg, tmp_path / "run", progress=False)
    over_training(run, ["rqi", "slingshot"], progress=False)
    sections = {s.key: s for s in build_report(run, only=["rqi", "slingshot"]).sections}
    for key in ("rqi", "slingshot"):
        assert sections[key].status == "ok" and sections[key].figures, sections[key].notes
    assert "ring RQI" in sections["rqi"].reading
    assert "spike" in sections["slingshot"].reading
    # a planted spike in the metrics is read and placed before generalisation
    metrics = [
        {"step": s, "train_loss": 1e-6 * (1e4 if s == 60 else 1), "train_acc": 1.0, "test_acc": 0.0}
        for s in range(0, 100, 10)
    ]
    metrics += [{"step": 100, "train_loss": 1e-6, "train_acc": 1.0, "test_acc": 1.0}]
    rd = RunData(run=None, label="x", summary={})  # type: ignore[arg-type]
    rd._metrics = metrics
    res = {
        "steps": torch.tensor([0, 50, 100]),
        "slingshot/last_layer_norm": torch.tensor([1.0, 2, 2]),
    }
    text = SD.slingshot_reading(AnalysisData("slingshot", "ok", res), rd)
    assert "spikes 1 time (steps 60)" in text and "40 steps after the spike at step 60" in text
    assert "Before 1 of 1 spikes the last-layer norm had grown" in text
