"""Phase classification (Liu et al. 2022) on synthetic accuracy curves with known answers."""

import math

import numpy as np
import pytest

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, first_crossing
from grokinterp.analysis.phases import (
    PHASE_THRESHOLD,
    PHASES,
    RunPhase,
    aggregate_phases,
    classify_metrics,
    classify_phase,
)
from grokinterp.config import GrokinterpError

STEPS = list(range(0, 5001, 50))


def sigmoid_curve(center: float, width: float = 40.0, top: float = 1.0, floor: float = 0.02):
    """floor + (top - floor)·σ((s - center)/width) on STEPS; never reaches 0.9 if top < 0.9."""
    s = np.asarray(STEPS, dtype=float)
    return list(floor + (top - floor) / (1 + np.exp(-(s - center) / width)))


def expected_crossing(center: float, width: float = 40.0, floor: float = 0.02, thr: float = 0.9):
    """First step of STEPS at which the sigmoid curve is ≥ thr, solved analytically."""
    # floor + (1-floor)σ(z) = thr  ⇔  z = logit((thr-floor)/(1-floor))
    q = (thr - floor) / (1 - floor)
    s_star = center + width * math.log(q / (1 - q))
    return next(s for s in STEPS if s >= s_star - 1e-9)


def test_each_phase_on_sigmoid_curves_with_analytic_crossings():
    train = sigmoid_curve(200)
    fit = expected_crossing(200)
    # comprehension: test follows train closely (center 300 → crossing ≈ 1.4× later)
    r = classify_phase(STEPS, train, sigmoid_curve(300))
    assert r.phase == "comprehension"
    assert (r.fit_step, r.generalize_step) == (fit, expected_crossing(300))
    assert r.ratio == pytest.approx(expected_crossing(300) / fit)
    assert r.delay == expected_crossing(300) - fit  # in steps
    # grokking: test rises ~10× later
    r = classify_phase(STEPS, train, sigmoid_curve(3000))
    assert r.phase == "grokking" and r.generalize_step == expected_crossing(3000)
    assert r.ratio == pytest.approx(expected_crossing(3000) / fit) and r.ratio > 10
    # memorization: test plateaus at 60 %
    r = classify_phase(STEPS, train, sigmoid_curve(300, top=0.6))
    assert (r.phase, r.generalize_step, r.delay, r.ratio) == ("memorization", None, None, None)
    assert r.final_test_acc == pytest.approx(0.6, abs=1e-3)
    # confusion: train itself never gets above 70 %
    r = classify_phase(STEPS, sigmoid_curve(200, top=0.7), sigmoid_curve(300, top=0.5))
    assert (r.phase, r.fit_step, r.generalize_step) == ("confusion", None, None)
    assert r.last_step == 5000


def test_ratio_boundary_and_threshold():
    steps = [0, 100, 200, 300, 400]
    train = [0.1, 0.95, 1.0, 1.0, 1.0]
    test = [0.1, 0.2, 0.5, 0.95, 1.0]  # generalize_step = 300 = 3·fit_step
    assert classify_phase(steps, train, test, ratio=3.0).phase == "grokking"  # ≥ R is grokking
    assert classify_phase(steps, train, test, ratio=3.01).phase == "comprehension"
    # with a 0.99 threshold neither curve is "reached" until step 200 / 400
    r = classify_phase(steps, train, test, threshold=0.99)
    assert (r.fit_step, r.generalize_step, r.delay, r.ratio) == (200, 400, 200, 2.0)
    assert r.phase == "comprehension"


def test_sustain_ignores_a_single_spike():
    steps = [0, 10, 20, 30, 40, 50]
    train = [0.2, 1.0, 1.0, 1.0, 1.0, 1.0]
    test = [0.1, 0.2, 0.95, 0.3, 0.3, 0.3]
    assert classify_phase(steps, train, test).phase == "comprehension"  # 20 = 2·fit_step
    r = classify_phase(steps, train, test, sustain=2)
    assert r.phase == "memorization" and r.fit_step == 10
    # a streak still running when the budget ends counts from its start (curves.first_crossing)
    assert first_crossing(steps, [0, 0, 0, 0, 1, 1], 0.9, sustain=5) == 40
    r = classify_phase(steps, [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1], sustain=5)
    assert (r.phase, r.fit_step, r.generalize_step) == ("comprehension", 40, 50)


def test_test_reaching_while_train_never_does_is_comprehension_and_nan_never_counts():
    steps = [0, 1, 2]
    r = classify_phase(steps, [0.5, 0.8, 0.85], [0.1, 0.95, 0.97])
    assert (r.phase, r.fit_step, r.generalize_step, r.delay) == ("comprehension", None, 1, None)
    r = classify_phase(steps, [0.1, float("nan"), float("nan")], [0.1, float("nan"), 0.0])
    assert r.phase == "confusion"


def test_classify_metrics_reads_run_rows():
    rows = [
        {"step": s, "train_acc": a, "test_acc": b, "train_loss": 1.0}
        for s, a, b in zip(STEPS, sigmoid_curve(200), sigmoid_curve(3000), strict=True)
    ]
    rows.insert(3, {"step": 125, "other": 1.0})  # rows without accuracies are ignored
    assert classify_metrics(rows) == classify_phase(STEPS, sigmoid_curve(200), sigmoid_curve(3000))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=[0, 1], train_acc=[0.1], test_acc=[0.1, 0.2]), "one length"),
        (dict(steps=[], train_acc=[], test_acc=[]), "empty"),
        (dict(steps=[0, 0], train_acc=[0, 1], test_acc=[0, 1]), "strictly increasing"),
        (dict(steps=[0], train_acc=[1], test_acc=[1], threshold=0), "threshold"),
        (dict(steps=[0], train_acc=[1], test_acc=[1], threshold=1.5), "threshold"),
        (dict(steps=[0], train_acc=[1], test_acc=[1], ratio=0.5), "ratio"),
        (dict(steps=[0], train_acc=[1], test_acc=[1], sustain=0), "sustain"),
    ],
)
def test_bad_input_raises_a_named_error(kwargs, match):
    with pytest.raises(GrokinterpError, match=match):
        classify_phase(**kwargs)
    with pytest.raises(GrokinterpError, match="no rows"):
        classify_metrics([{"step": 0}])


def test_aggregate_fractions_majority_and_median_delay():
    train = sigmoid_curve(200)
    runs = [
        classify_phase(STEPS, train, sigmoid_curve(c)) for c in (2000, 3000, 4000)
    ]  # grokking ×3
    runs.append(classify_phase(STEPS, train, sigmoid_curve(300, top=0.5)))  # memorization
    runs.append(classify_phase(STEPS, train, sigmoid_curve(250)).to_dict())  # comprehension
    agg = aggregate_phases(runs)
    assert agg.n_runs == 5 and agg.phase == "grokking"
    assert agg.fractions == {
        "comprehension": 0.2,
        "grokking": 0.6,
        "memorization": 0.2,
        "confusion": 0.0,
    }
    defined = [r if isinstance(r, RunPhase) else RunPhase.from_dict(r) for r in runs[:3] + runs[4:]]
    ratios, delays = sorted(r.ratio for r in defined), sorted(r.delay for r in defined)
    assert agg.median_ratio == pytest.approx((ratios[1] + ratios[2]) / 2)  # 4 defined ratios
    assert agg.median_delay == pytest.approx((delays[1] + delays[2]) / 2)  # in steps
    assert agg.median_fit_step == expected_crossing(200)
    gens = sorted(r.generalize_step for r in defined)
    assert agg.median_generalize_step == pytest.approx((gens[1] + gens[2]) / 2)


def test_aggregate_ties_empty_and_bad_phase():
    tie = aggregate_phases([{"phase": "memorization"}, {"phase": "grokking", "ratio": 5.0}])
    assert tie.phase == "grokking"  # ties go to the earlier name of PHASES
    assert PHASES.index("grokking") < PHASES.index("memorization")
    empty = aggregate_phases([])
    assert empty.phase is None and empty.n_runs == 0 and empty.median_ratio is None
    with pytest.raises(GrokinterpError, match="phase"):
        aggregate_phases([{"phase": "slingshot"}])


def test_sweep_json_runs_of_either_vocabulary_are_read():
    """sweep.json before the one vocabulary: t_train, t_test and delay = their ratio."""
    new = classify_phase([0, 100, 200, 300, 400], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]).to_dict()
    assert {"fit_step", "generalize_step", "delay", "ratio"} <= set(new)
    assert not {"t_train", "t_test"} & set(new)
    last = {k: new[k] for k in ("final_train_acc", "final_test_acc", "last_step")}
    old = {"phase": "grokking", "t_train": 100, "t_test": 400, "delay": 4.0, **last}
    assert RunPhase.from_dict(old) == RunPhase.from_dict(new) == RunPhase(**new)
    r = RunPhase.from_dict(old)
    assert (r.fit_step, r.generalize_step, r.delay, r.ratio) == (100, 400, 300, 4.0)
    agg = aggregate_phases([old, new, {"phase": "memorization", "t_train": 50, "t_test": None}])
    assert (agg.median_ratio, agg.median_delay, agg.median_fit_step) == (4.0, 300.0, 100.0)
    assert agg.median_generalize_step == 400.0 and agg.phase == "grokking"


def test_phase_threshold_is_liu_et_al_s_90_percent_not_the_report_s():
    """The phase rule keeps its own documented level (analysis.phases docstring)."""
    assert PHASE_THRESHOLD == 0.9 and DEFAULT_THRESHOLD == 0.95
    steps = [0, 10, 20]
    r = classify_phase(steps, [0.5, 0.92, 1.0], [0.1, 0.5, 0.92])  # 92 %: reached at 90, not 95
    assert (r.fit_step, r.generalize_step) == (10, 20)
    r = classify_phase(steps, [0.5, 0.92, 1.0], [0.1, 0.5, 0.92], threshold=DEFAULT_THRESHOLD)
    assert (r.phase, r.fit_step, r.generalize_step) == ("memorization", 20, None)
