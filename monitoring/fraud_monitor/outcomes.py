"""Live model quality from delayed labels: decisions whose label delay has passed, counted per
model version and event day, and the fraud team's metrics over a window of days.

A decision's truth is known once the stream's event time (its clock) has passed the
transaction's time plus the label delay: a fraud is labelled by then, no label means
legitimate. Each such *outcome* adds to its version's day: decisions, alerts (review or
decline), frauds, alerted frauds, score histograms of frauds and of legitimate payments
(average precision at the histogram's resolution), and per card its highest score and
whether it was defrauded that day (card precision@100, the Handbook's alert budget).
Pure functions and data: the Redis store (``store``) and the service (``service``) wrap them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fraudcore.drift import SCORE_BINS
from fraudcore.features import DAY_US

CARDS_PER_DAY = 100  # the Handbook's daily alert budget: card precision@100


@dataclass(frozen=True)
class Outcome:
    """One decision whose truth is known."""

    version: str
    t_us: int  # the transaction's event time
    card_id: str
    score: float
    alerted: bool  # review or decline
    fraud: bool

    @property
    def day(self) -> int:
        return self.t_us // DAY_US

    @property
    def score_bin(self) -> int:
        return min(int(max(self.score, 0.0) * SCORE_BINS), SCORE_BINS - 1)


@dataclass
class DayCounts:
    """One version's outcomes of one event day."""

    decisions: int = 0
    alerts: int = 0
    frauds: int = 0
    alerted_frauds: int = 0
    fraud_bins: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    legit_bins: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    card_scores: dict[str, float] = field(default_factory=dict)  # each card's highest score
    fraud_cards: set[str] = field(default_factory=set)

    def add(self, o: Outcome) -> None:
        self.decisions += 1
        self.alerts += o.alerted
        self.frauds += o.fraud
        self.alerted_frauds += o.alerted and o.fraud
        (self.fraud_bins if o.fraud else self.legit_bins)[o.score_bin] += 1
        self.card_scores[o.card_id] = max(o.score, self.card_scores.get(o.card_id, 0.0))
        if o.fraud:
            self.fraud_cards.add(o.card_id)

    def card_precision(self, k: int = CARDS_PER_DAY) -> float:
        """The share of defrauded cards among the day's ``k`` highest-scored cards (of ``k``)."""
        top = sorted(self.card_scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return sum(card in self.fraud_cards for card, _ in top) / k


@dataclass(frozen=True)
class WindowMetrics:
    """A version's metrics over a window of event days (NaN where undefined)."""

    decisions: int
    precision: float  # of review + decline
    recall: float
    alert_rate: float
    average_precision: float
    card_precision_at_100: float  # mean over the window's days

    @classmethod
    def of(cls, days: Iterable[DayCounts]) -> WindowMetrics:
        days = list(days)
        n = sum(d.decisions for d in days)
        alerts = sum(d.alerts for d in days)
        frauds = sum(d.frauds for d in days)
        caught = sum(d.alerted_frauds for d in days)
        fraud_bins = np.sum([d.fraud_bins for d in days], axis=0) if days else np.zeros(SCORE_BINS)
        legit_bins = np.sum([d.legit_bins for d in days], axis=0) if days else np.zeros(SCORE_BINS)
        return cls(
            decisions=n,
            precision=caught / alerts if alerts else float("nan"),
            recall=caught / frauds if frauds else float("nan"),
            alert_rate=alerts / n if n else float("nan"),
            average_precision=average_precision(fraud_bins, legit_bins),
            card_precision_at_100=float(np.mean([d.card_precision() for d in days]))
            if days
            else float("nan"),
        )


def average_precision(fraud_bins: np.ndarray, legit_bins: np.ndarray) -> float:
    """Average precision with each score bin one threshold (ties share a bin, as sklearn's
    tied scores share a threshold)."""
    total = float(np.sum(fraud_bins))
    if total == 0:
        return float("nan")
    tp = np.cumsum(fraud_bins[::-1])
    fp = np.cumsum(legit_bins[::-1])
    alerts = tp + fp
    precision = np.divide(tp, alerts, out=np.zeros_like(tp, dtype=float), where=alerts > 0)
    return float(np.sum(fraud_bins[::-1] / total * precision))
