"""Every feature's one definition, shared by the streaming job, the offline backfill,
training and serving (no training/serving skew).

The functions are vectorised over numpy arrays. The streaming job calls them on a card's
recent history plus a micro-batch; the backfill calls them on the whole archive; both get
the same numbers because they run the same code on the same events.

Definitions (times in UTC; ``w`` a window length):

* **Card features** describe the card as it stood just before the transaction: the state
  after the card's previous transaction ``p`` (by event time), over windows ``(t_p - w, t_p]``:
  transaction count and amount sum over 10 minutes and 1 hour; count and mean amount over
  1, 7 and 30 days (the Fraud Detection Handbook's customer features); distinct terminals
  over 24 hours. A card with no previous transaction has all zeros. This is exactly what
  the online store holds when the transaction is scored: the streaming job writes each
  card's state after each of its transactions.
* **Terminal features** follow the Handbook's delayed terminal risk on whole UTC hours: for
  a transaction in the hour starting at ``h`` and a window of ``w`` days, the terminal's
  transaction count over ``[h - D - w, h - D)`` and the share of those that are known fraud,
  where a fraud is known only if its label was reported before ``h``. ``D`` is the label
  delay (7 days). The values depend only on ``(terminal, hour)``, so they are fixed for the
  whole hour. (The Handbook ends its windows at the transaction's own time. Whole hours keep
  its figures while letting the streaming job count per hour and compute a terminal's values
  once per hour; on whole UTC days a transaction would miss on average half a day of a
  terminal's most recently known frauds, which is what reveals a freshly compromised one.)
  A transaction counts as known fraud once, from its first label whose verdict says fraud
  (``fraudcore.events.label_is_fraud``); an analyst's "legitimate" never counts, and a later
  verdict does not take a counted fraud back (the streaming job's counters only grow).
* **Request-time features** come from the transaction itself and the card features:
  amount, amount over the card's 30-day mean, seconds since the card's previous
  transaction, night (before 06:00 UTC) and weekend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fraudcore.events import label_is_fraud

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

US_PER_S = 1_000_000
DAY_US = 86_400 * US_PER_S
HOUR_US = 3_600 * US_PER_S
HOURS_PER_DAY = 24
LABEL_DELAY_DAYS = 7
NO_PREVIOUS_S = 30 * 86_400.0  # "seconds since the previous transaction" when there is none (capped)

CARD_COUNT_SUM_WINDOWS = {"10m": 600, "1h": 3_600}
CARD_COUNT_MEAN_WINDOWS = {"1d": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
CARD_HISTORY_S = 30 * 86_400  # the longest card window: history older than this never matters
DISTINCT_TERMINALS_WINDOW_S = 86_400
TERMINAL_WINDOWS_DAYS = {"1d": 1, "7d": 7, "30d": 30}
# How far behind the transaction's hour a terminal's online values may be: the terminal view's
# TTL. The streaming job writes no older ones; the skew check counts those as at their watermark.
TERMINAL_VALUES_TTL_HOURS = 48

CARD_FEATURES = [
    "card_tx_count_10m",
    "card_amount_sum_10m",
    "card_tx_count_1h",
    "card_amount_sum_1h",
    "card_tx_count_1d",
    "card_mean_amount_1d",
    "card_tx_count_7d",
    "card_mean_amount_7d",
    "card_tx_count_30d",
    "card_mean_amount_30d",
    "card_distinct_terminals_24h",
]
CARD_STATE = [*CARD_FEATURES, "card_last_tx_time"]  # what the online store holds per card
TERMINAL_FEATURES = [f"terminal_{kind}_{w}" for w in TERMINAL_WINDOWS_DAYS for kind in ("tx_count", "risk")]
REQUEST_FEATURES = [
    "amount",
    "amount_over_card_mean_30d",
    "seconds_since_card_last_tx",
    "is_night",
    "is_weekend",
]
MODEL_FEATURES = [*REQUEST_FEATURES, *CARD_FEATURES, *TERMINAL_FEATURES]


# --------------------------------------------------------------------------- helpers
def to_cents(amounts: npt.ArrayLike) -> I64:
    """Amounts as integer cents, so window sums are exact whatever order they are added in."""
    return np.rint(np.asarray(amounts, dtype=np.float64) * 100).astype(np.int64)


def to_us(timestamps: pd.Series | pd.DatetimeIndex) -> I64:
    """UTC timestamps as integer microseconds since the epoch."""
    ts = pd.to_datetime(timestamps, utc=True)
    return np.asarray(ts.astype("datetime64[us, UTC]").astype("int64"), dtype=np.int64)


def _keys(entity: I64, t_us: I64) -> npt.NDArray[np.complex128]:
    # numpy orders complex numbers lexicographically (real, then imaginary), so one
    # searchsorted finds (entity, time) bounds. Both parts are exact in float64 (< 2**53).
    return entity.astype(np.float64) + 1j * t_us.astype(np.float64)


def codes(values: npt.ArrayLike) -> I64:
    """Dense integer codes for ids (the order of codes is irrelevant to every feature)."""
    return np.asarray(pd.factorize(np.asarray(values))[0], dtype=np.int64)


# --------------------------------------------------------------------------- card
def card_state_after_each(card: I64, t_us: I64, cents: I64, terminal: I64) -> dict[str, F64]:
    """The card state after each event, over windows ``(t - w, t]``.

    Inputs must be sorted by (card, time); ties keep the stream's order.
    """
    n = len(card)
    out: dict[str, F64] = {}
    if n == 0:
        return {name: np.zeros(0) for name in CARD_STATE}
    keys = _keys(card, t_us)
    csum = np.concatenate([[0], np.cumsum(cents)])
    hi = np.arange(1, n + 1)
    lo_by_window: dict[int, I64] = {}

    def lo_for(window_s: int) -> I64:
        if window_s not in lo_by_window:
            bound = _keys(card, t_us - window_s * US_PER_S)
            lo_by_window[window_s] = np.searchsorted(keys, bound, side="right").astype(np.int64)
        return lo_by_window[window_s]

    for name, w in CARD_COUNT_SUM_WINDOWS.items():
        lo = lo_for(w)
        out[f"card_tx_count_{name}"] = (hi - lo).astype(np.float64)
        out[f"card_amount_sum_{name}"] = (csum[hi] - csum[lo]) / 100.0
    for name, w in CARD_COUNT_MEAN_WINDOWS.items():
        lo = lo_for(w)
        count = hi - lo
        out[f"card_tx_count_{name}"] = count.astype(np.float64)
        out[f"card_mean_amount_{name}"] = (csum[hi] - csum[lo]) / 100.0 / np.maximum(count, 1)
    out["card_distinct_terminals_24h"] = _distinct_in_window(
        card, t_us, terminal, lo_for(DISTINCT_TERMINALS_WINDOW_S), DISTINCT_TERMINALS_WINDOW_S
    )
    out["card_last_tx_time"] = t_us / US_PER_S
    return out


def _distinct_in_window(card: I64, t_us: I64, terminal: I64, lo: I64, window_s: int) -> F64:
    """Distinct terminals among rows ``lo[i]..i`` (rows sorted by card and time).

    Row j counts for row i when j is in i's window and the card's previous use of j's
    terminal lies outside that window (``prev[j] <= t[i] - window``). Both conditions hold
    for a contiguous run of rows i (edges and window starts only grow along a card), so each
    j adds 1 to one range of rows: a difference array, O(n log n) however many rows a window
    holds (a card-testing burst can put thousands in one day)."""
    n = len(card)
    if n == 0:
        return np.zeros(0)
    order = np.lexsort((np.arange(n), t_us, terminal, card))  # by card, terminal, time, position
    prev = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    same = (card[order][1:] == card[order][:-1]) & (terminal[order][1:] == terminal[order][:-1])
    prev[order[1:][same]] = t_us[order[:-1][same]]
    edge = t_us - window_s * US_PER_S
    # first row i of j's card with edge[i] >= prev[j]: search (card, time rank) keys, which
    # are sorted because edges grow along each card
    group = np.concatenate([[0], np.cumsum(card[1:] != card[:-1])]).astype(np.int64)
    times, rank = np.unique(np.concatenate([edge, prev]), return_inverse=True)
    span = np.int64(len(times) + 1)
    first = np.searchsorted(group * span + rank[:n], group * span + rank[n:], side="left")
    start = np.maximum(first, np.arange(n))
    stop = np.searchsorted(lo, np.arange(n), side="right")  # rows i with lo[i] <= j, exclusive
    counts = start < stop
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, start[counts], 1)
    np.add.at(diff, stop[counts], -1)
    return np.cumsum(diff[:n]).astype(np.float64)


@dataclass
class CardFeatures:
    """Served card features for the query rows, and the state after every row."""

    served: dict[str, F64]  # per query row, in the caller's order
    state: dict[str, F64]  # per input row, in the caller's order (state after that event)


def card_features(
    card: I64, t_us: I64, cents: I64, terminal: I64, query: npt.NDArray[np.bool_] | None = None
) -> CardFeatures:
    """Card features as they stood just before each query row (see the module docstring).

    ``card``, ``terminal``: integer codes; rows may come in any order (they are sorted
    here by card, time and then input position). ``query`` selects the rows whose served
    features are wanted (default: all).
    """
    n = len(card)
    order = np.lexsort((np.arange(n), t_us, card))
    state_sorted = card_state_after_each(card[order], t_us[order], cents[order], terminal[order])
    has_prev = np.zeros(n, dtype=bool)
    has_prev[1:] = card[order][1:] == card[order][:-1]
    prev_pos = np.arange(n) - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    served_sorted: dict[str, F64] = {}
    for name in CARD_STATE:
        values = np.where(has_prev, state_sorted[name][np.maximum(prev_pos, 0)], 0.0)
        if name == "card_last_tx_time":
            values = np.where(has_prev, values, np.nan)
        served_sorted[name] = values
    mask = np.ones(n, dtype=bool) if query is None else query
    served = {name: v[inverse][mask] for name, v in served_sorted.items()}
    state = {name: v[inverse] for name, v in state_sorted.items()}
    return CardFeatures(served, state)


# --------------------------------------------------------------------------- terminal
def day_of(t_us: I64) -> I64:
    return np.floor_divide(t_us, DAY_US)


def hour_of(t_us: I64) -> I64:
    """The UTC hour (hours since the epoch): what a transaction's terminal values depend on."""
    return np.floor_divide(t_us, HOUR_US)


def terminal_features(
    query_terminal: I64,
    query_hour: I64,
    tx_terminal: I64,
    tx_t_us: I64,
    fraud_terminal: I64,
    fraud_t_us: I64,
    fraud_reported_us: I64,
    delay_days: int = LABEL_DELAY_DAYS,
) -> dict[str, F64]:
    """Delayed terminal count and risk for each (terminal, UTC hour) query.

    ``tx_*``: every transaction (terminal code, time); ``fraud_*``: every fraud label
    (the transaction's terminal and time, and when the label was reported).
    """
    q = len(query_terminal)
    out: dict[str, F64] = {}
    tx_order = np.lexsort((tx_t_us, tx_terminal))
    tx_keys = _keys(tx_terminal[tx_order], tx_t_us[tx_order])
    fr_order = np.lexsort((fraud_t_us, fraud_terminal))
    fr_keys = _keys(fraud_terminal[fr_order], fraud_t_us[fr_order])
    fr_reported = fraud_reported_us[fr_order]
    known_before = query_hour * HOUR_US  # a label counts if reported before the hour began
    end = known_before - delay_days * DAY_US  # windows end where the delay begins (exclusive)
    hi_tx = np.searchsorted(tx_keys, _keys(query_terminal, end), side="left")
    hi_fr = np.searchsorted(fr_keys, _keys(query_terminal, end), side="left")
    for name, w in TERMINAL_WINDOWS_DAYS.items():
        start = end - w * DAY_US
        lo_tx = np.searchsorted(tx_keys, _keys(query_terminal, start), side="left")
        count = (hi_tx - lo_tx).astype(np.float64)
        lo_fr = np.searchsorted(fr_keys, _keys(query_terminal, start), side="left")
        known = np.zeros(q, dtype=np.float64)
        for lag in range(int((hi_fr - lo_fr).max()) if q else 0):
            rows = lo_fr + lag
            valid = rows < hi_fr
            known += valid & (fr_reported[np.where(valid, rows, 0)] < known_before)
        out[f"terminal_tx_count_{name}"] = count
        out[f"terminal_risk_{name}"] = np.where(count > 0, known / np.maximum(count, 1), 0.0)
    return {name: out[name] for name in TERMINAL_FEATURES}


# --------------------------------------------------------------------------- request time
def request_features(amount: F64, t_us: I64, card: Mapping[str, F64]) -> dict[str, F64]:
    """Features of the transaction itself, given the card features served with it."""
    amount = np.asarray(amount, dtype=np.float64)
    mean_30d = np.asarray(card["card_mean_amount_30d"], dtype=np.float64)
    last = np.asarray(card["card_last_tx_time"], dtype=np.float64)
    seconds = t_us / US_PER_S - last
    since = np.where(np.isnan(last), NO_PREVIOUS_S, np.clip(seconds, 0.0, NO_PREVIOUS_S))
    seconds_of_day = np.mod(t_us // US_PER_S, 86_400)
    weekday = np.mod(t_us // DAY_US + 3, 7)  # 1970-01-01 was a Thursday (3 with Monday = 0)
    return {
        "amount": amount,
        "amount_over_card_mean_30d": np.where(
            mean_30d > 0, amount / np.where(mean_30d > 0, mean_30d, 1.0), 1.0
        ),
        "seconds_since_card_last_tx": since,
        "is_night": (seconds_of_day < 6 * 3_600).astype(np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64),
    }


def model_matrix(features: Mapping[str, Any], dtype: type[np.floating[Any]] = np.float32) -> npt.NDArray[Any]:
    """The model's input matrix: MODEL_FEATURES in order, float32 (what the ONNX model takes)
    unless ``dtype`` says otherwise."""
    return np.column_stack([np.asarray(features[name], dtype=np.float64) for name in MODEL_FEATURES]).astype(
        dtype, copy=False
    )


# --------------------------------------------------------------------------- backfill
def label_verdicts(labels: pd.DataFrame) -> list[dict[str, Any] | None]:
    """Each label row's verdict fields (``source``, ``is_fraud``) for the rule in
    ``fraudcore.events``. An absent or null field stays absent (a label archived before the
    field existed: a chargeback); a row that breaks the contract is None, left out as the
    streaming job dead-letters it."""
    n = len(labels)
    columns = {
        name: labels[name].tolist() if name in labels else [None] * n for name in ("source", "is_fraud")
    }
    out: list[dict[str, Any] | None] = []
    for source, is_fraud in zip(columns["source"], columns["is_fraud"], strict=True):
        fields = {
            name: value.item() if isinstance(value, np.generic) else value
            for name, value in (("source", source), ("is_fraud", is_fraud))
            if not pd.isna(value)
        }
        try:
            label_is_fraud(fields)
        except ValueError:
            out.append(None)
            continue
        out.append(fields)
    return out


def _labelled(
    tx: pd.DataFrame, t_us: I64, terminal: I64, labels: pd.DataFrame | None
) -> tuple[I64, I64, I64]:
    """The known frauds of ``tx``'s transactions: their terminal codes, times and report
    times (each transaction once, at its first fraud verdict)."""
    if labels is None or not len(labels):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    says_fraud = [v is not None and label_is_fraud(v) for v in label_verdicts(labels)]
    frauds = labels.loc[np.asarray(says_fraud, dtype=bool), ["transaction_id", "reported_at"]]
    order = np.argsort(to_us(frauds["reported_at"]), kind="stable")
    labels = frauds.iloc[order].drop_duplicates("transaction_id", keep="first")
    position = pd.Series(np.arange(len(tx)), index=tx["transaction_id"].to_numpy())
    rows = position.reindex(labels["transaction_id"].to_numpy()).dropna().astype(np.int64).to_numpy()
    known = labels["transaction_id"].isin(position.index).to_numpy()
    return terminal[rows], t_us[rows], to_us(labels["reported_at"])[known]


def offline_terminal_features(
    transactions: pd.DataFrame,
    labels: pd.DataFrame | None,
    terminal_ids: npt.ArrayLike,
    hours: I64,
    delay_days: int = LABEL_DELAY_DAYS,
) -> dict[str, F64]:
    """Terminal features of any (terminal id, UTC hour) pairs, from history alone: what the
    online store holds for that terminal once the hour's values are final."""
    tx = transactions
    t_us = to_us(tx["timestamp"])
    found, uniques = pd.factorize(tx["terminal_id"].to_numpy())
    terminal = np.asarray(found, dtype=np.int64)
    query = pd.Index(uniques).get_indexer(np.asarray(terminal_ids, dtype=object))
    query = np.where(query < 0, len(uniques), query).astype(np.int64)  # an unknown terminal matches nothing
    fr_terminal, fr_t, fr_reported = _labelled(tx, t_us, terminal, labels)
    return terminal_features(
        query, np.asarray(hours, dtype=np.int64), terminal, t_us, fr_terminal, fr_t, fr_reported, delay_days
    )


def offline_features(
    transactions: pd.DataFrame, labels: pd.DataFrame | None = None, delay_days: int = LABEL_DELAY_DAYS
) -> pd.DataFrame:
    """Point-in-time features for every transaction, from history alone (the backfill).

    ``transactions``: transaction_id, card_id, terminal_id, amount, timestamp.
    ``labels``: transaction_id, reported_at (fraud labels; the transaction's terminal and
    time are taken from ``transactions``). Returns one row per transaction with
    transaction_id, card_id, terminal_id, timestamp, every MODEL_FEATURES column and
    ``card_last_tx_time``, in the input order.
    """
    tx = transactions
    t_us = to_us(tx["timestamp"])
    card = codes(tx["card_id"])
    terminal = codes(tx["terminal_id"])
    cards = card_features(card, t_us, to_cents(tx["amount"]), codes(tx["terminal_id"]))
    fr_terminal, fr_t, fr_reported = _labelled(tx, t_us, terminal, labels)
    terminals = terminal_features(
        terminal, hour_of(t_us), terminal, t_us, fr_terminal, fr_t, fr_reported, delay_days
    )
    request = request_features(tx["amount"].to_numpy(dtype=np.float64), t_us, cards.served)
    out = pd.DataFrame(
        {
            "transaction_id": tx["transaction_id"].to_numpy(),
            "card_id": tx["card_id"].to_numpy(),
            "terminal_id": tx["terminal_id"].to_numpy(),
            "timestamp": pd.to_datetime(tx["timestamp"], utc=True).to_numpy(),
        }
    )
    for name in MODEL_FEATURES:
        out[name] = request.get(name, cards.served.get(name, terminals.get(name)))
    out["card_last_tx_time"] = cards.served["card_last_tx_time"]
    return out
