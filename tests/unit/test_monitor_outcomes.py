"""The model monitor's live metrics, computed from outcomes (decisions whose label is known)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from fraud_monitor.drift import DriftWindow, Reference
from fraud_monitor.outcomes import DayCounts, Outcome, WindowMetrics, average_precision
from fraudcore.drift import SCORE_BINS, ScoreHistogram, feature_reference
from fraudcore.features import DAY_US, MODEL_FEATURES


def _outcome(
    score: float, fraud: bool, card: str = "C1", day: int = 0, alerted: bool | None = None
) -> Outcome:
    return Outcome("v1", day * DAY_US, card, score, score >= 0.5 if alerted is None else alerted, fraud)


def test_precision_recall_and_alert_rate_of_a_window() -> None:
    day = DayCounts()
    for o in [_outcome(0.9, True), _outcome(0.7, False), _outcome(0.2, True), _outcome(0.1, False)]:
        day.add(o)
    m = WindowMetrics.of([day])
    assert (m.decisions, m.precision, m.recall, m.alert_rate) == (4, 0.5, 0.5, 0.5)
    empty = WindowMetrics.of([])
    assert empty.decisions == 0
    assert math.isnan(empty.precision)


def test_average_precision_matches_sklearn_on_scores_at_bin_resolution() -> None:
    rng = np.random.default_rng(3)
    scores = (rng.integers(0, SCORE_BINS, 5_000) + 0.5) / SCORE_BINS  # one score per bin: no ties within
    fraud = rng.random(5_000) < scores**2
    day = DayCounts()
    for s, f in zip(scores, fraud, strict=True):
        day.add(_outcome(float(s), bool(f), card=f"C{rng.integers(1000)}"))
    assert WindowMetrics.of([day]).average_precision == pytest.approx(average_precision_score(fraud, scores))
    assert math.isnan(average_precision(np.zeros(SCORE_BINS), np.ones(SCORE_BINS)))


def test_card_precision_at_100_counts_the_days_highest_scored_cards() -> None:
    day = DayCounts()
    for i in range(150):  # cards 0-149, card i scored i/150; the top 100 are 50-149
        day.add(_outcome(i / 150, fraud=i % 4 == 0, card=f"C{i:03d}"))
    day.add(_outcome(0.0, fraud=False, card="C149"))  # a card's highest score counts
    assert day.card_precision() == pytest.approx(sum(i % 4 == 0 for i in range(50, 150)) / 100)


def test_drift_window_psi_is_small_for_the_reference_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(5)
    training = {name: rng.gamma(2.0, 10.0, 20_000) for name in MODEL_FEATURES}
    scores = rng.beta(0.5, 8, 20_000)
    reference = Reference.from_metadata(
        {
            "feature_distribution": feature_reference(training),
            "score_distribution": ScoreHistogram.of(scores).to_dict(),
        }
    )
    same, shifted = DriftWindow(3_000), DriftWindow(3_000)
    for _ in range(3_000):
        row = {name: float(rng.gamma(2.0, 10.0)) for name in MODEL_FEATURES}
        same.add(row, float(rng.beta(0.5, 8)))
        shifted.add({**row, "amount": row["amount"] * 3}, float(rng.beta(2, 2)))
    assert len(same.rows) == 3_000
    stable = same.psi(reference)
    assert set(stable) == {*MODEL_FEATURES, "score"}
    assert max(stable.values()) < 0.05
    drifted = shifted.psi(reference)
    assert drifted["amount"] > 0.25
    assert drifted["score"] > 0.25
    assert drifted["card_tx_count_1d"] < 0.05
    assert DriftWindow(3_000).psi(reference) == {}  # too few decisions yet


def test_the_skew_check_counts_stale_card_state_and_accepts_terminal_values_at_their_watermark() -> None:
    from fraud_monitor.skew import compare
    from fraudcore.features import TERMINAL_FEATURES, offline_features
    from tests.helpers import simulated

    tx, lab = simulated(days=30, customers=80, terminals=60)
    served = offline_features(tx, lab).tail(400)

    def decision(row: object, **features: float) -> dict[str, object]:
        values = {name: float(getattr(row, name)) for name in MODEL_FEATURES}
        return {
            "transaction_id": row.transaction_id,  # type: ignore[attr-defined]
            "card_id": row.card_id,  # type: ignore[attr-defined]
            "features_fallback": False,
            "features": {**values, **features},
        }

    rows = list(served.itertuples())
    counts = served["card_tx_count_1d"].to_numpy(np.float64)
    decisions = [decision(r) for r in rows[:300]]
    stale = [decision(r, card_tx_count_1d=counts[300 + i] - 1) for i, r in enumerate(rows[300:350])]
    decisions += stale  # a card state that missed a payment
    decisions += [
        decision(r, **dict.fromkeys(TERMINAL_FEATURES, -1.0)) for r in rows[350:360]
    ]  # wrong terminal
    decisions += [{**decision(r), "features_fallback": True} for r in rows[360:380]]
    decisions += [{**decision(r), "transaction_id": f"not-yet-{i}"} for i, r in enumerate(rows[380:])]
    report = compare(decisions, tx, lab, delay_days=7)
    assert (report.sampled, report.fallbacks, report.not_archived, report.checked) == (400, 20, 20, 360)
    assert report.skewed == 50
    assert report.mismatches["card_tx_count_1d"] == 50
    assert report.mismatches["amount"] == 0
    assert report.terminal_skewed == 10
    assert report.skew_rate == pytest.approx(50 / 360)


def test_terminal_values_of_an_earlier_active_hour_are_at_their_watermark_not_skew() -> None:
    from fraud_monitor.skew import compare
    from fraudcore.features import (
        TERMINAL_FEATURES,
        TERMINAL_VALUES_TTL_HOURS,
        hour_of,
        offline_features,
        offline_terminal_features,
        to_us,
    )
    from tests.helpers import simulated

    tx, lab = simulated(days=30, customers=80, terminals=60)
    rows = offline_features(tx, lab).tail(300).reset_index(drop=True)
    hours = hour_of(to_us(rows["timestamp"]))
    # Until a transaction's own hour is final, its terminal's online row holds the values of the
    # latest earlier hour the terminal had a transaction in (the hours the job computes).
    tx_hours = pd.Series(hour_of(to_us(tx["timestamp"])), index=tx["terminal_id"].to_numpy())
    previous = np.array(
        [
            tx_hours.loc[[terminal]].loc[lambda h, hour=hour: h < hour].max()
            for terminal, hour in zip(rows["terminal_id"], hours, strict=True)
        ]
    )
    within = (hours - previous <= TERMINAL_VALUES_TTL_HOURS) & (previous > 0)
    rows, previous = rows.loc[within].reset_index(drop=True), previous[within].astype(np.int64)
    earlier = offline_terminal_features(tx, lab, rows["terminal_id"].to_numpy(), previous)
    decisions = []
    for i, row in enumerate(rows.to_dict("records")):
        features = {name: float(row[name]) for name in MODEL_FEATURES}
        features.update({name: float(earlier[name][i]) for name in TERMINAL_FEATURES})
        decisions.append(
            {"transaction_id": row["transaction_id"], "card_id": row["card_id"], "features": features}
        )
    changed = sum(any(earlier[n][i] != rows.loc[i, n] for n in TERMINAL_FEATURES) for i in range(len(rows)))
    report = compare(decisions, tx, lab, delay_days=7)
    assert len(rows) > 100
    assert changed > 0
    assert (report.terminal_at_watermark, report.terminal_skewed, report.skewed) == (changed, 0, 0)
