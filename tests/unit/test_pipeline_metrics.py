"""Evaluation metrics of the training pipeline, against hand-computed values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_pipelines.evaluation import (
    calibration_bins,
    card_precision_at_k,
    evaluate,
    expected_calibration_error,
    ranking_metrics,
    roc_points,
)


def _example() -> dict[str, list[Any]]:
    # Day 1: cards A (fraud), B, C (fraud), D. Card scores are their highest transaction score:
    # A 0.9, B 0.8, C 0.7, D 0.1 -> top 2 = A, B -> 1 compromised of 2 -> 0.5.
    # Day 2: A (fraud again), C (fraud), E. Scores A 0.95, E 0.6, C 0.5 -> top 2 = A, E -> 0.5;
    # with the Handbook's removal, A (found on day 1) is out: top 2 = E, C -> 0.5 as well;
    # Day 3: A (fraud) 0.99, F 0.2 -> top 2 = A, F -> 0.5; with removal only F -> 0.0.
    return {
        "day": ["d1", "d1", "d1", "d1", "d1", "d2", "d2", "d2", "d3", "d3"],
        "card": ["A", "A", "B", "C", "D", "A", "C", "E", "A", "F"],
        "score": [0.9, 0.2, 0.8, 0.7, 0.1, 0.95, 0.5, 0.6, 0.99, 0.2],
        "fraud": [0, 1, 0, 1, 0, 1, 1, 0, 1, 0],
    }


def test_card_precision_hand_computed() -> None:
    ex = _example()
    mean, per_day = card_precision_at_k(ex["day"], ex["card"], ex["score"], ex["fraud"], k=2)
    assert per_day.to_dict() == {"d1": 0.5, "d2": 0.5, "d3": 0.5}
    assert mean == pytest.approx(0.5)


def test_card_precision_handbook_removes_detected_cards() -> None:
    ex = _example()
    mean, per_day = card_precision_at_k(
        ex["day"], ex["card"], ex["score"], ex["fraud"], k=2, remove_detected=True
    )
    assert per_day.to_dict() == {"d1": 0.5, "d2": 0.5, "d3": 0.0}
    assert mean == pytest.approx(1 / 3)


def test_ceiling_is_a_perfect_rankings_card_precision() -> None:
    # A perfect ranking on the example, k = 2: day 1 finds A and C (1.0); day 2 has only A and
    # C compromised, both found already, so E fills a slot and the other is empty (0.0); day 3
    # likewise (0.0). The model's own figure is 1/3 (see above), whatever the ceiling.
    ex = _example()
    start = pd.Timestamp("2018-08-08", tz="UTC")
    test = pd.DataFrame(
        {
            "timestamp": [start + pd.Timedelta(days=int(d[1]) - 1, hours=i) for i, d in enumerate(ex["day"])],
            "card_id": ex["card"],
            "is_fraud": ex["fraud"],
        }
    )
    figures = ranking_metrics(test, ex["score"], k=2)
    assert figures["card_precision_at_2"] == pytest.approx(1 / 3)
    assert figures["card_precision_at_2_ceiling"] == pytest.approx(1 / 3)
    # With C's fraud on day 2 a new card instead, a perfect ranking finds it: day 2 is 0.5.
    test.loc[6, "card_id"] = "G"
    figures = ranking_metrics(test, ex["score"], k=2)
    assert figures["card_precision_at_2_ceiling"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_card_precision_divides_by_k_and_breaks_ties_by_card() -> None:
    # Two cards only, k = 4: one hit -> 1/4 (empty slots are misses).
    mean, _ = card_precision_at_k(["d"] * 2, ["X", "Y"], [0.5, 0.4], [1, 0], k=4)
    assert mean == pytest.approx(0.25)
    # A tie between Y (fraud) and X (legit) at k = 1: X sorts first, so no hit.
    mean, _ = card_precision_at_k(["d"] * 2, ["Y", "X"], [0.5, 0.5], [1, 0], k=1)
    assert mean == 0.0
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(["d"], ["X"], [0.1], [0], k=0)


def test_calibration_bins_and_ece() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.05, 0.15, 0.85, 0.95])
    bins = calibration_bins(y, s, n_bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["mean_predicted"] == pytest.approx(0.1)
    assert bins[1]["observed_rate"] == 1.0
    assert expected_calibration_error(bins) == pytest.approx(0.1)


def test_evaluate_metrics_at_threshold() -> None:
    ex = _example()
    frame = pd.DataFrame(
        {
            "card_id": ex["card"],
            "timestamp": pd.to_datetime(
                ["2024-01-01 10:00"] * 5 + ["2024-01-02 10:00"] * 3 + ["2024-01-03 10:00"] * 2, utc=True
            ),
            "is_fraud": ex["fraud"],
        }
    )
    result = evaluate(frame, np.array(ex["score"]), threshold=0.65, k=2)
    m = result.metrics
    # Above 0.65: A 0.9 (legit row), B 0.8, C 0.7 (fraud), A 0.95 (fraud), A 0.99 (fraud).
    tn, fp = result.confusion[0]
    fn, tp = result.confusion[1]
    assert (tp, fp, fn, tn) == (3, 2, 2, 3)
    assert m["precision_at_threshold"] == pytest.approx(3 / 5)
    assert m["recall_at_threshold"] == pytest.approx(3 / 5)
    assert m["card_precision_at_2"] == pytest.approx(1 / 3)
    assert m["card_precision_at_2_all_cards"] == pytest.approx(0.5)
    assert 0 < m["auc_roc"] < 1
    assert 0 < m["average_precision"] <= 1
    assert m["brier_score"] == pytest.approx(np.mean((np.array(ex["score"]) - np.array(ex["fraud"])) ** 2))


def test_roc_points_are_bounded_and_finite() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5_000)
    s = rng.random(5_000)
    roc = roc_points(y, s, max_points=50)
    assert 2 <= len(roc["fpr"]) <= 50
    assert all(np.isfinite(roc["thresholds"]))
    assert roc_points(np.zeros(3), np.ones(3)) == {"fpr": [], "tpr": [], "thresholds": []}
