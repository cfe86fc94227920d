"""Phase classification (Liu et al. 2022) on synthetic accuracy curves with known answers."""

import math

import numpy as np
import pytest

from grokinterp.analysis.phases import (
    PHASES,
    aggregate_phases,
    classify_metrics,
    classify_phase,
    first_sustained_step,
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
    t_train = expected_crossing(200)
    # comprehension: test follows train closely (center 300 → crossing ≈ 1.4× later)
    r = classify_phase(STEPS, train, sigmoid_curve(300))
    assert r.phase == "comprehension"
    assert (r.t_train, r.t_test) == (t_train, expected_crossing(300))
    assert r.delay == pytest.approx(expected_crossing(300) / t_train)
    # grokking: test rises ~10× later
    r = classify_phase(STEPS, train, sigmoid_curve(3000))
    assert r.phase == "grokking" and r.t_test == expected_crossing(3000)
    assert r.delay == pytest.approx(expected_crossing(3000) / t_train) and r.delay > 10
    # memorization: test plateaus at 60 %
    r = classify_phase(STEPS, train, sigmoid_curve(300, top=0.6))
    assert (r.phase, r.t_test, r.delay) == ("memorization", None, None)
    assert r.final_test_acc == pytest.approx(0.6, abs=1e-3)
    # confusion: train itself never gets above 70 %
    r = classify_phase(STEPS, sigmoid_curve(200, top=0.7), sigmoid_curve(300, top=0.5))
    assert (r.phase, r.t_train, r.t_test) == ("confusion", None, None)
    assert r.last_step == 5000


def test_ratio_boundary_and_threshold():
    steps = [0, 100, 200, 300, 400]
    train = [0.1, 0.95, 1.0, 1.0, 1.0]
    test = [0.1, 0.2, 0.5, 0.95, 1.0]  # t_test = 300 = 3·t_train
    assert classify_phase(steps, train, test, ratio=3.0).phase == "grokking"  # ≥ R is grokking
    assert classify_phase(steps, train, test, ratio=3.01).phase == "comprehension"
    # with a 0.99 threshold neither curve is "reached" until step 200 / 400
    r = classify_phase(steps, train, test, threshold=0.99)
    assert (r.t_train, r.t_test, r.delay) == (200, 400, 2.0)
    assert r.phase == "comprehension"


def test_sustain_ignores_a_single_spike():
    steps = [0, 10, 20, 30, 40, 50]
    train = [0.2, 1.0, 1.0, 1.0, 1.0, 1.0]
    test = [0.1, 0.2, 0.95, 0.3, 0.3, 0.3]
    assert classify_phase(steps, train, test).phase == "comprehension"  # t_test = 20 = 2·t_train
    r = classify_phase(steps, train, test, sustain=2)
    assert r.phase == "memorization" and r.t_train == 10
    # a streak still running when the budget ends counts from its start
    assert first_sustained_step(steps, [0, 0, 0, 0, 1, 1], 0.9, sustain=5) == 40


def test_test_reaching_while_train_never_does_is_comprehension_and_nan_never_counts():
    steps = [0, 1, 2]
    r = classify_phase(steps, [0.5, 0.8, 0.85], [0.1, 0.95, 0.97])
    assert (r.phase, r.t_train, r.t_test, r.delay) == ("comprehension", None, 1, None)
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
    delays = sorted(r.delay if hasattr(r, "delay") else r["delay"] for r in runs[:3] + runs[4:])
    assert agg.median_delay == pytest.approx((delays[1] + delays[2]) / 2)  # 4 defined delays
    assert agg.median_t_train == expected_crossing(200)


def test_aggregate_ties_empty_and_bad_phase():
    tie = aggregate_phases([{"phase": "memorization"}, {"phase": "grokking", "delay": 5.0}])
    assert tie.phase == "grokking"  # ties go to the earlier name of PHASES
    assert PHASES.index("grokking") < PHASES.index("memorization")
    empty = aggregate_phases([])
    assert empty.phase is None and empty.n_runs == 0 and empty.median_delay is None
    with pytest.raises(GrokinterpError, match="phase"):
        aggregate_phases([{"phase": "slingshot"}])
