"""The feature job's per-batch card state: each card's latest state, and the feature log rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_features.card_state import CardFeatureBatch
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
