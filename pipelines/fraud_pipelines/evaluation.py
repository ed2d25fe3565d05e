"""Test-window metrics: ranking (AUC-ROC, average precision), the fraud team's alert budget
(card precision@k per day), decisions at a threshold, and calibration, on the rows the
evaluation protocol scores (``fraud_pipelines.protocols``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from fraud_pipelines.protocols import KNOWN_COMPROMISED, PROTOCOLS, check_protocol, protocol_rows
from fraudcore.drift import ScoreHistogram

ArrayLike = npt.ArrayLike


def card_precision_at_k(
    days: ArrayLike,
    cards: ArrayLike,
    scores: ArrayLike,
    is_fraud: ArrayLike,
    k: int = 100,
    *,
    remove_detected: bool = False,
) -> tuple[float, pd.Series]:
    """Card precision@k per day, and its mean over the days.

    Each day, a card's score is its highest transaction score that day and it is compromised
    that day when at least one of its transactions that day is fraud. The day's precision is
    the number of compromised cards among the ``k`` highest-scored cards, divided by ``k`` (the
    investigators' daily budget: a day with fewer than ``k`` cards counts the empty slots as
    misses). Ties in score are broken by card id, so the result is deterministic.

    ``remove_detected``: the Fraud Detection Handbook's variant: a card found compromised on an
    earlier day (a true positive in that day's top ``k``) is blocked, so it is left out of the
    later days.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    frame = pd.DataFrame(
        {
            "day": np.asarray(days),
            "card": np.asarray(cards),
            "score": np.asarray(scores, dtype=np.float64),
            "fraud": np.asarray(is_fraud).astype(np.int64) > 0,
        }
    )
    if frame.empty:
        return float("nan"), pd.Series(dtype=np.float64)
    per_card = (
        frame.groupby(["day", "card"], sort=True)
        .agg(score=("score", "max"), fraud=("fraud", "max"))
        .reset_index()
    )
    detected: set[Any] = set()
    precision: dict[Any, float] = {}
    for day, cards_of_day in per_card.groupby("day", sort=True):
        if remove_detected and detected:
            cards_of_day = cards_of_day.loc[~cards_of_day["card"].isin(detected)]
        top = cards_of_day.sort_values(["score", "card"], ascending=[False, True], kind="mergesort").head(k)
        hits = top.loc[top["fraud"], "card"]
        precision[day] = len(hits) / k
        if remove_detected:
            detected.update(hits.tolist())
    per_day = pd.Series(precision, dtype=np.float64)
    return float(per_day.mean()), per_day


def calibration_bins(y: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width score bins: count, mean predicted probability and observed fraud rate."""
    y_arr = np.asarray(y, dtype=np.float64)
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    index = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        bins.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": n,
                "mean_predicted": float(s[mask].mean()) if n else float("nan"),
                "observed_rate": float(y_arr[mask].mean()) if n else float("nan"),
            }
        )
    return bins


def expected_calibration_error(bins: list[dict[str, float]]) -> float:
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return float(
        sum(b["count"] / total * abs(b["observed_rate"] - b["mean_predicted"]) for b in bins if b["count"])
    )


def roc_points(y: ArrayLike, scores: ArrayLike, max_points: int = 200) -> dict[str, list[float]]:
    """At most ``max_points`` points of the ROC curve (kfp's ClassificationMetrics takes them);
    empty when ``y`` has one class only."""
    y_arr = np.asarray(y)
    if not 0 < y_arr.sum() < len(y_arr):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(y_arr, np.asarray(scores, dtype=np.float64), drop_intermediate=True)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(np.int64))
    finite = np.where(np.isfinite(thresholds), thresholds, 1.0)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": finite[keep].tolist()}


@dataclass
class Evaluation:
    metrics: dict[str, float]
    card_precision_per_day: dict[str, float]
    card_precision_per_day_all_cards: dict[str, float]
    calibration: list[dict[str, float]]
    confusion: list[list[int]]  # [[tn, fp], [fn, tp]]
    score_distribution: ScoreHistogram  # the alert rate at any threshold; the score's drift reference
    protocol: str = "window"  # which test rows the headline metrics are computed on

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "metrics": self.metrics,
            "score_distribution": self.score_distribution.to_dict(),
            "card_precision_per_day": self.card_precision_per_day,
            "card_precision_per_day_all_cards": self.card_precision_per_day_all_cards,
            "calibration": self.calibration,
            "confusion": self.confusion,
        }


def _utc_days(timestamps: pd.Series) -> npt.NDArray[Any]:
    return pd.to_datetime(timestamps, utc=True).dt.strftime("%Y-%m-%d").to_numpy()


def ranking_metrics(test: pd.DataFrame, scores: ArrayLike, k: int = 100) -> dict[str, float]:
    """AUC-ROC, average precision and the Handbook's card precision@k (cards detected on an
    earlier day left out) of the given rows, with their counts. ``card_precision_at_{k}_ceiling``
    is what a perfect ranking would reach: a day with fewer than ``k`` compromised cards
    cannot fill its ``k`` slots."""
    y = test["is_fraud"].to_numpy(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    days, cards = _utc_days(test["timestamp"]), test["card_id"].to_numpy()
    cp, _ = card_precision_at_k(days, cards, s, y, k, remove_detected=True)
    ceiling, _ = card_precision_at_k(days, cards, y, y, k, remove_detected=True)
    return {
        "auc_roc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if y.sum() else float("nan"),
        f"card_precision_at_{k}": cp,
        f"card_precision_at_{k}_ceiling": ceiling,
        "test_transactions": float(len(y)),
        "test_frauds": float(y.sum()),
    }


def evaluate(
    test: pd.DataFrame, scores: ArrayLike, threshold: float, k: int = 100, protocol: str = "window"
) -> Evaluation:
    """Every metric of the test window. ``test``: card_id, timestamp, is_fraud (ground truth),
    and for the Handbook's protocol ``card_known_compromised`` (written by the dataset step).

    The headline metrics (``auc_roc``, ``average_precision``, ``card_precision_at_{k}``, the
    threshold and calibration figures) are computed on the rows ``protocol`` scores (the
    score distribution, a reference for live scores, on every row); the
    ranking figures of each protocol are also reported under its name (``window_auc_roc``,
    ``handbook_auc_roc``, ...), the Handbook's only when the test set is marked for it."""
    check_protocol(protocol)
    s_all = np.asarray(scores, dtype=np.float64)
    # Live scores are compared with this reference, and live traffic holds every card.
    score_distribution = ScoreHistogram.of(s_all, test["is_fraud"].to_numpy(np.int64))
    named: dict[str, float] = {}
    for name in PROTOCOLS:
        if name == "window" or KNOWN_COMPROMISED in test.columns:
            rows = protocol_rows(test, name)
            figures = ranking_metrics(test.loc[rows], s_all[rows], k)
            named.update({f"{name}_{key}": value for key, value in figures.items()})
    selected = protocol_rows(test, protocol)
    test = test.loc[selected]
    y = test["is_fraud"].to_numpy(np.int64)
    s = s_all[selected]
    day = _utc_days(test["timestamp"])
    cards = test["card_id"].to_numpy()
    cp, per_day = card_precision_at_k(day, cards, s, y, k, remove_detected=True)
    cp_all, per_day_all = card_precision_at_k(day, cards, s, y, k, remove_detected=False)
    predicted = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    bins = calibration_bins(y, s)
    metrics = {
        "auc_roc": named[f"{protocol}_auc_roc"],
        "average_precision": named[f"{protocol}_average_precision"],
        f"card_precision_at_{k}": cp,
        f"card_precision_at_{k}_all_cards": cp_all,
        "threshold": float(threshold),
        "precision_at_threshold": tp / (tp + fp) if tp + fp else 0.0,
        "recall_at_threshold": tp / (tp + fn) if tp + fn else 0.0,
        "f1_at_threshold": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "alerts_per_day": float((tp + fp) / max(1, len(per_day))),
        "brier_score": float(brier_score_loss(y, np.clip(s, 0, 1))),
        "expected_calibration_error": expected_calibration_error(bins),
        "test_transactions": float(len(y)),
        "test_frauds": float(y.sum()),
        "test_days": float(len(per_day)),
        **named,
    }
    return Evaluation(
        metrics=metrics,
        card_precision_per_day={str(d): float(v) for d, v in per_day.items()},
        card_precision_per_day_all_cards={str(d): float(v) for d, v in per_day_all.items()},
        calibration=bins,
        confusion=[[tn, fp], [fn, tp]],
        score_distribution=score_distribution,
        protocol=protocol,
    )
