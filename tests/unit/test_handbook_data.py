"""The Handbook's generator, pinned to figures the Handbook itself prints (its chapter 3.2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_producers.handbook_data import (
    COMPROMISED_CUSTOMER_DAYS,
    COMPROMISED_TERMINAL_DAYS,
    HANDBOOK_COLUMNS,
    _customer_rows,
    _pandas_sample,
    _profiles,
    handbook_transactions,
)
from fraud_producers.replay import ColumnMapping, replay_frame

pytestmark = pytest.mark.unit


def test_customer_profiles_are_the_handbooks() -> None:
    # The Handbook's table of its first five customers (random_state 0): x, y, mean amount,
    # mean transactions per day.
    printed = [
        (54.881350, 71.518937, 62.262521, 2.179533),
        (42.365480, 64.589411, 46.570785, 3.567092),
        (96.366276, 38.344152, 80.213879, 2.115580),
        (56.804456, 92.559664, 11.748426, 0.348517),
        (2.021840, 83.261985, 78.924891, 3.480049),
    ]
    np.testing.assert_allclose(_profiles(5, 0, customers=True), printed, atol=5e-7)


def test_a_customers_transactions_are_drawn_in_the_handbooks_order() -> None:
    # The Handbook's example: its first customer, terminals 0-3 available, five days from
    # 2018-04-01; its first three rows are (second, day, terminal, amount).
    profile = _profiles(1, 0, customers=True)[0]
    rows = _customer_rows(profile, [0, 1, 2, 3], days=5, seed=0)
    assert rows[:3] == [(26_345, 0, 3, 123.59), (68_522, 0, 3, 46.51), (64_816, 0, 0, 77.34)]
    assert rows[3][:2] == (86_400 + 15 * 3_600 + 13 * 60 + 2, 1)  # 2018-04-02 15:13:02
    assert _customer_rows(profile, [], days=5, seed=0) == []  # no terminal: no transactions


@pytest.mark.parametrize(("n", "k", "seed"), [(10_000, 2, 0), (10_000, 2, 17), (5_000, 3, 181)])
def test_compromise_draws_are_pandas_sample(n: int, k: int, seed: int) -> None:
    expected = pd.Series(np.arange(n)).sample(n=k, random_state=seed).to_numpy()
    np.testing.assert_array_equal(_pandas_sample(n, k, seed), expected)


def small(seed: int = 0) -> pd.DataFrame:
    return handbook_transactions(n_customers=60, n_terminals=40, days=40, radius=30.0, seed=seed)


def test_the_scenarios_follow_the_handbooks_rules() -> None:
    frame = small()
    assert list(frame.columns) == list(HANDBOOK_COLUMNS)
    assert frame["TX_DATETIME"].is_monotonic_increasing
    assert (frame["TRANSACTION_ID"] == np.arange(len(frame))).all()
    day = frame["TX_TIME_DAYS"].to_numpy()
    last = int(day.max())
    terminal, customer = frame["TERMINAL_ID"].to_numpy(), frame["CUSTOMER_ID"].to_numpy()
    compromised = np.zeros(len(frame), bool)
    stolen_window = np.zeros(len(frame), bool)
    for d in range(last):
        window = (day >= d) & (day < d + COMPROMISED_TERMINAL_DAYS)
        compromised |= window & np.isin(terminal, _pandas_sample(40, 2, d))
        window = (day >= d) & (day < d + COMPROMISED_CUSTOMER_DAYS)
        stolen_window |= window & np.isin(customer, _pandas_sample(60, 3, d))
    scenario, fraud = frame["TX_FRAUD_SCENARIO"].to_numpy(), frame["TX_FRAUD"].to_numpy()
    assert compromised.any()
    assert stolen_window.any()
    # Every transaction at a compromised terminal in its window is fraud; scenario 3 (drawn
    # last) only within a compromised customer's window; nothing else is fraud but outliers.
    assert fraud[compromised].all()
    assert (scenario[compromised] >= 2).all()
    assert stolen_window[scenario == 3].all()
    assert (scenario[scenario == 3] == 3).any()
    outlier = (scenario == 1) | ((fraud == 1) & ~compromised & ~stolen_window)
    assert (frame["TX_AMOUNT"].to_numpy()[outlier] > 220).all()
    assert ((fraud == 1) == (scenario > 0)).all()


def test_seeds_are_reproducible_and_seed_zero_is_the_handbooks() -> None:
    pd.testing.assert_frame_equal(small(0), small(0))
    assert not small(1)["TX_AMOUNT"].equals(small(0)["TX_AMOUNT"])
    with pytest.raises(ValueError, match="seed"):
        handbook_transactions(n_customers=5, n_terminals=5, days=2, seed=-1)


def test_the_frame_reads_as_the_handbooks_published_files_do() -> None:
    from pathlib import Path

    frame = replay_frame(small(), ColumnMapping.handbook(), Path("handbook"))
    raw = small()
    assert len(frame) == len(raw)
    assert int(frame["is_fraud"].sum()) == int(raw["TX_FRAUD"].sum())
    assert str(frame["timestamp"].dt.tz) == "UTC"
