"""The Handbook's prequential test folds and its reference model (small simulated data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_pipelines.data import build_datasets, feature_matrix, plan_windows, simulate
from fraud_pipelines.evaluation import ranking_metrics
from fraud_pipelines.handbook_reference import (
    HANDBOOK_FEATURES,
    fold_train_starts,
    pipeline_contender,
    prequential_test,
    reference_contender,
)
from fraud_pipelines.protocols import protocol_rows
from fraud_pipelines.training import make_estimator
from fraudcore.features import MODEL_FEATURES

SIMULATION = {"seed": 4, "n_customers": 400, "n_terminals": 800, "days": 60, "start": "2024-01-01"}
LENGTHS = {"train_days": 5, "delay_days": 7, "test_days": 5, "burn_in_days": 10}
LOGREG = {"C": 1.0, "class_weight": None}


def test_fold_starts_step_one_test_window_at_a_time() -> None:
    assert fold_train_starts("2018-07-25", 4) == ["2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"]
    assert fold_train_starts("2024-02-27", 2, test_days=5) == ["2024-02-27", "2024-03-03"]
    with pytest.raises(ValueError, match="folds"):
        fold_train_starts("2018-07-25", 0)


def test_reference_features_are_model_features() -> None:
    assert len(HANDBOOK_FEATURES) == 15
    assert set(HANDBOOK_FEATURES) < set(MODEL_FEATURES)


def test_each_fold_refits_on_its_window_and_scores_its_handbook_test_set() -> None:
    raw = simulate(SIMULATION)
    starts = fold_train_starts("2024-01-20", 3, test_days=LENGTHS["test_days"])
    contenders = {"pipeline": pipeline_contender("logreg", LOGREG, 0), "reference": reference_contender()}
    out = prequential_test(raw, contenders, starts, **LENGTHS)
    assert [f["train_start"] for f in out["folds"]] == starts
    for name in contenders:
        for figure in ("auc_roc", "average_precision", "card_precision_at_100"):
            values = [f[name][figure] for f in out["folds"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert out[name][figure] == pytest.approx(np.mean(values), abs=1e-4)
    # The last fold, computed by hand: the training window's rows only, the Handbook's test rows.
    windows = plan_windows("2024-01-01", "2024-03-01", train_start=starts[-1], history_days=0, **LENGTHS)
    data = build_datasets(raw, windows)
    when = pd.to_datetime(data.train["timestamp"], utc=True)
    rows = ((when >= windows.train_start) & (when < windows.train_end)).to_numpy()
    model = make_estimator("logreg", LOGREG, 0).fit(
        feature_matrix(data.train)[rows], data.train["is_fraud"][rows]
    )
    test = data.test.loc[protocol_rows(data.test, "handbook")].reset_index(drop=True)
    assert len(test) < len(data.test)  # the known-compromised cards are left out
    expected = ranking_metrics(test, model.predict_proba(feature_matrix(test))[:, 1])
    assert out["folds"][-1]["pipeline"]["average_precision"] == round(expected["average_precision"], 4)
    assert out["folds"][-1]["pipeline"]["card_precision_at_100"] == round(
        expected["card_precision_at_100"], 4
    )
