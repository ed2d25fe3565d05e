"""Distribution shift between a reference sample (training, history) and a live one: the
population stability index over the reference's quantile bins.

``PSI = sum((a_i - e_i) * ln(a_i / e_i))`` over bins, with ``e_i`` and ``a_i`` the reference's
and the live sample's shares of bin ``i``. Common reading: below 0.1 stable, 0.1-0.25 a
moderate shift, above 0.25 a large one. Bins are the reference's quantiles, so each holds
about the same share of it; a discrete feature (counts, flags) gets fewer, distinct edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

PSI_FLOOR = 1e-4  # an empty bin's share: keeps the logarithm finite
STABLE_PSI = 0.1


def bin_edges(reference: npt.ArrayLike, bins: int = 10) -> npt.NDArray[np.float64]:
    """The interior edges of ``bins`` quantile bins of ``reference`` (duplicates merged)."""
    values = np.asarray(reference, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.empty(0)
    # Sample values as edges (no interpolation), so a count or a flag splits where it changes.
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))


def bin_counts(values: npt.ArrayLike, edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """How many of ``values`` fall in each bin: ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1).astype(np.int64)


def psi(expected_counts: npt.ArrayLike, actual_counts: npt.ArrayLike) -> float:
    """The population stability index of two histograms over the same bins."""
    e = np.asarray(expected_counts, dtype=np.float64)
    a = np.asarray(actual_counts, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"histograms differ in bins: {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    p = np.maximum(e / e.sum(), PSI_FLOOR)
    q = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def sample_psi(reference: npt.ArrayLike, live: npt.ArrayLike, bins: int = 10) -> float:
    """PSI of ``live`` against ``reference``, over the reference's quantile bins."""
    edges = bin_edges(reference, bins)
    return psi(bin_counts(reference, edges), bin_counts(live, edges))


SCORE_BINS = 200  # fixed-width score bins of 0.005: thresholds on that grid are exact


@dataclass(frozen=True)
class ScoreHistogram:
    """Scores (and which were fraud) on fixed bins of [0, 1]: what a model's evaluation
    predicts at any threshold, and the reference for the live score's PSI.

    Stored in a model's metadata as ``{"bins": 200, "counts": [...], "fraud_counts": [...]}``.
    A threshold inside a bin takes that bin's share in proportion."""

    counts: npt.NDArray[np.float64]
    fraud_counts: npt.NDArray[np.float64]

    @classmethod
    def of(cls, scores: npt.ArrayLike, is_fraud: npt.ArrayLike | None = None) -> ScoreHistogram:
        s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        b = np.minimum((s * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
        y = np.zeros(len(s)) if is_fraud is None else np.asarray(is_fraud, dtype=np.float64)
        return cls(
            np.bincount(b, minlength=SCORE_BINS).astype(np.float64),
            np.bincount(b, weights=y, minlength=SCORE_BINS).astype(np.float64),
        )

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ScoreHistogram:
        counts = np.asarray(value["counts"], dtype=np.float64)
        fraud = np.asarray(value.get("fraud_counts", np.zeros(len(counts))), dtype=np.float64)
        if (
            len(counts) != SCORE_BINS
            or len(fraud) != SCORE_BINS
            or int(value.get("bins", SCORE_BINS)) != SCORE_BINS
        ):
            raise ValueError(f"a score histogram has {SCORE_BINS} bins, got {len(counts)}")
        return cls(counts, fraud)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": SCORE_BINS,
            "counts": self.counts.tolist(),
            "fraud_counts": self.fraud_counts.tolist(),
        }

    def _at_least(self, column: npt.NDArray[np.float64], threshold: float) -> float:
        x = min(max(threshold, 0.0), 1.0) * SCORE_BINS
        whole = int(x)
        above = float(column[whole + 1 :].sum()) if whole < SCORE_BINS else 0.0
        if whole < SCORE_BINS:
            above += float(column[whole]) * (whole + 1 - x)
        return above

    def share_at_least(self, threshold: float) -> float:
        """The share of scores at or above ``threshold`` (the alert rate there)."""
        total = float(self.counts.sum())
        return self._at_least(self.counts, threshold) / total if total else float("nan")

    def precision_at_least(self, threshold: float) -> float:
        alerts = self._at_least(self.counts, threshold)
        return self._at_least(self.fraud_counts, threshold) / alerts if alerts else float("nan")

    def recall_at_least(self, threshold: float) -> float:
        frauds = float(self.fraud_counts.sum())
        return self._at_least(self.fraud_counts, threshold) / frauds if frauds else float("nan")


def feature_reference(
    columns: Mapping[str, npt.ArrayLike], bins: int = 10
) -> dict[str, dict[str, list[float]]]:
    """Each feature's quantile bins and counts (``{name: {"edges", "counts"}}``): the reference
    a model's metadata keeps, against which live values get their PSI (``reference_psi``)."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, values in columns.items():
        edges = bin_edges(values, bins)
        out[name] = {"edges": edges.tolist(), "counts": bin_counts(values, edges).astype(float).tolist()}
    return out


def reference_psi(reference: Mapping[str, Any], live_counts: npt.ArrayLike) -> float:
    """PSI of live bin counts (over ``reference["edges"]``) against the reference's counts."""
    return psi(reference["counts"], live_counts)


def score_psi(reference: ScoreHistogram, live: ScoreHistogram, groups: int = 10) -> float:
    """PSI of live scores against the reference's, over ``groups`` bins of about equal
    reference mass (adjacent fine bins merged: 200 fine bins would make sampling noise look
    like drift)."""
    cumulative = np.cumsum(reference.counts) / max(float(reference.counts.sum()), 1.0)
    group = np.minimum((cumulative * groups - 1e-9).astype(np.int64), groups - 1)
    group = np.maximum.accumulate(np.maximum(group, 0))
    return psi(
        np.bincount(group, weights=reference.counts, minlength=groups),
        np.bincount(group, weights=live.counts, minlength=groups),
    )
