"""The training data: time split, point-in-time labels and prequential folds."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fraud_pipelines import steps
from fraud_pipelines.data import (
    RawData,
    Windows,
    _label_table,
    build_datasets,
    feature_lookback_days,
    plan_windows,
    read_parquet,
    simulate,
    write_parquet,
)
from fraud_pipelines.training import prequential_folds
from fraudcore.events import transaction_verdict
from fraudcore.features import CARD_HISTORY_S, MODEL_FEATURES, offline_features


def _d(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_handbook_protocol_windows() -> None:
    w = plan_windows("2018-04-01", "2018-10-01", train_start="2018-07-25", history_days=28, burn_in_days=30)
    assert (w.train_start, w.train_end) == (_d("2018-07-25"), _d("2018-08-01"))
    assert (w.test_start, w.test_end) == (_d("2018-08-08"), _d("2018-08-15"))
    assert w.cutoff == _d("2018-08-08")
    assert w.history_start == _d("2018-06-27")
    assert Windows.from_dict(w.to_dict()) == w


def test_auto_windows_end_where_labels_are_complete() -> None:
    w = plan_windows("2024-01-01", "2024-04-01", auto_end="2024-03-25", history_days=14, burn_in_days=30)
    assert w.test_end == _d("2024-03-25")
    assert w.test_start == _d("2024-03-18")
    assert w.train_start == _d("2024-03-04")
    assert w.history_start == _d("2024-02-19")


def test_history_is_clipped_by_the_burn_in_and_windows_must_fit() -> None:
    w = plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-05", history_days=28, burn_in_days=30)
    assert w.history_start == _d("2024-01-31")  # burn-in ends there
    with pytest.raises(ValueError, match="burn-in"):
        plan_windows("2024-01-01", "2024-03-01", train_start="2024-01-20", burn_in_days=30)
    with pytest.raises(ValueError, match="ends after the data"):
        plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-20", burn_in_days=30)


def test_prequential_folds_slide_back_with_the_delay_gap() -> None:
    w = plan_windows("2018-04-01", "2018-10-01", train_start="2018-07-25", history_days=28, burn_in_days=30)
    folds = prequential_folds(w, n_folds=5)
    assert len(folds) == 3  # 28 days of history hold three 7+7+7-day folds
    first = folds[0]
    assert (first.valid_start, first.valid_end) == (w.train_start, w.train_end)
    assert (first.train_start, first.train_end) == (_d("2018-07-11"), _d("2018-07-18"))
    for a, b in itertools.pairwise(folds):
        assert b.valid_start == a.valid_start - timedelta(days=7)
    for f in folds:
        assert f.valid_start - f.train_end == timedelta(days=7)
        assert f.train_start >= w.history_start


def _raw() -> RawData:
    """Three cards, one terminal, a transaction a day per card over 60 days; three frauds."""
    start = datetime(2024, 1, 1, 12, tzinfo=UTC)
    rows = []
    for day in range(60):
        for card in range(3):
            rows.append(
                {
                    "transaction_id": f"t{day:02d}-{card}",
                    "card_id": f"C{card}",
                    "terminal_id": "T0",
                    "amount": 10.0 + card,
                    "timestamp": pd.Timestamp(start + timedelta(days=day, minutes=card)),
                }
            )
    tx = pd.DataFrame(rows)
    labels = pd.DataFrame(
        {
            # In the training window and reported before the cutoff; in the training window and
            # reported after it (unknown when training); in the test window (ground truth).
            "transaction_id": ["t40-0", "t42-1", "t52-2"],
            "reported_at": pd.to_datetime(["2024-02-12", "2024-03-01", "2024-03-20"], utc=True),
            "scenario": np.array([1, 2, 3], dtype=np.int8),
        }
    )
    return RawData(tx, labels, "test")


def test_point_in_time_labels(tmp_path: Path) -> None:
    raw = _raw()
    # Day 0 is 2024-01-01: training days 38-44 (02-08..02-14), test days 52-58 (02-22..02-28).
    w = plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-08", history_days=7, burn_in_days=30)
    assert w.cutoff == _d("2024-02-22")
    sets = build_datasets(raw, w)
    train, test = sets.train, sets.test
    assert set(MODEL_FEATURES) <= set(train.columns)
    frauds = dict(zip(train["transaction_id"], train["is_fraud"], strict=True))
    assert frauds["t40-0"] == 1  # reported 2024-02-12 < cutoff
    assert frauds["t42-1"] == 0  # reported 2024-03-01, after the cutoff: legit for training
    assert train["label_reported_at"].notna().sum() == 1
    assert test["transaction_id"].str.startswith(("t52", "t53", "t54", "t55", "t56", "t57", "t58")).all()
    truth = dict(zip(test["transaction_id"], test["is_fraud"], strict=True))
    assert truth["t52-2"] == 1  # the ground truth, reported whenever
    assert sets.info["test_frauds"] == 1
    assert pd.to_datetime(train["timestamp"], utc=True).min() >= w.history_start
    assert pd.to_datetime(train["timestamp"], utc=True).max() < w.train_end

    write_parquet(train, tmp_path / "train.parquet", sets.info)
    back, info = read_parquet(tmp_path / "train.parquet")
    assert info["windows"] == w.to_dict()
    assert len(back) == len(train)


def test_duplicate_transactions_count_once() -> None:
    raw = _raw()
    raw.transactions = pd.concat([raw.transactions, raw.transactions.iloc[:50]], ignore_index=True)
    w = plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-08", history_days=7, burn_in_days=30)
    sets = build_datasets(raw, w)
    assert sets.train["transaction_id"].is_unique
    assert sets.test["transaction_id"].is_unique


def test_dataset_step_reads_a_labelled_handbook_file(tmp_path: Path) -> None:
    simulation = {"seed": 2, "n_customers": 120, "n_terminals": 240, "days": 40, "start": "2024-01-01"}
    raw = simulate(simulation)
    tx = raw.transactions
    csv = tmp_path / "handbook.csv"
    pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(tx)),
            "TX_DATETIME": tx["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "CUSTOMER_ID": tx["card_id"],
            "TERMINAL_ID": tx["terminal_id"],
            "TX_AMOUNT": tx["amount"],
            "TX_FRAUD": tx["is_fraud"],
            "TX_FRAUD_SCENARIO": tx["scenario"],
        }
    ).to_csv(csv, index=False)
    params = {"train_days": 5, "delay_days": 7, "test_days": 5, "history_days": 0, "burn_in_days": 10}
    info = steps.dataset_step(
        str(tmp_path / "train"),
        str(tmp_path / "test"),
        source="file",
        source_path=str(csv),
        source_options=json.dumps({"mapping": "handbook"}),
        log=lambda _m: None,
        **params,  # type: ignore[arg-type]
    )
    assert info["source"] == "file"
    assert info["windows"]["test_end"] == "2024-02-10"  # the data's end: ground truth is complete
    test, _ = read_parquet(tmp_path / "test")
    windows = plan_windows("2024-01-01", "2024-02-10", train_start=info["windows"]["train_start"], **params)
    expected = build_datasets(raw, windows).test
    assert len(test) == len(expected)
    assert test["is_fraud"].sum() == expected["is_fraud"].sum()
    assert np.allclose(test[MODEL_FEATURES].to_numpy(), expected[MODEL_FEATURES].to_numpy())


def _verdicts(rows: list[tuple[str, str, str | None, bool | None, int]]) -> pd.DataFrame:
    """Labels as the archive holds them: (transaction, reported day, source, is_fraud, scenario);
    a None source and is_fraud is a label archived before those fields existed."""
    return pd.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "reported_at": pd.to_datetime([r[1] for r in rows], utc=True),
            "source": pd.Series([r[2] for r in rows], dtype=object),
            "is_fraud": pd.Series([r[3] for r in rows], dtype=object),
            "scenario": np.array([r[4] for r in rows], dtype=np.int8),
        }
    )


def test_the_latest_verdict_decides_the_training_label_and_a_chargeback_is_final() -> None:
    raw = _raw()
    raw.labels = _verdicts(
        [
            ("t39-0", "2024-02-10", "analyst", True, 0),  # then charged back: known since the analyst said so
            ("t39-0", "2024-02-20", "chargeback", True, 1),
            ("t40-0", "2024-02-12", None, None, 1),  # an old chargeback: a fraud
            ("t41-1", "2024-02-12", "analyst", False, 0),  # legitimate
            ("t43-1", "2024-02-10", "analyst", True, 0),  # fraud, then corrected to legitimate
            ("t43-1", "2024-02-15", "analyst", False, 0),
            ("t44-2", "2024-02-10", "analyst", False, 0),  # legitimate until charged back after the cutoff
            ("t44-2", "2024-03-05", "chargeback", True, 3),
            ("t53-0", "2024-02-24", "analyst", False, 0),  # test window: the chargeback wins
            ("t53-0", "2024-03-10", "chargeback", True, 2),
            ("t54-1", "2024-02-25", "chargeback", True, 4),  # an analyst cannot overturn a chargeback
            ("t54-1", "2024-02-26", "analyst", False, 0),
            ("t55-1", "2024-02-24", "analyst", True, 0),  # fraud, then corrected
            ("t55-1", "2024-02-25", "analyst", False, 0),
            ("t56-2", "2024-02-26", "analyst", True, 0),  # an analyst's fraud: scenario unknown
        ]
    )
    w = plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-08", history_days=7, burn_in_days=30)
    sets = build_datasets(raw, w)
    train = sets.train.set_index("transaction_id")
    expected = {**dict.fromkeys(train.index, 0), "t39-0": 1, "t40-0": 1}
    assert train["is_fraud"].to_dict() == expected
    assert train.loc["t39-0", "label_reported_at"] == _d("2024-02-10")
    assert pd.isna(train["label_reported_at"].get("t44-2"))
    test = sets.test.set_index("transaction_id")
    assert test.loc[test["is_fraud"] == 1].index.tolist() == ["t53-0", "t54-1", "t56-2"]
    assert test.loc[["t53-0", "t54-1", "t56-2"], "scenario"].tolist() == [2, 4, 0]
    assert sets.info["test_frauds"] == 3


_SOURCES = st.sampled_from([(None, None), ("chargeback", True), ("analyst", True), ("analyst", False)])


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 9), _SOURCES), max_size=12))
@hypothesis_settings(max_examples=200, deadline=None)
def test_the_label_table_applies_the_contracts_rule(
    labels: list[tuple[str, int, tuple[str | None, bool | None]]],
) -> None:
    frame = _verdicts([(tx, f"2024-03-0{day}", src, fraud, 1) for tx, day, (src, fraud) in labels])
    cutoff = _d("2024-03-05")
    for as_of in (None, cutoff):
        table = _label_table(frame, as_of=as_of)
        for tx in "abc":
            records = [
                {
                    k: v
                    for k, v in {
                        "reported_at": f"2024-03-0{day}T00:00:00Z",
                        "source": src,
                        "is_fraud": fraud,
                    }.items()
                    if v is not None
                }
                for t, day, (src, fraud) in labels
                if t == tx and (as_of is None or day < 5)
            ]
            verdict = transaction_verdict(records)
            assert (tx in table.index) == (verdict is not None and verdict.is_fraud), (tx, as_of, records)


def test_features_read_far_enough_back_to_match_the_whole_history() -> None:
    # A card is served the state after its previous transaction, whose 30-day window can reach
    # 60 days back: cutting the data closer than that changes some cards' features.
    raw = simulate({"seed": 5, "n_customers": 300, "n_terminals": 600, "days": 120, "start": "2024-01-01"})
    assert feature_lookback_days(7) == 60
    windows = plan_windows(
        "2024-01-01", "2024-04-30", train_start="2024-03-20", history_days=0, burn_in_days=30, delay_days=7
    )
    data = build_datasets(raw, windows)
    everything = offline_features(raw.transactions, raw.labels).set_index("transaction_id")
    for frame in (data.train, data.test):
        # Cards used within 30 days before (an idler card's state reaches further back).
        seconds = (
            pd.to_datetime(frame["timestamp"], utc=True).astype("int64") / 1e9 - frame["card_last_tx_time"]
        )
        recent = frame.loc[~(seconds > CARD_HISTORY_S).to_numpy()]
        assert len(recent) > 0.95 * len(frame)
        expected = everything.loc[recent["transaction_id"], MODEL_FEATURES].to_numpy()
        np.testing.assert_allclose(recent[MODEL_FEATURES].to_numpy(), expected, rtol=0, atol=1e-9)


def test_the_handbook_generator_is_a_simulator_source() -> None:
    raw = simulate(
        {"generator": "handbook", "seed": 2, "n_customers": 50, "n_terminals": 40, "radius": 30.0, "days": 30}
    )
    tx = raw.transactions
    assert len(tx) > 1_000
    assert raw.source == "simulator"
    assert tx["timestamp"].min() >= pd.Timestamp("2018-04-01", tz="UTC")
    assert raw.complete_end == pd.Timestamp("2018-05-01", tz="UTC")
    frauds = tx.loc[tx["is_fraud"] == 1]
    assert len(raw.labels) == len(frauds) > 0
    delay = pd.to_datetime(raw.labels["reported_at"], utc=True) - raw.labels["transaction_timestamp"]
    assert (delay == pd.Timedelta(days=7)).all()
    with pytest.raises(ValueError, match=r"\['weekend_factor'\] do not apply to generator 'handbook'"):
        simulate({"generator": "handbook", "weekend_factor": 1.0})
    with pytest.raises(ValueError, match="generator: 'kaggle' is not one of platform, handbook"):
        simulate({"generator": "kaggle"})
