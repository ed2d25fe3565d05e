"""Live drift per model version: the latest decisions' inputs and scores against the
distributions the model's metadata keeps (its training window's features, its test window's
scores), as population stability indices (``fraudcore.drift``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fraudcore.drift import ScoreHistogram, bin_counts, reference_psi, score_psi
from fraudcore.features import MODEL_FEATURES

MIN_SAMPLE = 500  # fewer decisions than this in the window: no PSI yet


@dataclass
class Reference:
    """What a model version was trained and evaluated on, from its ``metadata.json``."""

    features: dict[str, dict[str, list[float]]]  # name -> {"edges", "counts"}
    scores: ScoreHistogram | None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Reference:
        scores = metadata.get("score_distribution")
        return cls(
            {k: v for k, v in (metadata.get("feature_distribution") or {}).items() if k in MODEL_FEATURES},
            ScoreHistogram.from_dict(scores) if scores else None,
        )


@dataclass
class DriftWindow:
    """The last ``size`` decisions of one version: their inputs and scores."""

    size: int
    rows: deque[tuple[tuple[float, ...], float]] = field(default_factory=deque)

    def add(self, features: Mapping[str, float] | None, score: float) -> None:
        if not features:
            return
        self.rows.append((tuple(float(features.get(n, np.nan)) for n in MODEL_FEATURES), score))
        while len(self.rows) > self.size:
            self.rows.popleft()

    def psi(self, reference: Reference) -> dict[str, float]:
        """PSI per feature (those the reference has) and for ``score``; empty below MIN_SAMPLE."""
        if len(self.rows) < MIN_SAMPLE:
            return {}
        matrix = np.array([row for row, _ in self.rows], dtype=np.float64)
        out: dict[str, float] = {}
        for j, name in enumerate(MODEL_FEATURES):
            ref = reference.features.get(name)
            if ref:
                out[name] = reference_psi(ref, bin_counts(matrix[:, j], np.asarray(ref["edges"])))
        if reference.scores is not None:
            out["score"] = score_psi(reference.scores, ScoreHistogram.of([score for _, score in self.rows]))
        return out
