from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fraud_producers.encoding import labels, to_events
from fraud_producers.replay import (
    HANDBOOK_MAPPING,
    ColumnMapping,
    PacedSlice,
    ReplayMappingError,
    load_replay,
    paced_slices,
    pacing_delays,
    rebase,
)
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Simulator
from fraudcore.events import EventKind, validate

START = datetime(2024, 1, 1, tzinfo=UTC)

CUSTOM = ColumnMapping(
    transaction_id="tx",
    card_id="pan",
    terminal_id="merchant",
    amount="amt",
    timestamp="when",
    currency="ccy",
    channel="chan",
    is_fraud="fraud",
    scenario="kind",
)
RENAMES = {
    "transaction_id": "tx",
    "card_id": "pan",
    "terminal_id": "merchant",
    "amount": "amt",
    "timestamp": "when",
    "currency": "ccy",
    "channel": "chan",
    "is_fraud": "fraud",
    "scenario": "kind",
}


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    config = SimulatorConfig(seed=21, n_customers=80, n_terminals=200, card_testing_per_day=3.0)
    return Simulator(config).generate(START, 4).transactions


def test_csv_round_trip_with_a_column_mapping(simulated: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    # Shuffled, renamed, with an extra column the mapping ignores.
    shuffled = simulated.sample(frac=1.0, random_state=3).rename(columns=RENAMES).assign(note="x")
    shuffled.to_csv(path, index=False)
    loaded = load_replay(path, CUSTOM)
    pd.testing.assert_frame_equal(loaded, simulated)
    assert loaded["is_fraud"].sum() > 0
    for event in to_events(loaded.sample(100, random_state=0)):
        assert validate(EventKind.TRANSACTION, event).ok
    assert len(labels(loaded)) == int(loaded["is_fraud"].sum())


def test_parquet_round_trip_with_our_field_names(simulated: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "history.parquet"
    simulated.to_parquet(path, index=False)
    ours = ColumnMapping(currency="currency", channel="channel", is_fraud="is_fraud", scenario="scenario")
    pd.testing.assert_frame_equal(load_replay(path, ours), simulated)


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "minimal.csv"
    path.write_text(
        "card_id,terminal_id,amount,timestamp\n"
        "7,T1,12.5,2024-02-01 10:00:00\n"
        "8,T2,3,2024-02-01T09:00:00+01:00\n"
        "7,T1,1.25,2024-02-01T08:59:59.5Z\n"
    )
    frame = load_replay(path, ColumnMapping(transaction_id=None, default_currency="CHF"))
    assert frame["timestamp"].tolist() == [
        pd.Timestamp("2024-02-01T08:00:00Z"),
        pd.Timestamp("2024-02-01T08:59:59.5Z"),
        pd.Timestamp("2024-02-01T10:00:00Z"),
    ]
    assert frame["transaction_id"].tolist() == ["minimal-1", "minimal-2", "minimal-0"]
    assert frame["card_id"].tolist() == ["8", "7", "7"]
    assert (frame["currency"] == "CHF").all()
    assert frame["channel"].isna().all()
    assert (frame["is_fraud"] == 0).all()
    assert (frame["scenario"] == 0).all()
    events = to_events(frame)
    assert "channel" not in events[0]
    assert all(validate(EventKind.TRANSACTION, e).ok for e in events)
    assert labels(frame).empty


def test_naive_timestamps_in_a_configured_timezone(tmp_path: Path) -> None:
    path = tmp_path / "paris.csv"
    path.write_text("transaction_id,card_id,terminal_id,amount,timestamp\na,c,t,1.0,2024-07-01 12:00:00\n")
    frame = load_replay(path, ColumnMapping(timezone="Europe/Paris"))
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-07-01T10:00:00Z")
    epoch = tmp_path / "epoch.csv"
    epoch.write_text("transaction_id,card_id,terminal_id,amount,timestamp\na,c,t,1.0,1700000000\n")
    frame = load_replay(epoch, ColumnMapping(timestamp_unit="s"))
    assert frame["timestamp"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")


def _handbook_file(path: Path) -> None:
    rows = [
        (0, "2018-04-01 00:00:31", 596, 3156, 57.16, 0, 0),
        (1, "2018-04-01 00:02:10", 4961, 3412, 81.51, 0, 0),
        (2, "2018-04-01 00:07:56", 2, 1365, 146.00, 0, 0),
        (3, "2018-04-01 00:09:29", 4128, 8737, 0.00, 0, 0),
        (4, "2018-04-01 00:10:34", 927, 9906, 251.10, 1, 1),
        (5, "2018-04-01 00:10:45", 568, 8803, 45.10, 1, 2),
        (6, "2018-04-01 00:11:30", 2803, 5490, 401.35, 1, 3),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "TRANSACTION_ID",
            "TX_DATETIME",
            "CUSTOMER_ID",
            "TERMINAL_ID",
            "TX_AMOUNT",
            "TX_FRAUD",
            "TX_FRAUD_SCENARIO",
        ],
    )
    seconds = pd.to_datetime(frame["TX_DATETIME"]) - pd.Timestamp("2018-04-01")
    frame.insert(5, "TX_TIME_SECONDS", seconds.dt.total_seconds().astype(int))
    frame.insert(6, "TX_TIME_DAYS", seconds.dt.days)
    frame.to_csv(path)  # with the pandas index column, as the handbook's files have


def test_handbook_preset_reads_a_handbook_file(tmp_path: Path) -> None:
    path = tmp_path / "2018-04-01.csv"
    _handbook_file(path)
    frame = load_replay(path, HANDBOOK_MAPPING)
    assert len(frame) == 7
    assert frame["transaction_id"].tolist() == [str(i) for i in range(7)]
    assert frame["card_id"].iloc[0] == "596"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2018-04-01T00:00:31Z")
    assert frame["amount"].iloc[3] == 0.01  # the handbook's rare 0.00 is raised to the minimum
    assert frame["is_fraud"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert frame["scenario"].tolist() == [0, 0, 0, 0, 1, 2, 3]
    chargebacks = labels(frame, delay=timedelta(days=7))
    assert chargebacks["scenario"].tolist() == [1, 2, 3]
    assert (chargebacks["reported_at"] - chargebacks["transaction_timestamp"] == pd.Timedelta(days=7)).all()
    assert all(validate(EventKind.TRANSACTION, e).ok for e in to_events(frame))
    with pytest.raises(ReplayMappingError, match=r"TX_AMOUNT.*amounts <= 0"):
        load_replay(path, ColumnMapping.handbook(non_positive_amounts="error"))
    assert len(load_replay(path, ColumnMapping.handbook(non_positive_amounts="drop"))) == 6


def test_fraud_without_a_scenario_column_gets_the_default_code(tmp_path: Path) -> None:
    path = tmp_path / "labelled.csv"
    path.write_text(
        "id,card,term,amt,ts,fraud\na,c,t,1.0,2024-01-01T00:00:00Z,1\nb,c,t,2.0,2024-01-01T00:00:01Z,0\n"
    )
    mapping = ColumnMapping(
        transaction_id="id",
        card_id="card",
        terminal_id="term",
        amount="amt",
        timestamp="ts",
        is_fraud="fraud",
    )
    frame = load_replay(path, mapping.model_copy(update={"default_scenario": 4}))
    assert frame["scenario"].tolist() == [4, 0]


def test_missing_column_error_names_it(tmp_path: Path) -> None:
    path = tmp_path / "transactions.csv"
    _handbook_file(path)
    mapping = ColumnMapping.handbook(amount="TX_AMT")
    with pytest.raises(ReplayMappingError) as info:
        load_replay(path, mapping)
    message = str(info.value)
    assert message.startswith(
        "column 'TX_AMT' (mapped to amount) not found in transactions.csv; columns are: "
    )
    assert "TX_AMOUNT" in message
    assert (info.value.column, info.value.field) == ("TX_AMT", "amount")
    with pytest.raises(ReplayMappingError, match="'transaction_id' \\(mapped to transaction_id\\) not found"):
        load_replay(path, ColumnMapping())


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("a,c,t,twelve,2024-01-01T00:00:00Z", r"column 'amount' \(mapped to amount\).*non-numeric.*'twelve'"),
        ("a,c,t,1.0,yesterday", r"column 'timestamp' \(mapped to timestamp\).*unparseable.*'yesterday'"),
        ("a,c,t,1.0,", r"column 'timestamp' \(mapped to timestamp\).*unparseable or empty"),
        ("a,,t,1.0,2024-01-01T00:00:00Z", r"column 'card_id' \(mapped to card_id\).*empty values"),
        ("a,c,t,-3,2024-01-01T00:00:00Z", r"column 'amount' \(mapped to amount\).*amounts <= 0"),
    ],
)
def test_unparseable_values_name_the_column(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        f"transaction_id,card_id,terminal_id,amount,timestamp\nz,c,t,1.0,2024-01-01T00:00:00Z\n{content}\n"
    )
    with pytest.raises(ReplayMappingError, match=pattern):
        load_replay(path)


def test_duplicate_ids_and_bad_codes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(
        "transaction_id,card_id,terminal_id,amount,timestamp,currency\n"
        "a,c,t,1.0,2024-01-01T00:00:00Z,EUR\n"
        "a,c,t,1.0,2024-01-01T00:00:01Z,XXY\n"
    )
    with pytest.raises(ReplayMappingError, match="duplicate ids"):
        load_replay(path)
    path.write_text(
        path.read_text().replace("\na,c,t,1.0,2024-01-01T00:00:01Z", "\nb,c,t,1.0,2024-01-01T00:00:01Z")
    )
    with pytest.raises(ReplayMappingError, match=r"'currency' \(mapped to currency\).*ISO-4217.*'XXY'"):
        load_replay(path, ColumnMapping(currency="currency"))
    with pytest.raises(ValueError, match="ISO-4217"):
        ColumnMapping(default_currency="EURO")


def test_pacing_original_speed_multiplier_and_max_speed() -> None:
    ts = pd.Series(
        pd.to_datetime(
            ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z", "2024-01-01T00:00:10Z"], format="ISO8601"
        )
    )
    assert pacing_delays(ts).tolist() == [0.0, 0.5, 10.0]
    assert pacing_delays(ts, speed=10.0).tolist() == [0.0, 0.05, 1.0]
    assert pacing_delays(ts, speed=None).tolist() == [0.0, 0.0, 0.0]
    assert pacing_delays(ts, speed=0).tolist() == [0.0, 0.0, 0.0]
    assert len(pacing_delays(ts.iloc[:0])) == 0
    with pytest.raises(ValueError, match="sorted"):
        pacing_delays(ts.iloc[::-1])
    with pytest.raises(ValueError, match="speed"):
        pacing_delays(ts, speed=-1.0)


def test_paced_slices_cover_every_row_once_and_never_early(simulated: pd.DataFrame) -> None:
    ts = simulated["timestamp"]
    delays = pacing_delays(ts, speed=3600.0)
    slices = list(paced_slices(ts, speed=3600.0, slice_s=1.0, max_rows=5))
    assert slices[0].start == 0
    assert slices[-1].stop == len(ts)
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))
    assert all(0 < s.stop - s.start <= 5 for s in slices)
    for s in slices:
        assert s.due_s == pytest.approx(delays[s.stop - 1])
        assert (delays[s.start : s.stop] <= s.due_s).all()
        assert np.floor(delays[s.start]) == np.floor(delays[s.stop - 1])  # one slice of 1 s
    assert [s.due_s for s in slices] == sorted(s.due_s for s in slices)
    fastest = list(paced_slices(ts, speed=None, max_rows=1000))
    assert [s.due_s for s in fastest] == [0.0] * len(fastest)
    assert [(s.start, s.stop) for s in fastest][:1] == [(0, min(1000, len(ts)))]
    assert sum(s.stop - s.start for s in fastest) == len(ts)
    assert list(paced_slices(ts.iloc[:0])) == []
    assert isinstance(slices[0], PacedSlice)


def test_rebase_moves_the_replay_to_now(simulated: pd.DataFrame) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    moved = rebase(simulated, now, speed=2.0)
    assert moved["timestamp"].iloc[0] == pd.Timestamp(now)
    gaps = (simulated["timestamp"] - simulated["timestamp"].iloc[0]) / 2
    assert ((moved["timestamp"] - pd.Timestamp(now)) - gaps).abs().max() <= pd.Timedelta(microseconds=1)
    assert moved.drop(columns="timestamp").equals(simulated.drop(columns="timestamp"))
    assert str(moved["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_a_default_currency_that_is_not_iso_4217_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"default_currency\n.*'EURO' is not an ISO-4217 currency code"):
        ColumnMapping(default_currency="EURO")
