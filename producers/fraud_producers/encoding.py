"""Event encoding of simulated or replayed transactions: the frame columns, contract-v1 transaction
events (dicts or JSON bytes), and fraud labels (chargebacks) with their events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, Protocol

import numpy as np
import orjson
import pandas as pd

from fraudcore.events import SCHEMA_VERSION, format_timestamp

__all__ = [
    "CHANNELS",
    "GROUND_TRUTH_COLUMNS",
    "LABEL_COLUMNS",
    "TRANSACTION_COLUMNS",
    "Channel",
    "empty_transactions",
    "format_timestamps",
    "label_events",
    "labels",
    "to_event_bytes",
    "to_events",
]

#: The event fields, in contract order. ``channel`` may hold None (then it is left out).
TRANSACTION_COLUMNS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "timestamp",
    "channel",
)
#: Ground truth the simulator (or a labelled replay file) knows; never part of the event.
GROUND_TRUTH_COLUMNS = ("is_fraud", "scenario")
#: Columns of the frame returned by ``labels``.
LABEL_COLUMNS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "transaction_timestamp",
    "reported_at",
    "scenario",
)
Channel = Literal["pos", "ecom", "atm"]
CHANNELS: tuple[Channel, ...] = ("pos", "ecom", "atm")


class HasTransactions(Protocol):
    """Anything with a ``transactions`` frame, such as ``simulator.SimulatedBatch``."""

    @property
    def transactions(self) -> pd.DataFrame: ...


def empty_transactions() -> pd.DataFrame:
    """A frame with no rows in the shape of ``Simulator.generate``'s transactions."""
    return pd.DataFrame(
        {
            "transaction_id": pd.Series([], dtype=object),
            "card_id": pd.Series([], dtype=object),
            "terminal_id": pd.Series([], dtype=object),
            "amount": pd.Series([], dtype=np.float64),
            "currency": pd.Series([], dtype=object),
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
            "channel": pd.Series([], dtype=object),
            "is_fraud": pd.Series([], dtype=np.int8),
            "scenario": pd.Series([], dtype=np.int8),
        }
    )


def format_timestamps(values: pd.Series) -> list[str]:
    """Vectorised ``fraudcore.events.format_timestamp`` (UTC, microseconds, ``+00:00``)."""
    if len(values) == 0:
        return []
    series = pd.Series(values)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_any_dtype(series.dtype):
        return [format_timestamp(pd.Timestamp(v).to_pydatetime()) for v in series]
    micro = series.to_numpy().astype("datetime64[us]")
    text = np.datetime_as_string(micro, unit="us")
    return [s + "+00:00" for s in text.tolist()]


def to_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Transaction events (contract v1) for the rows of ``frame``, in order; no ground truth.

    ``channel`` is left out where it is None/NaN. Works on ``Simulator.generate``,
    ``live_stream.iter_live`` and ``replay.load_replay`` frames.
    """
    if len(frame) == 0:
        return []
    ids = frame["transaction_id"].astype(str).tolist()
    cards = frame["card_id"].astype(str).tolist()
    terms = frame["terminal_id"].astype(str).tolist()
    amounts = frame["amount"].astype(np.float64).tolist()
    currencies = frame["currency"].tolist()
    stamps = format_timestamps(frame["timestamp"])
    base = [
        {
            "schema_version": SCHEMA_VERSION,
            "transaction_id": i,
            "card_id": c,
            "terminal_id": t,
            "amount": a,
            "currency": cur,
            "timestamp": ts,
        }
        for i, c, t, a, cur, ts in zip(ids, cards, terms, amounts, currencies, stamps, strict=True)
    ]
    if "channel" in frame.columns:
        channel = frame["channel"]
        present = channel.notna().to_numpy()
        for event, ch, ok in zip(base, channel.tolist(), present.tolist(), strict=True):
            if ok:
                event["channel"] = ch
    return base


def to_event_bytes(frame: pd.DataFrame, chunk_rows: int = 50_000) -> list[bytes]:
    """``to_events`` serialised as compact JSON (what goes on the wire).

    Works through ``chunk_rows`` rows at a time so the intermediate dicts stay few.
    """
    dumps = orjson.dumps
    out: list[bytes] = []
    for lo in range(0, len(frame), chunk_rows):
        out.extend(dumps(e) for e in to_events(frame.iloc[lo : lo + chunk_rows]))
    return out


def labels(
    batch: HasTransactions | pd.DataFrame,
    delay: timedelta = timedelta(days=7),
    *,
    jitter: timedelta = timedelta(0),
    seed: int = 0,
) -> pd.DataFrame:
    """Fraud labels (chargebacks) for the fraud rows of a batch or frame, sorted by ``reported_at``.

    ``reported_at`` = transaction time + ``delay`` + U(0, ``jitter``) (drawn with ``seed``).
    Columns ``LABEL_COLUMNS``; the timestamps are ``datetime64[ns, UTC]``, ``scenario`` int8.
    """
    frame = batch if isinstance(batch, pd.DataFrame) else batch.transactions
    fraud = frame.loc[frame["is_fraud"].to_numpy() != 0]
    codes = fraud["scenario"].to_numpy(np.int64)
    if len(codes) and not ((codes >= 1) & (codes <= 5)).all():
        raise ValueError("every fraud row needs a scenario code in 1..5 (the label contract requires one)")
    extra = np.zeros(len(fraud), np.int64)
    jitter_us = int(jitter / timedelta(microseconds=1))
    if jitter_us > 0:
        extra = np.random.default_rng(seed).integers(0, jitter_us + 1, len(fraud))
    ts = pd.DatetimeIndex(fraud["timestamp"])
    if ts.tz is None:
        ts = ts.tz_localize("UTC")
    out = pd.DataFrame(
        {
            "transaction_id": fraud["transaction_id"].to_numpy(),
            "card_id": fraud["card_id"].to_numpy(),
            "terminal_id": fraud["terminal_id"].to_numpy(),
            "transaction_timestamp": ts,
            "reported_at": ts + pd.Timedelta(delay) + pd.to_timedelta(extra, unit="us"),
            "scenario": codes.astype(np.int8),
        }
    )
    return out.sort_values("reported_at", kind="stable").reset_index(drop=True)


def label_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Label events (contract v1) for the rows of a ``labels`` frame. A frame with a ``source``
    column (verdicts read back from the archive, say) keeps each row's ``source``, ``is_fraud``
    and ``analyst`` where set; without one every row is a chargeback."""
    if len(frame) == 0:
        return []
    optional = {
        name: frame[name].tolist() if name in frame else [None] * len(frame)
        for name in ("source", "is_fraud", "analyst")
    }
    verdicts = [
        {
            name: value.item() if isinstance(value, np.generic) else value
            for name, value in zip(optional, values, strict=True)
            if value is not None and not (isinstance(value, float) and np.isnan(value))
        }
        for values in zip(*optional.values(), strict=True)
    ]
    return [
        {
            "schema_version": SCHEMA_VERSION,
            "transaction_id": str(i),
            "card_id": str(c),
            "terminal_id": str(t),
            "transaction_timestamp": ts,
            "reported_at": rep,
            "scenario": int(s),
            **verdict,
        }
        for i, c, t, ts, rep, s, verdict in zip(
            frame["transaction_id"].tolist(),
            frame["card_id"].tolist(),
            frame["terminal_id"].tolist(),
            format_timestamps(frame["transaction_timestamp"]),
            format_timestamps(frame["reported_at"]),
            frame["scenario"].tolist(),
            verdicts,
            strict=True,
        )
    ]
