"""Replay of a historical transaction file (CSV or Parquet) in the simulator's shape.

``load_replay(path, mapping)`` reads the columns a ``ColumnMapping`` names and returns a frame
with the columns of ``Simulator.generate``: the event fields ``transaction_id``, ``card_id``,
``terminal_id``, ``amount``, ``currency``, ``timestamp`` (``datetime64[ns, UTC]``), ``channel``
(None when the file has none) and the ground truth ``is_fraud`` / ``scenario`` (int8; 0 when
the file has no labels), sorted by timestamp. ``encoding.to_events`` and
``encoding.labels`` work on it unchanged.

A mapping names, for each of our fields, the file's column::

    ColumnMapping()                  # the file uses our field names
    ColumnMapping.handbook()         # the Fraud Detection Handbook's simulated data set
    ColumnMapping(transaction_id=None, card_id="pan_hash", amount="amt", timestamp="ts",
                  timezone="Europe/Paris", currency="ccy", is_fraud="fraud")

Optional columns (``currency``, ``channel``, ``is_fraud``, ``scenario``) are None by default,
meaning "not in the file"; ``transaction_id=None`` numbers the rows (``<file stem>-<row>``).
Naive timestamps are taken in ``timezone`` (UTC by default). A mapped column that is missing,
or values that cannot be parsed, raise ``ReplayMappingError`` naming the column.

Pacing: ``pacing_delays`` gives each event's send time relative to the replay's start
(original pacing divided by ``speed``; all zero at maximum speed), ``paced_slices`` groups
the rows into time slices for a producer that sends per slice, and ``rebase`` moves the
event times so the replay happens "now".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fraud_producers.encoding import CHANNELS, GROUND_TRUTH_COLUMNS, TRANSACTION_COLUMNS
from fraudcore.events import ISO_4217, CurrencyCode

__all__ = [
    "HANDBOOK_MAPPING",
    "ColumnMapping",
    "PacedSlice",
    "ReplayMappingError",
    "load_replay",
    "paced_slices",
    "pacing_delays",
    "rebase",
    "replay_frame",
]

_PARQUET_SUFFIXES = (".parquet", ".pq")
_COLUMNS = (*TRANSACTION_COLUMNS, *GROUND_TRUTH_COLUMNS)


class ReplayMappingError(ValueError):
    """The file does not fit the mapping; ``column`` / ``field`` say where (when known)."""

    def __init__(self, message: str, *, column: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.field = field


class ColumnMapping(BaseModel):
    """Which column of the file holds each of our fields, and how to read it.

    Required: ``card_id``, ``terminal_id``, ``amount``, ``timestamp`` (defaults: our names).
    ``transaction_id`` (default ``"transaction_id"``; None numbers the rows). Optional, None
    = absent: ``currency`` (then ``default_currency`` for all rows), ``channel`` (pos, ecom,
    atm, any case; empty cells allowed), ``is_fraud`` (0/1 or booleans) and ``scenario``
    (codes 0-5; with no ``is_fraud`` column, a code > 0 means fraud). A fraud row without a
    code gets ``default_scenario``, since a fraud label must carry one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    transaction_id: str | None = "transaction_id"
    card_id: str = "card_id"
    terminal_id: str = "terminal_id"
    amount: str = "amount"
    timestamp: str = "timestamp"
    currency: str | None = None
    channel: str | None = None
    is_fraud: str | None = None
    scenario: str | None = None

    default_currency: CurrencyCode = "EUR"
    default_scenario: int = Field(1, ge=1, le=5)
    timezone: str = Field("UTC", description="zone of naive timestamps; aware ones keep their offset")
    timestamp_format: str | None = Field(None, description="strftime format; None: inferred")
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None, description="the timestamps are numbers since the Unix epoch in this unit"
    )
    non_positive_amounts: Literal["error", "drop", "clip"] = Field(
        "error", description="amounts <= 0: fail, drop the row, or raise them to 0.01"
    )
    file_format: Literal["auto", "csv", "parquet"] = "auto"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @classmethod
    def handbook(cls, **overrides: Any) -> ColumnMapping:
        """The Fraud Detection Handbook's simulated data (TX_DATETIME naive, read as UTC).

        Its generator can round a redrawn amount down to 0.00, so such amounts are raised
        to 0.01 here instead of failing the whole file.
        """
        values: dict[str, Any] = {
            "transaction_id": "TRANSACTION_ID",
            "card_id": "CUSTOMER_ID",
            "terminal_id": "TERMINAL_ID",
            "amount": "TX_AMOUNT",
            "timestamp": "TX_DATETIME",
            "is_fraud": "TX_FRAUD",
            "scenario": "TX_FRAUD_SCENARIO",
            "non_positive_amounts": "clip",
        }
        values.update(overrides)
        return cls(**values)

    def columns(self) -> dict[str, str]:
        """Our field -> the file's column, for the mapped fields."""
        names = ("transaction_id", "card_id", "terminal_id", "amount", "timestamp", "currency", "channel")
        mapped = {name: getattr(self, name) for name in (*names, "is_fraud", "scenario")}
        return {k: v for k, v in mapped.items() if v is not None}


#: The Handbook preset, ready to use.
HANDBOOK_MAPPING = ColumnMapping.handbook()


def _format_of(path: Path, mapping: ColumnMapping) -> str:
    if mapping.file_format != "auto":
        return mapping.file_format
    return "parquet" if path.suffix.lower() in _PARQUET_SUFFIXES else "csv"


def _read(path: Path, mapping: ColumnMapping) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"replay file {path} not found")
    wanted = mapping.columns()
    fmt = _format_of(path, mapping)
    if fmt == "parquet":
        available = list(pq.read_schema(path).names)
    else:
        available = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    for field, column in wanted.items():
        if column not in available:
            shown = ", ".join(available[:40]) + (", ..." if len(available) > 40 else "")
            raise ReplayMappingError(
                f"column {column!r} (mapped to {field}) not found in {path.name}; columns are: {shown}",
                column=column,
                field=field,
            )
    columns = sorted(set(wanted.values()))
    if fmt == "parquet":
        return pd.read_parquet(path, columns=columns)
    # Ids and labels as text: no float rounding of long ids, clear errors for odd values.
    as_text = {c: str for f, c in wanted.items() if f in ("transaction_id", "card_id", "terminal_id")}
    return pd.read_csv(path, usecols=columns, dtype=as_text, keep_default_na=False, na_values=[""])


def _fail(path: Path, field: str, column: str, what: str, bad: pd.Series) -> ReplayMappingError:
    first = bad.index[0]
    return ReplayMappingError(
        f"column {column!r} (mapped to {field}) in {path.name}: {len(bad)} {what}, "
        f"first at row {first}: {bad.iloc[0]!r}",
        column=column,
        field=field,
    )


def _ids(raw: pd.Series, path: Path, field: str, column: str) -> pd.Series:
    if pd.api.types.is_float_dtype(raw.dtype):
        finite = raw.dropna()
        if len(finite) and (finite == np.floor(finite)).all():
            raw = raw.astype("Int64")
    text = raw.astype("string").str.strip()
    missing = text.isna() | (text == "")
    if missing.any():
        raise _fail(path, field, column, "empty values", raw[missing])
    return pd.Series(text.to_numpy(dtype=object), index=raw.index)


def _parse_text(raw: pd.Series, mapping: ColumnMapping, utc: bool) -> pd.Series:
    """Parse text timestamps: the given format, else ISO-8601 and then pandas' inference."""
    if mapping.timestamp_format is not None:
        return pd.Series(pd.to_datetime(raw, format=mapping.timestamp_format, utc=utc, errors="coerce"))
    iso = pd.Series(pd.to_datetime(raw, format="ISO8601", utc=utc, errors="coerce"))
    if not iso.isna().any():
        return iso
    inferred = pd.Series(pd.to_datetime(raw, utc=utc, errors="coerce"))
    return inferred if inferred.isna().sum() < iso.isna().sum() else iso


def _timestamps(raw: pd.Series, path: Path, mapping: ColumnMapping) -> pd.Series:
    """Timestamps as ``datetime64[ns, UTC]``; naive ones are in ``mapping.timezone``."""
    column = mapping.timestamp
    mixed = ReplayMappingError(
        f"column {column!r} (mapped to timestamp) in {path.name} mixes naive times and UTC offsets "
        "(or several offsets) while timezone is not UTC; use one form",
        column=column,
        field="timestamp",
    )
    try:
        parsed: pd.Series
        if mapping.timestamp_unit is not None:
            numbers = pd.to_numeric(raw, errors="coerce")
            parsed = pd.Series(
                pd.to_datetime(numbers, unit=mapping.timestamp_unit, utc=True, errors="coerce")
            )
        elif pd.api.types.is_datetime64_any_dtype(raw.dtype):
            parsed = raw
        else:
            parsed = _parse_text(raw, mapping, utc=mapping.timezone == "UTC")
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(parsed.dtype):
            parsed = parsed.dt.tz_localize(mapping.timezone, ambiguous="NaT", nonexistent="shift_forward")
            parsed = parsed.dt.tz_convert("UTC")
        else:
            raise mixed
    except ReplayMappingError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise ReplayMappingError(
            f"column {column!r} (mapped to timestamp) in {path.name}: cannot parse timestamps ({exc}); "
            "set timestamp_format or timestamp_unit",
            column=column,
            field="timestamp",
        ) from exc
    parsed.index = raw.index
    bad = parsed.isna()
    if bad.any():
        raise _fail(path, "timestamp", column, "unparseable or empty timestamps", raw[bad])
    return parsed.astype("datetime64[ns, UTC]")


def _amounts(raw: pd.Series, path: Path, mapping: ColumnMapping) -> tuple[pd.Series, pd.Series]:
    """The amounts and the mask of rows to keep."""
    column = mapping.amount
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        raise _fail(path, "amount", column, "non-numeric or empty amounts", raw[bad])
    keep = pd.Series(True, index=raw.index)
    non_positive = values <= 0
    if non_positive.any():
        if mapping.non_positive_amounts == "error":
            raise _fail(
                path,
                "amount",
                column,
                "amounts <= 0 (set non_positive_amounts to drop or clip)",
                raw[non_positive],
            )
        if mapping.non_positive_amounts == "drop":
            keep = ~non_positive
        else:
            values = values.clip(lower=0.01)
    return values, keep


def _labels(frame: pd.DataFrame, path: Path, mapping: ColumnMapping) -> tuple[np.ndarray, np.ndarray]:
    n = len(frame)
    scenario = np.zeros(n, np.int64)
    if mapping.scenario is not None:
        raw = frame[mapping.scenario]
        codes = pd.to_numeric(raw, errors="coerce")
        bad = codes.isna() | ~codes.isin(range(6))
        if bad.any():
            raise _fail(path, "scenario", mapping.scenario, "codes outside 0..5", raw[bad])
        scenario = codes.to_numpy(np.int64)
    if mapping.is_fraud is not None:
        raw = frame[mapping.is_fraud]
        lowered = raw.astype("string").str.strip().str.lower()
        truth = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0, "yes": 1, "no": 0}
        flags = lowered.map(truth)
        bad = flags.isna()
        if bad.any():
            raise _fail(path, "is_fraud", mapping.is_fraud, "values that are not 0/1", raw[bad])
        is_fraud = flags.to_numpy(np.int64)
    else:
        is_fraud = (scenario > 0).astype(np.int64)
    scenario = np.where(is_fraud == 1, np.where(scenario > 0, scenario, mapping.default_scenario), 0)
    return is_fraud.astype(np.int8), scenario.astype(np.int8)


def load_replay(path: str | Path, mapping: ColumnMapping | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file into the simulator's transaction shape, sorted by timestamp.

    Raises ``ReplayMappingError`` when a mapped column is missing or its values cannot be read.
    """
    path = Path(path)
    mapping = mapping or ColumnMapping()
    return replay_frame(_read(path, mapping), mapping, path)


def replay_frame(raw: pd.DataFrame, mapping: ColumnMapping, path: Path) -> pd.DataFrame:
    """``load_replay`` on a frame already in memory; ``path`` names it in error messages."""
    raw = raw.reset_index(drop=True)

    cards = _ids(raw[mapping.card_id], path, "card_id", mapping.card_id)
    terms = _ids(raw[mapping.terminal_id], path, "terminal_id", mapping.terminal_id)
    if mapping.transaction_id is not None:
        ids = _ids(raw[mapping.transaction_id], path, "transaction_id", mapping.transaction_id)
        dup = ids.duplicated()
        if dup.any():
            raise _fail(
                path,
                "transaction_id",
                mapping.transaction_id,
                "duplicate ids",
                raw[mapping.transaction_id][dup],
            )
    else:
        ids = pd.Series([f"{path.stem}-{i}" for i in range(len(raw))], dtype=object)
    timestamps = _timestamps(raw[mapping.timestamp], path, mapping)
    amounts, keep = _amounts(raw[mapping.amount], path, mapping)

    if mapping.currency is not None:
        currency = raw[mapping.currency].astype("string").str.strip().str.upper()
        bad = currency.isna() | ~currency.isin(ISO_4217)
        if bad.any():
            raise _fail(
                path,
                "currency",
                mapping.currency,
                "values that are not ISO-4217 codes",
                raw[mapping.currency][bad],
            )
        currencies = pd.Series(currency.to_numpy(dtype=object))
    else:
        currencies = pd.Series(np.full(len(raw), mapping.default_currency, dtype=object))

    if mapping.channel is not None:
        channel = raw[mapping.channel].astype("string").str.strip().str.lower()
        channel = channel.mask(channel == "")
        bad = channel.notna() & ~channel.isin(CHANNELS)
        if bad.any():
            raise _fail(
                path, "channel", mapping.channel, f"values not in {CHANNELS}", raw[mapping.channel][bad]
            )
        channels = pd.Series([None if v is pd.NA else v for v in channel.tolist()], dtype=object)
    else:
        channels = pd.Series(np.full(len(raw), None, dtype=object))

    is_fraud, scenario = _labels(raw, path, mapping)
    frame = pd.DataFrame(
        {
            "transaction_id": ids.to_numpy(dtype=object),
            "card_id": cards.to_numpy(dtype=object),
            "terminal_id": terms.to_numpy(dtype=object),
            "amount": amounts.to_numpy(np.float64),
            "currency": currencies.to_numpy(dtype=object),
            "timestamp": pd.DatetimeIndex(timestamps),
            "channel": channels.to_numpy(dtype=object),
            "is_fraud": is_fraud,
            "scenario": scenario,
        }
    )
    frame = frame.loc[keep.to_numpy()]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)[list(_COLUMNS)]


# ---------------------------------------------------------------------- pacing
def _epoch_ns(timestamps: Any) -> np.ndarray:
    index = pd.DatetimeIndex(timestamps)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    ns = index.as_unit("ns").asi8
    if len(ns) > 1 and (np.diff(ns) < 0).any():
        raise ValueError("timestamps must be sorted (non-decreasing); sort the frame by timestamp first")
    return ns


def pacing_delays(timestamps: Any, speed: float | None = 1.0) -> np.ndarray:
    """Seconds after the replay's start at which each event is due.

    ``speed`` 1.0 keeps the original pacing, 60.0 plays an hour a minute; None or 0 sends
    everything at once (all zeros). ``timestamps``: any sorted sequence pandas reads as
    datetimes (a frame's ``timestamp`` column).
    """
    ns = _epoch_ns(timestamps)
    if speed is not None and speed < 0:
        raise ValueError("speed must be > 0, or None/0 for maximum speed")
    if len(ns) == 0 or not speed:
        return np.zeros(len(ns))
    return (ns - ns[0]) / 1e9 / speed


@dataclass(frozen=True)
class PacedSlice:
    """Rows ``[start, stop)`` of the frame, to be sent ``due_s`` seconds after the replay starts."""

    due_s: float
    start: int
    stop: int


def paced_slices(
    timestamps: Any, speed: float | None = 1.0, slice_s: float = 1.0, max_rows: int = 10_000
) -> Iterator[PacedSlice]:
    """Group sorted events into send slices, so a producer sleeps once per slice, not per event.

    With a pacing (``speed`` > 0) the rows due in ``[k slice_s, (k + 1) slice_s)`` form a slice
    whose ``due_s`` is the due time of its last row (nothing goes out early); at maximum speed
    (None/0) the rows go in slices of ``max_rows`` all due at 0. No slice exceeds ``max_rows``.
    Empty stretches produce no slice. Usage::

        t0 = time.monotonic()
        for s in paced_slices(frame["timestamp"], speed=10.0):
            time.sleep(max(0.0, t0 + s.due_s - time.monotonic()))
            send(to_event_bytes(frame.iloc[s.start:s.stop]))
    """
    if slice_s <= 0 or max_rows < 1:
        raise ValueError("slice_s must be > 0 and max_rows >= 1")
    delays = pacing_delays(timestamps, speed)
    n = len(delays)
    if n == 0:
        return
    bucket = np.floor(delays / slice_s).astype(np.int64)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1, [n]])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        for a in range(lo, hi, max_rows):
            b = min(hi, a + max_rows)
            yield PacedSlice(float(delays[b - 1]), a, b)


def rebase(frame: pd.DataFrame, start: datetime, speed: float | None = 1.0) -> pd.DataFrame:
    """A copy whose first event happens at ``start`` (naive = UTC) and the rest at the pacing.

    For a live replay: event time = send time = ``start + pacing_delays(...)``. At maximum
    speed (None/0) every event gets ``start``.
    """
    base = pd.Timestamp(start.replace(tzinfo=UTC) if start.tzinfo is None else start).tz_convert("UTC")
    delays_us = np.rint(pacing_delays(frame["timestamp"], speed) * 1e6).astype(np.int64)
    out = frame.copy()
    out["timestamp"] = pd.DatetimeIndex(base + pd.to_timedelta(delays_us, unit="us")).as_unit("ns")
    return out
