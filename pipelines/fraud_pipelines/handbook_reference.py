"""The Fraud Detection Handbook's published test figures, reproduced on the benchmark's data.

The Handbook's model-selection chapter reports each model's test performance as the mean over
four test weeks (prequential test folds), not one: training windows starting on its reference
date (2018-07-25) and one, two and three weeks later, each followed by its delay days and test
days, each test week leaving out the cards already known compromised (``protocols``). Its
best model after selection is XGBoost (100 trees, learning rate 0.1, depth 5) on its 15
baseline features.

``prequential_test`` refits one configuration on each fold's training window and scores that
fold's Handbook test set, as the Handbook does once the parameters are chosen. The benchmark
runs it for the pipeline's chosen model and for the Handbook's reference model on the same
data, so the two are compared on identical rows: the absolute figures move with the data
(0.01-0.02 on card precision@100 from one simulation seed or test week to the next), a paired
comparison much less.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin

from fraud_pipelines.data import DAY, RawData, build_datasets, data_bounds, plan_windows
from fraud_pipelines.evaluation import ranking_metrics
from fraud_pipelines.protocols import RANKING, protocol_rows
from fraud_pipelines.training import make_estimator
from fraudcore.features import CARD_COUNT_MEAN_WINDOWS, MODEL_FEATURES, TERMINAL_FEATURES

#: The Handbook's baseline features, as this project computes them (same windows and delay).
HANDBOOK_FEATURES = (
    "amount",
    "is_weekend",
    "is_night",
    *(f"card_{kind}_{w}" for w in CARD_COUNT_MEAN_WINDOWS for kind in ("tx_count", "mean_amount")),
    *TERMINAL_FEATURES,
)
#: The Handbook's best model after its prequential model selection (XGBoost).
REFERENCE_PARAMS: dict[str, Any] = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 5}

Estimator = Callable[[], ClassifierMixin]


@dataclass(frozen=True)
class Contender:
    """A model setting to refit on every test fold: its input columns and a fresh estimator."""

    features: tuple[str, ...]
    estimator: Estimator


def reference_contender() -> Contender:
    """The Handbook's best model on its baseline features."""
    from xgboost import XGBClassifier

    return Contender(
        HANDBOOK_FEATURES,
        lambda: XGBClassifier(**REFERENCE_PARAMS, random_state=0, n_jobs=2, verbosity=0),
    )


def pipeline_contender(candidate: str, params: Mapping[str, Any], seed: int) -> Contender:
    """The pipeline's chosen candidate and hyperparameters on the model's features."""
    return Contender(tuple(MODEL_FEATURES), lambda: make_estimator(candidate, dict(params), seed))


def fold_train_starts(train_start: str, folds: int, test_days: int = 7) -> list[str]:
    """The training-window starts of the prequential test folds: ``train_start`` and each
    ``test_days`` later (the Handbook's folds, oldest first)."""
    if folds < 1:
        raise ValueError("folds must be >= 1")
    first = pd.Timestamp(train_start)
    return [(first + k * test_days * DAY).strftime("%Y-%m-%d") for k in range(folds)]


def prequential_test(
    raw: RawData,
    contenders: Mapping[str, Contender],
    train_starts: Sequence[str],
    *,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
    burn_in_days: int = 30,
) -> dict[str, Any]:
    """Each contender refit on each fold's training window and scored on its Handbook test
    set: ``{"folds": [{"train_start", "<name>": figures, ...}], "<name>": means}``."""
    first, end, _ = data_bounds(raw)
    folds: list[dict[str, Any]] = []
    for start in train_starts:
        windows = plan_windows(
            first,
            end,
            train_start=start,
            train_days=train_days,
            delay_days=delay_days,
            test_days=test_days,
            history_days=0,  # no validation here: the settings are fixed
            burn_in_days=burn_in_days,
        )
        data = build_datasets(raw, windows)
        when = pd.to_datetime(data.train["timestamp"], utc=True)
        rows = ((when >= windows.train_start) & (when < windows.train_end)).to_numpy()
        y = data.train["is_fraud"].to_numpy(np.int64)[rows]
        scored = protocol_rows(data.test, "handbook")
        test = data.test.loc[scored].reset_index(drop=True)
        fold: dict[str, Any] = {"train_start": start}
        for name, contender in contenders.items():
            columns = list(contender.features)
            # float32, as the pipeline feeds the model (fraudcore.features.model_matrix)
            model = contender.estimator().fit(data.train[columns].to_numpy(np.float32)[rows], y)
            scores = model.predict_proba(test[columns].to_numpy(np.float32))[:, 1]
            metrics = ranking_metrics(test, scores)
            fold[name] = {figure: round(metrics[figure], 4) for figure in RANKING}
        folds.append(fold)
    means = {
        name: {figure: round(statistics.fmean(f[name][figure] for f in folds), 4) for figure in RANKING}
        for name in contenders
    }
    return {"folds": folds, **means}
