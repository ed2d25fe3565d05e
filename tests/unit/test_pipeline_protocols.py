"""Evaluation protocols: the Fraud Detection Handbook's test set (cards already known
compromised left out, day by day) and its card precision@k, against hand-made examples and
against transcriptions of the Handbook's own code."""

# ruff: noqa: SIM300 (the Handbook's comparisons are transcribed as published)

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from fraud_pipelines.data import build_datasets, plan_windows
from fraud_pipelines.evaluation import card_precision_at_k, evaluate
from fraud_pipelines.protocols import KNOWN_COMPROMISED, handbook_known_compromised, protocol_rows
from tests.unit.test_pipeline_data import _raw

DAY0 = pd.Timestamp("2024-01-01", tz="UTC")


def _day(n: int) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=n)


def test_hand_made_exclusion_follows_the_known_cards_day_by_day() -> None:
    # Training days 0-1, delay days 2-3, test days 4-6. Each card's fraud (if any) on its day,
    # and one legitimate transaction on every test day.
    fraud_day = {"train": 1, "before": -1, "delay1": 2, "delay2": 3, "test": 4, "legit": None}
    cards, stamps, fraud = [], [], []
    for card, day in fraud_day.items():
        if day is not None:
            cards.append(card)
            stamps.append(_day(day) + pd.Timedelta(hours=12))
            fraud.append(1)
        for test_day in (4, 5, 6):
            cards.append(card)
            stamps.append(_day(test_day) + pd.Timedelta(hours=20))
            fraud.append(0)
    excluded = handbook_known_compromised(
        cards,
        pd.DatetimeIndex(stamps),
        fraud,
        train_start=_day(0),
        test_start=_day(4),
        test_end=_day(7),
        delay_days=2,
    )
    dropped = {
        (card, (stamp - DAY0).days) for card, stamp, out in zip(cards, stamps, excluded, strict=True) if out
    }
    assert dropped == {
        # A fraud in the training window: known from the first test day.
        ("train", 4),
        ("train", 5),
        ("train", 6),
        # The first delay day's frauds are known from the second test day, the second's from
        # the third.
        ("delay1", 5),
        ("delay1", 6),
        ("delay2", 6),
    }
    # Before the training window, in the test window itself, or never: not known. The fraud
    # rows themselves are outside the test window, except the test card's, which stays.
    assert not excluded[[c in ("before", "test", "legit") for c in cards]].any()


def _handbook_test_set(
    transactions_df: pd.DataFrame,
    start_date_training: pd.Timestamp,
    delta_train: int,
    delta_delay: int,
    delta_test: int,
) -> pd.DataFrame:
    """The Handbook's ``get_train_test_set`` (test side), as published."""
    train_df = transactions_df[
        (transactions_df.TX_DATETIME >= start_date_training)
        & (transactions_df.TX_DATETIME < start_date_training + timedelta(days=delta_train))
    ]
    test_df = []
    known_defrauded_customers = set(train_df[train_df.TX_FRAUD == 1].CUSTOMER_ID)
    start_tx_time_days_training = train_df.TX_TIME_DAYS.min()
    for day in range(delta_test):
        test_df_day = transactions_df[
            transactions_df.TX_TIME_DAYS == start_tx_time_days_training + delta_train + delta_delay + day
        ]
        test_df_day_delay_period = transactions_df[
            transactions_df.TX_TIME_DAYS == start_tx_time_days_training + delta_train + day - 1
        ]
        new_defrauded_customers = set(
            test_df_day_delay_period[test_df_day_delay_period.TX_FRAUD == 1].CUSTOMER_ID
        )
        known_defrauded_customers = known_defrauded_customers.union(new_defrauded_customers)
        test_df_day = test_df_day[~test_df_day.CUSTOMER_ID.isin(known_defrauded_customers)]
        test_df.append(test_df_day)
    return pd.concat(test_df)


def _random_transactions(seed: int, days: int = 30, cards: int = 60, per_day: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(days), per_day)
    seconds = rng.integers(0, 86_400, len(day))
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(day)),
            "TX_DATETIME": DAY0 + pd.to_timedelta(day, unit="D") + pd.to_timedelta(seconds, unit="s"),
            "TX_TIME_DAYS": day,
            "CUSTOMER_ID": rng.integers(0, cards, len(day)),
            "TX_FRAUD": (rng.random(len(day)) < 0.03).astype(int),
        }
    )


@pytest.mark.parametrize(
    ("seed", "train_days", "delay_days", "test_days"),
    [(0, 7, 7, 7), (1, 5, 3, 4), (2, 3, 1, 5), (3, 4, 0, 3)],  # a delay shorter than the test too
)
def test_exclusion_keeps_exactly_the_handbooks_test_set(
    seed: int, train_days: int, delay_days: int, test_days: int
) -> None:
    tx = _random_transactions(seed)
    train_start = _day(6)
    test_start = train_start + pd.Timedelta(days=train_days + delay_days)
    excluded = handbook_known_compromised(
        tx["CUSTOMER_ID"],
        tx["TX_DATETIME"],
        tx["TX_FRAUD"],
        train_start=train_start,
        test_start=test_start,
        test_end=test_start + pd.Timedelta(days=test_days),
        delay_days=delay_days,
    )
    in_test = (tx["TX_DATETIME"] >= test_start) & (
        tx["TX_DATETIME"] < test_start + pd.Timedelta(days=test_days)
    )
    kept = set(tx.loc[in_test.to_numpy() & ~excluded, "TRANSACTION_ID"])
    expected = set(_handbook_test_set(tx, train_start, train_days, delay_days, test_days).TRANSACTION_ID)
    assert kept == expected
    assert len(expected) < in_test.sum()  # the example does drop transactions


def _handbook_card_precision_top_k(predictions_df: pd.DataFrame, top_k: int) -> float:
    """The Handbook's ``card_precision_top_k`` (cards detected earlier removed), as published."""
    list_days = sorted(predictions_df["TX_TIME_DAYS"].unique())
    list_detected_compromised_cards: list[int] = []
    per_day = []
    for day in list_days:
        df_day = predictions_df[predictions_df["TX_TIME_DAYS"] == day][
            ["predictions", "CUSTOMER_ID", "TX_FRAUD"]
        ]
        df_day = df_day[~df_day.CUSTOMER_ID.isin(list_detected_compromised_cards)]
        df_day = (
            df_day.groupby("CUSTOMER_ID").max().sort_values(by="predictions", ascending=False).reset_index()
        )
        top = df_day.head(top_k)
        detected = list(top[top.TX_FRAUD == 1].CUSTOMER_ID)
        per_day.append(len(detected) / top_k)
        list_detected_compromised_cards.extend(detected)
    return float(np.mean(per_day))


@pytest.mark.parametrize("k", [5, 20])
def test_card_precision_matches_the_handbooks(k: int) -> None:
    tx = _random_transactions(4, days=6, cards=40, per_day=80)
    rng = np.random.default_rng(5)
    # Cards 0-9 are compromised for days (half their transactions are fraud) and frauds score
    # higher on average: cards are detected and removed from later days.
    compromised = tx["CUSTOMER_ID"].to_numpy() < 10
    tx["TX_FRAUD"] = (compromised & (rng.random(len(tx)) < 0.5)).astype(int)
    tx["predictions"] = rng.random(len(tx)) + tx["TX_FRAUD"] * 0.6
    ours, _ = card_precision_at_k(
        tx["TX_TIME_DAYS"], tx["CUSTOMER_ID"], tx["predictions"], tx["TX_FRAUD"], k, remove_detected=True
    )
    assert ours == pytest.approx(_handbook_card_precision_top_k(tx, k))
    kept, _ = card_precision_at_k(tx["TX_TIME_DAYS"], tx["CUSTOMER_ID"], tx["predictions"], tx["TX_FRAUD"], k)
    assert kept != ours  # removing detected cards changes the figure here


def _marked_test_set() -> tuple[pd.DataFrame, np.ndarray]:
    # Two test days, k = 2. Card K is known compromised (left out by the Handbook's protocol).
    # Day 1: K 0.99 (fraud, known), A 0.9 (fraud), B 0.8, C 0.1.
    # Day 2: A 0.95 (fraud again), D 0.7 (fraud), B 0.5.
    return pd.DataFrame(
        {
            "card_id": ["K", "A", "B", "C", "A", "B", "D"],
            "timestamp": pd.to_datetime(["2024-01-08 10:00"] * 4 + ["2024-01-09 10:00"] * 3, utc=True),
            "is_fraud": [1, 1, 0, 0, 1, 0, 1],
            KNOWN_COMPROMISED: [True, False, False, False, False, False, False],
        }
    ), np.array([0.99, 0.9, 0.8, 0.1, 0.95, 0.5, 0.7])


def test_handbook_protocol_scores_its_rows_and_removes_detected_cards() -> None:
    test, scores = _marked_test_set()
    hb = evaluate(test, scores, threshold=0.5, k=2, protocol="handbook")
    m = hb.metrics
    assert hb.protocol == "handbook"
    assert (m["test_transactions"], m["test_frauds"]) == (6, 3)  # K's row is out
    # Day 1: top 2 = A (fraud), B -> 0.5. Day 2: A, detected on day 1, is out: top 2 = D
    # (fraud), B -> 0.5. Keeping detected cards, day 2 would be A, D -> 1.0.
    assert hb.card_precision_per_day == {"2024-01-08": 0.5, "2024-01-09": 0.5}
    assert m["card_precision_at_2"] == pytest.approx(0.5)
    assert m["card_precision_at_2_all_cards"] == pytest.approx(0.75)
    assert m["handbook_card_precision_at_2"] == m["card_precision_at_2"]
    # The window protocol keeps K: day 1 top 2 = K, A -> 1.0; day 2 (K and A detected) D, B
    # -> 0.5.
    assert m["window_card_precision_at_2"] == pytest.approx(0.75)
    assert (m["window_test_transactions"], m["handbook_test_transactions"]) == (7, 6)
    # AUC over the Handbook's rows: frauds A 0.9, A 0.95, D 0.7 against B 0.8, C 0.1, B 0.5;
    # with K (0.99, fraud) as well: 11 of 12 pairs.
    assert m["auc_roc"] == pytest.approx(8 / 9)
    assert m["window_auc_roc"] == pytest.approx(11 / 12)
    window = evaluate(test, scores, threshold=0.5, k=2, protocol="window")
    assert window.protocol == "window"
    for name in ("auc_roc", "average_precision", "card_precision_at_2", "test_transactions"):
        assert window.metrics[name] == m[f"window_{name}"]
        assert window.metrics[f"handbook_{name}"] == m[name]
    # The score distribution is the live scores' reference: every row, whatever the protocol.
    assert hb.score_distribution.to_dict() == window.score_distribution.to_dict()


def test_handbook_protocol_needs_the_marked_test_set() -> None:
    test, scores = _marked_test_set()
    unmarked = test.drop(columns=[KNOWN_COMPROMISED])
    with pytest.raises(ValueError, match=KNOWN_COMPROMISED):
        evaluate(unmarked, scores, threshold=0.5, k=2, protocol="handbook")
    plain = evaluate(unmarked, scores, threshold=0.5, k=2).metrics
    assert "window_auc_roc" in plain
    assert "handbook_auc_roc" not in plain
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        protocol_rows(test, "monthly")


def test_the_dataset_marks_cards_known_compromised_from_the_ground_truth() -> None:
    # Three cards with a transaction a day; frauds: C0 on day 40 and C1 on day 42 (training
    # window, C1's reported after the cutoff), C2 on day 52 (the first test day).
    w = plan_windows("2024-01-01", "2024-03-01", train_start="2024-02-08", history_days=7, burn_in_days=30)
    test = build_datasets(_raw(), w).test
    marked = test.groupby("card_id")[KNOWN_COMPROMISED].agg(["all", "any"])
    # The Handbook knows every training-window fraud, reported in time for training or not.
    assert marked.loc["C0", "all"]
    assert marked.loc["C1", "all"]
    assert not marked.loc["C2", "any"]
