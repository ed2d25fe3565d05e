"""Model selection: the searched grids and the choice by prequential validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_pipelines.data import plan_windows
from fraud_pipelines.defaults import CANDIDATES
from fraud_pipelines.training import SEARCHES, param_grid, train
from fraudcore.features import MODEL_FEATURES


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_quick_search_is_the_standard_grids_first_setting(candidate: str) -> None:
    assert param_grid(candidate, "quick") == param_grid(candidate, "standard")[:1]


def test_the_forest_grid_keeps_class_weighting_a_searched_option() -> None:
    grid = param_grid("random_forest", "standard")
    assert grid[0]["class_weight"] is None
    assert any(p["class_weight"] is not None for p in grid)


def test_unknown_search_or_candidate_is_refused() -> None:
    assert "quick" in SEARCHES
    with pytest.raises(ValueError, match="unknown search"):
        param_grid("logreg", "exhaustive")
    with pytest.raises(ValueError, match="unknown candidate"):
        param_grid("xgboost")


def _frame(seed: int = 0) -> pd.DataFrame:
    """Six hundred transactions a day from 2018-06-27 to 2018-07-31; fraud follows the amount
    and the terminal risk, and is reported a day later."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2018-06-27", tz="UTC")
    n = 35 * 600
    frame = pd.DataFrame({name: rng.gamma(2.0, 10.0, n) for name in MODEL_FEATURES})
    frame["timestamp"] = start + pd.to_timedelta(np.sort(rng.uniform(0, 35 * 86_400, n)), unit="s")
    risk = frame["amount"] / 20 + frame["terminal_risk_7d"] / 10 + rng.normal(0, 1, n)
    frame["is_fraud"] = (risk > np.quantile(risk, 0.97)).astype(np.int8)
    reported = frame["timestamp"] + pd.Timedelta(days=1)
    frame["label_reported_at"] = reported.where(frame["is_fraud"] == 1)  # NaT: never reported
    return frame


def test_train_chooses_the_best_mean_validation_average_precision() -> None:
    windows = plan_windows(
        "2018-04-01", "2018-10-01", train_start="2018-07-25", history_days=28, burn_in_days=30
    )
    result = train(_frame(), windows, candidates=("logreg", "hist_gb"), search="quick", seed=1)
    assert len(result.folds) == 3
    assert [s.candidate for s in result.scores] == ["logreg", "hist_gb"]
    best = max(result.scores, key=lambda s: s.mean_ap)
    assert (result.candidate, result.params) == (best.candidate, best.params)
    assert all(len(s.fold_ap) == 3 for s in result.scores)
    assert 0.0 < result.threshold < 1.0
    assert abs(result.train_rows - 7 * 600) < 300  # the training window's week
