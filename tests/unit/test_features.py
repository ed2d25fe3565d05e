"""Window math against a brute-force reference on random streams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudcore import features as F

DAY = 86_400


def _reference_card(events: list[tuple[int, int, int, int]]) -> list[dict[str, float]]:
    """Served card features by brute force: state after the card's previous event by time."""
    out = []
    order = sorted(range(len(events)), key=lambda i: (events[i][0], events[i][1], i))
    rank = {i: r for r, i in enumerate(order)}
    for i, (card, _t, _c, _term) in enumerate(events):
        prev = [j for j in range(len(events)) if events[j][0] == card and rank[j] < rank[i]]
        if not prev:
            out.append(dict.fromkeys(F.CARD_FEATURES, 0.0) | {"card_last_tx_time": float("nan")})
            continue
        p = max(prev, key=lambda j: rank[j])
        tp = events[p][1]
        upto = [j for j in [*prev, p] if rank[j] <= rank[p]]
        row: dict[str, float] = {}
        for name, w in {**F.CARD_COUNT_SUM_WINDOWS, **F.CARD_COUNT_MEAN_WINDOWS}.items():
            inside = [j for j in set(upto) if tp - w * 1_000_000 < events[j][1] <= tp]
            total = sum(events[j][2] for j in inside) / 100
            row[f"card_tx_count_{name}"] = len(inside)
            if name in F.CARD_COUNT_SUM_WINDOWS:
                row[f"card_amount_sum_{name}"] = total
            else:
                row[f"card_mean_amount_{name}"] = total / len(inside) if inside else 0.0
        inside = [j for j in set(upto) if tp - DAY * 1_000_000 < events[j][1] <= tp]
        row["card_distinct_terminals_24h"] = len({events[j][3] for j in inside})
        row["card_last_tx_time"] = tp / 1_000_000
        out.append(row)
    return out


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 3),  # card
        st.integers(0, 40 * DAY).map(lambda s: s * 1_000_000),  # time (µs)
        st.integers(1, 50_000),  # cents
        st.integers(0, 5),  # terminal
    ),
    min_size=1,
    max_size=60,
)


@given(events_strategy, st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_card_features_match_brute_force(events: list[tuple[int, int, int, int]], scale: int) -> None:
    # Squeeze times sometimes, so the short windows see many events.
    events = [(c, t // (10**scale), cents, term) for c, t, cents, term in events]
    arr = np.array(events, dtype=np.int64)
    got = F.card_features(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]).served
    for i, expected in enumerate(_reference_card(events)):
        for name, value in expected.items():
            if np.isnan(value):
                assert np.isnan(got[name][i])
            else:
                assert abs(got[name][i] - value) < 1e-9, (name, i)


def test_distinct_terminals_in_a_card_testing_burst() -> None:
    """Thousands of rows in one card's day (a card-testing attack) against a direct count."""
    rng = np.random.default_rng(11)
    n = 1500
    t = np.sort(rng.integers(0, 2 * DAY, n)) * 1_000_000
    terminal = rng.integers(0, 40, n)
    state = F.card_state_after_each(np.zeros(n, dtype=np.int64), t, np.ones(n, dtype=np.int64), terminal)
    lo = 0
    for i in range(n):
        while t[lo] <= t[i] - DAY * 1_000_000:
            lo += 1
        assert state["card_distinct_terminals_24h"][i] == len(set(terminal[lo : i + 1].tolist())), i


def test_history_plus_batch_gives_the_same_served_values_as_everything_at_once() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    card = rng.integers(0, 50, n)
    t = np.sort(rng.integers(0, 60 * DAY, n)) * 1_000_000
    cents = rng.integers(100, 20_000, n)
    term = rng.integers(0, 30, n)
    whole = F.card_features(card, t, cents, term).served
    # The streaming job's view: per card, only the 30 days before the card's latest event,
    # plus the batch.
    batch = np.arange(1500, 1600)
    before = np.arange(n) < 1500
    last = pd.Series(t[before]).groupby(card[before]).max()
    horizon = last.reindex(card).to_numpy() - F.CARD_HISTORY_S * 1_000_000
    keep = before & np.isin(card, card[batch]) & (t > np.nan_to_num(horizon, nan=0))
    rows = np.concatenate([np.flatnonzero(keep), batch])
    query = np.isin(rows, batch)
    partial = F.card_features(card[rows], t[rows], cents[rows], term[rows], query).served
    for name in F.CARD_STATE:
        np.testing.assert_allclose(partial[name], whole[name][batch], rtol=0, atol=1e-9)


def _reference_terminal(
    q_term: int, q_hour: int, txs: list[tuple[int, int]], frauds: list[tuple[int, int, int]], delay: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    start = q_hour * F.HOUR_US
    for name, w in F.TERMINAL_WINDOWS_DAYS.items():
        lo, hi = start - (delay + w) * F.DAY_US, start - delay * F.DAY_US
        count = sum(1 for term, t in txs if term == q_term and lo <= t < hi)
        known = sum(1 for term, t, rep in frauds if term == q_term and lo <= t < hi and rep < start)
        out[f"terminal_tx_count_{name}"] = count
        out[f"terminal_risk_{name}"] = known / count if count else 0.0
    return out


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60 * DAY)), min_size=1, max_size=80),
    st.data(),
)
@settings(max_examples=100, deadline=None)
def test_terminal_risk_matches_brute_force_and_never_uses_unreported_labels(
    txs_s: list[tuple[int, int]], data: st.DataObject
) -> None:
    txs = [(term, t * 1_000_000) for term, t in txs_s]
    fraud_idx = data.draw(st.lists(st.integers(0, len(txs) - 1), unique=True, max_size=len(txs)))
    frauds = [
        (txs[i][0], txs[i][1], txs[i][1] + data.draw(st.integers(0, 14 * DAY)) * 1_000_000) for i in fraud_idx
    ]
    hours = st.integers(0, 70 * F.HOURS_PER_DAY)
    queries = data.draw(st.lists(st.tuples(st.integers(0, 2), hours), min_size=1, max_size=20))
    arr = np.array(txs, dtype=np.int64)
    fr = np.array(frauds, dtype=np.int64).reshape(-1, 3)
    q = np.array(queries, dtype=np.int64)
    got = F.terminal_features(q[:, 0], q[:, 1], arr[:, 0], arr[:, 1], fr[:, 0], fr[:, 1], fr[:, 2], 7)
    for k, (term, hour) in enumerate(queries):
        for name, value in _reference_terminal(term, hour, txs, frauds, 7).items():
            assert abs(got[name][k] - value) < 1e-12, (name, term, hour)


def test_a_label_reported_after_the_hour_began_is_not_used() -> None:
    hour = 20 * F.HOURS_PER_DAY + 13
    start = hour * F.HOUR_US
    t = np.array([start - 8 * F.DAY_US + 5], dtype=np.int64)  # inside the 1-day window of `hour`
    term = np.array([0])
    for reported, expected in [
        (start - 1, 1.0),
        (start, 0.0),
        (start + 60 * F.US_PER_S, 0.0),
    ]:
        got = F.terminal_features(np.array([0]), np.array([hour]), term, t, term, t, np.array([reported]))
        assert got["terminal_risk_1d"][0] == expected
        assert got["terminal_tx_count_1d"][0] == 1.0


def test_terminal_windows_end_on_the_hour_a_label_delay_before_the_transaction() -> None:
    """A payment at 09:30 counts for a transaction at 10:xx a week later, not for one at
    09:59, the hour it is in: the windows end at the start of the transaction's UTC hour."""
    paid = 20 * F.DAY_US + 9 * F.HOUR_US + 30 * 60 * F.US_PER_S
    term, t = np.array([0]), np.array([paid], dtype=np.int64)
    week_on = paid + 7 * F.DAY_US
    hours = F.hour_of(np.array([week_on + 29 * 60 * F.US_PER_S, week_on + 31 * 60 * F.US_PER_S]))
    got = F.terminal_features(np.zeros(2, dtype=np.int64), hours, term, t, term, t, t + F.DAY_US)
    assert list(got["terminal_tx_count_1d"]) == [0.0, 1.0]
    assert list(got["terminal_risk_1d"]) == [0.0, 1.0]


def test_request_features() -> None:
    ts = pd.Series([datetime(2026, 3, 7, 3, 0, tzinfo=UTC), datetime(2026, 3, 9, 12, 0, tzinfo=UTC)])
    t_us = F.to_us(ts)
    card = {
        "card_mean_amount_30d": np.array([20.0, 0.0]),
        "card_last_tx_time": np.array([t_us[0] / 1e6 - 60, np.nan]),
    }
    got = F.request_features(np.array([50.0, 10.0]), t_us, card)
    assert list(got["amount_over_card_mean_30d"]) == [2.5, 1.0]
    assert list(got["seconds_since_card_last_tx"]) == [60.0, F.NO_PREVIOUS_S]
    assert list(got["is_night"]) == [1.0, 0.0]
    assert list(got["is_weekend"]) == [1.0, 0.0]  # a Saturday, then a Monday


def test_offline_features_are_point_in_time() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tx = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "card_id": ["C1", "C1", "C1"],
            "terminal_id": ["T1", "T1", "T1"],
            "amount": [10.0, 30.0, 50.0],
            "timestamp": [start, start + timedelta(minutes=5), start + timedelta(days=9)],
        }
    )
    labels = pd.DataFrame({"transaction_id": ["a"], "reported_at": [start + timedelta(days=8, hours=1)]})
    f = F.offline_features(tx, labels).set_index("transaction_id")
    assert f.loc["a", "card_tx_count_30d"] == 0  # nothing before the first
    assert f.loc["b", "card_tx_count_10m"] == 1
    assert f.loc["b", "card_amount_sum_10m"] == 10.0
    assert f.loc["c", "card_tx_count_30d"] == 2
    assert f.loc["c", "card_mean_amount_30d"] == 20.0
    # c is at 00:00 on day 9: its 1-day window is day 1 (empty), its 7-day window days [-5, 2)
    # holds a and b, and a's label (reported at 01:00 on day 8) is known before c's hour began.
    assert f.loc["c", "terminal_tx_count_1d"] == 0
    assert f.loc["c", "terminal_tx_count_7d"] == 2
    assert f.loc["c", "terminal_risk_7d"] == 0.5
    assert f.loc["b", "terminal_risk_30d"] == 0.0


def test_terminal_features_of_any_hour_equal_those_of_the_hours_own_transactions() -> None:
    from fraudcore.features import (
        TERMINAL_FEATURES,
        hour_of,
        offline_features,
        offline_terminal_features,
        to_us,
    )
    from tests.helpers import simulated

    tx, lab = simulated(days=30, customers=80, terminals=60)
    rows = offline_features(tx, lab)
    hours = hour_of(to_us(tx["timestamp"]))
    same = offline_terminal_features(tx, lab, tx["terminal_id"].to_numpy(), hours)
    for name in TERMINAL_FEATURES:
        np.testing.assert_array_equal(same[name], rows[name].to_numpy())
    # A day before: what a quiet terminal's online row may still hold.
    earlier = offline_terminal_features(tx, lab, tx["terminal_id"].to_numpy(), hours - F.HOURS_PER_DAY)
    assert any((earlier[n] != rows[n].to_numpy()).any() for n in TERMINAL_FEATURES)
    unknown = offline_terminal_features(tx, lab, np.array(["T-none"]), hours[:1])
    assert all(unknown[n][0] == 0 for n in TERMINAL_FEATURES)


def _terminal_risk_on_day_9(labels: pd.DataFrame) -> float:
    """The 7-day terminal risk of a day-9 transaction at a terminal with two day-0 payments."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tx = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "card_id": ["C1", "C2", "C3"],
            "terminal_id": ["T1", "T1", "T1"],
            "amount": [10.0, 30.0, 50.0],
            "timestamp": [start, start + timedelta(minutes=5), start + timedelta(days=9)],
        }
    )
    features = F.offline_features(tx, labels).set_index("transaction_id")
    return float(features["terminal_risk_7d"].to_dict()["c"])


def _reported(days: list[float]) -> list[datetime]:
    return [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in days]


def test_terminal_risk_counts_fraud_verdicts_only_each_transaction_once() -> None:
    # Labels archived before the verdict fields existed: chargebacks of frauds.
    old = pd.DataFrame({"transaction_id": ["a"], "reported_at": _reported([2])})
    assert _terminal_risk_on_day_9(old) == 0.5
    legitimate = pd.DataFrame(
        {
            "transaction_id": ["a", "b"],
            "reported_at": _reported([1, 2]),
            "source": ["analyst", "analyst"],
            "is_fraud": [False, False],
        }
    )
    assert _terminal_risk_on_day_9(legitimate) == 0.0
    # An analyst's fraud verdict and the later chargeback are one fraud, not two.
    twice = pd.DataFrame(
        {
            "transaction_id": ["a", "a"],
            "reported_at": _reported([1, 3]),
            "source": ["analyst", None],
            "is_fraud": [True, None],
        }
    )
    assert _terminal_risk_on_day_9(twice) == 0.5


def test_terminal_risk_counts_a_fraud_from_its_first_fraud_verdict() -> None:
    # "Legitimate" on day 1, a chargeback on day 10: unknown on day 9, whatever came first.
    late = pd.DataFrame(
        {
            "transaction_id": ["a", "a"],
            "reported_at": _reported([1, 10]),
            "source": ["analyst", "chargeback"],
            "is_fraud": [False, True],
        }
    )
    assert _terminal_risk_on_day_9(late) == 0.0
    # A chargeback that breaks the contract (is_fraud false) is left out, as the stream drops it.
    broken = pd.DataFrame(
        {
            "transaction_id": ["a"],
            "reported_at": _reported([2]),
            "source": ["chargeback"],
            "is_fraud": [False],
        }
    )
    assert _terminal_risk_on_day_9(broken) == 0.0
