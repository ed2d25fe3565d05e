"""The drift and score-distribution helpers of the shared core."""

from __future__ import annotations

import numpy as np
import pytest

from fraudcore.drift import SCORE_BINS, STABLE_PSI, ScoreHistogram, bin_counts, bin_edges, psi, sample_psi


def test_psi_is_zero_for_the_same_sample_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 50_000)
    assert sample_psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert sample_psi(reference, rng.normal(0, 1, 50_000)) < 0.01
    small, large = (
        sample_psi(reference, rng.normal(0.2, 1, 50_000)),
        sample_psi(reference, rng.normal(1, 1, 50_000)),
    )
    assert STABLE_PSI > small > 0.01
    assert large > 0.25


def test_psi_against_a_hand_computed_value() -> None:
    expected, actual = [50, 30, 20], [40, 30, 30]
    by_hand = (0.4 - 0.5) * np.log(0.4 / 0.5) + 0 + (0.3 - 0.2) * np.log(0.3 / 0.2)
    assert psi(expected, actual) == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="differ in bins"):
        psi([1, 2], [1, 2, 3])


def test_discrete_features_get_distinct_edges_and_every_value_a_bin() -> None:
    counts = np.array([0] * 70 + [1] * 20 + [2] * 9 + [7])
    edges = bin_edges(counts)
    assert list(edges) == [0.0, 1.0]
    assert list(bin_counts(counts, edges)) == [70, 20, 10]
    assert list(bin_counts([-5, 0, 0.5, 3, np.nan], edges)) == [2, 1, 1]


def test_score_histogram_predicts_the_alert_rate_precision_and_recall_at_any_threshold() -> None:
    rng = np.random.default_rng(1)
    scores = rng.beta(0.5, 8, 20_000)
    fraud = rng.random(20_000) < scores
    histogram = ScoreHistogram.from_dict(ScoreHistogram.of(scores, fraud).to_dict())
    for threshold in (0.0, 0.05, 0.5, 0.8, 1.0):  # on the bins' grid: exact
        alerts = scores >= threshold
        assert histogram.share_at_least(threshold) == pytest.approx(alerts.mean(), abs=1e-12)
        if alerts.any():
            assert histogram.precision_at_least(threshold) == pytest.approx(fraud[alerts].mean())
            assert histogram.recall_at_least(threshold) == pytest.approx(fraud[alerts].sum() / fraud.sum())
    # Inside a bin, its share in proportion: close to the truth.
    assert histogram.share_at_least(0.1234) == pytest.approx((scores >= 0.1234).mean(), rel=0.02)
    with pytest.raises(ValueError, match=f"{SCORE_BINS} bins"):
        ScoreHistogram.from_dict({"bins": 10, "counts": [1] * 10})
