"""The feature job's per-batch card state: each card's latest state, and the feature log rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_features.card_state import DUPLICATES, CardFeatureBatch, PartitionState
from fraud_features.events import Transaction
from fraudcore import features as F


def _reference_latest(card_ids: np.ndarray, t_us: np.ndarray) -> tuple[list[str], list[int], list[int]]:
    """The DataFrame formulation the job used before: sort by (time, row), last per card."""
    frame = pd.DataFrame({"card": card_ids, "t": t_us, "row": np.arange(len(t_us))})
    latest = frame.sort_values(["t", "row"]).groupby("card", sort=False).tail(1)
    return list(latest["card"]), list(latest["t"]), list(latest["row"])


@pytest.mark.parametrize("seed", range(30))
def test_latest_states_match_the_dataframe_formulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    card_ids = np.array([f"C{c}" for c in rng.integers(0, 8, n)], dtype=object)
    t_us = rng.integers(0, 20, n).astype(np.int64)  # many ties: the row order decides them
    row_marker = np.arange(n, dtype=np.float64)
    state = dict.fromkeys(F.CARD_STATE, row_marker)
    batch = CardFeatureBatch(card_ids, t_us, F.CardFeatures(served={}, state=state))

    cards, times, states = batch.latest_states()

    want_cards, want_times, want_rows = _reference_latest(card_ids, t_us)
    assert cards == want_cards
    assert list(times) == want_times
    assert list(states[F.CARD_STATE[0]]) == want_rows


def test_a_re_forwarded_transaction_is_dropped_and_a_second_payment_is_not() -> None:
    """After a broker failure the at-least-once quality gate forwards some records twice:
    the same event, whether its first copy is in the card's history or still held."""
    state = PartitionState()
    first = Transaction(0, "t1", "C1", "T1", 12.5, 1_000_000)
    state.update_histories(state.fresh([first]))
    held = Transaction(1, "t2", "C1", "T1", 8.0, 2_000_000)
    state.held.extend(state.fresh([held]))
    before = DUPLICATES._value.get()
    repeats = [
        Transaction(5, "t1", "C1", "T1", 12.5, 1_000_000),  # in the history
        Transaction(6, "t2", "C1", "T1", 8.0, 2_000_000),  # held, not yet in the history
    ]
    other_payments = [
        Transaction(7, "t3", "C1", "T1", 12.5, 1_000_001),  # a microsecond later
        Transaction(8, "t4", "C1", "T2", 12.5, 1_000_000),  # another terminal
        Transaction(9, "t5", "C1", "T1", 12.51, 1_000_000),  # another amount
        Transaction(10, "t6", "C2", "T1", 12.5, 1_000_000),  # another card
    ]
    assert state.fresh(repeats + other_payments) == other_payments
    assert DUPLICATES._value.get() == before + 2
    assert state.fresh(
        [Transaction(11, "t7", "C3", "T1", 1.0, 5), Transaction(12, "t7", "C3", "T1", 1.0, 5)]
    ) == [Transaction(11, "t7", "C3", "T1", 1.0, 5)]
