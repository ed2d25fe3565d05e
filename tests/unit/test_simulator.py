from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import ValidationError

from fraud_producers.encoding import (
    TRANSACTION_COLUMNS,
    format_timestamps,
    label_events,
    labels,
    to_event_bytes,
    to_events,
)
from fraud_producers.live_stream import iter_live, speed_up
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Scenario, SimulatedBatch, Simulator
from fraudcore.drift import STABLE_PSI, sample_psi
from fraudcore.events import EventKind, format_timestamp, validate
from fraudcore.features import offline_features

START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
MID = SimulatorConfig(seed=11, n_customers=500, n_terminals=1000)
DAYS = 30


@pytest.fixture(scope="module")
def mid() -> SimulatedBatch:
    return Simulator(MID).generate(START, DAYS)


def _small(seed: int = 3, **overrides: Any) -> pd.DataFrame:
    config = SimulatorConfig(seed=seed, n_customers=120, n_terminals=300, **overrides)
    return Simulator(config).generate(START, 6).transactions


def _homes(batch: SimulatedBatch) -> pd.DataFrame:
    return batch.customers.set_index("card_id")


def test_shape_dtypes_and_ids(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    assert list(tx.columns) == [*TRANSACTION_COLUMNS, "is_fraud", "scenario"]
    assert str(tx["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert tx["is_fraud"].dtype == np.int8
    assert tx["scenario"].dtype == np.int8
    assert tx["timestamp"].is_monotonic_increasing
    assert tx["timestamp"].min() >= pd.Timestamp(START)
    assert tx["timestamp"].max() < pd.Timestamp(START + timedelta(days=DAYS))
    assert tx["transaction_id"].is_unique
    assert tx["card_id"].str.fullmatch(r"C\d{5}").all()
    assert tx["terminal_id"].str.fullmatch(r"T\d{5}").all()
    assert (tx["currency"] == "EUR").all()
    assert set(tx["channel"]) <= {"pos", "ecom", "atm"}
    assert (tx["amount"] >= 0.01).all()
    assert np.allclose(tx["amount"], tx["amount"].round(2))
    assert ((tx["is_fraud"] == 1) == (tx["scenario"] > 0)).all()
    # About 2 transactions per customer per day, less the ~3 % of times outside the day.
    assert 0.85 * 500 * 2 * DAYS < len(tx) < 1.15 * 500 * 2 * DAYS


def test_every_event_validates_against_the_contract(mid: SimulatedBatch) -> None:
    sample = mid.transactions.sample(800, random_state=1)
    events = to_events(sample)
    payloads = to_event_bytes(sample, chunk_rows=300)
    assert len(events) == len(payloads) == 800
    for event, raw in zip(events, payloads, strict=True):
        result = validate(EventKind.TRANSACTION, raw)
        assert result.ok, result.reason
        assert orjson.loads(raw) == event
        assert "is_fraud" not in event
        assert "scenario" not in event
    first = sample.iloc[0]
    assert events[0]["timestamp"] == format_timestamp(first["timestamp"].to_pydatetime())
    assert events[0]["transaction_id"] == first["transaction_id"]


def test_format_timestamps_matches_format_timestamp() -> None:
    values = pd.Series(
        pd.to_datetime(["2024-03-01T12:00:00.123456Z", "2018-04-01T23:59:59Z"], utc=True, format="ISO8601")
    )
    expected = [format_timestamp(v.to_pydatetime()) for v in values]
    assert format_timestamps(values) == expected
    assert expected[0] == "2024-03-01T12:00:00.123456+00:00"


def test_same_seed_same_output_different_seed_differs() -> None:
    a = _small(seed=5)
    pd.testing.assert_frame_equal(a, _small(seed=5))
    sim = Simulator(SimulatorConfig(seed=5, n_customers=120, n_terminals=300))
    pd.testing.assert_frame_equal(sim.generate(START, 6).transactions, sim.generate(START, 6).transactions)
    b = _small(seed=6)
    assert len(a) != len(b) or not np.array_equal(a["amount"].to_numpy(), b["amount"].to_numpy())


def test_population_follows_the_handbook_profile() -> None:
    sim = Simulator(MID)
    customers, terminals = sim.customers, sim.terminals
    assert customers["mean_amount"].between(5, 100).all()
    assert np.allclose(customers["std_amount"], customers["mean_amount"] / 2)
    assert customers["tx_per_day"].between(0, 4).all()
    assert customers["x"].between(0, 100).all()
    assert customers["y"].between(0, 100).all()
    # Each customer uses the terminals within radius 5: about 1000 * pi * 25 / 10000 of them.
    assert 6 < customers["n_terminals"].mean() < 9
    handbook = SimulatorConfig()
    assert (handbook.n_customers, handbook.n_terminals, handbook.radius) == (5000, 10000, 5.0)
    assert len(terminals) == 1000


def test_scenario_1_is_exactly_the_amount_outliers(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    assert (tx.loc[tx["scenario"] == Scenario.AMOUNT_OUTLIER, "amount"] > 220).all()
    assert (tx.loc[tx["amount"] > 220, "is_fraud"] == 1).all()
    assert (tx["scenario"] == Scenario.AMOUNT_OUTLIER).sum() > 0


def test_scenario_2_marks_every_transaction_at_a_compromised_terminal(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    windows = mid.compromised_terminals
    assert len(windows) == 2 * DAYS
    organic = tx[tx["scenario"].isin([0, 1, 2, 3])]
    in_window = np.zeros(len(organic), bool)
    term, ts = organic["terminal_id"].to_numpy(), organic["timestamp"]
    for w in windows.itertuples():
        in_window |= (term == w.terminal_id) & (ts >= w.start).to_numpy() & (ts < w.end).to_numpy()
    codes = organic["scenario"].to_numpy()
    assert (codes[in_window] > 0).all()
    assert (
        (codes == Scenario.COMPROMISED_TERMINAL) == (in_window & (codes != Scenario.AMOUNT_OUTLIER))
    ).all()
    # Roughly (compromised terminal-days) x (transactions per terminal per day).
    terminal_days = (windows["end"] - windows["start"]).dt.total_seconds().sum() / 86_400
    expected = terminal_days * len(organic) / DAYS / len(mid.terminals)
    assert 0.5 * expected < (codes == Scenario.COMPROMISED_TERMINAL).sum() < 1.5 * expected


def test_scenario_3_inflates_a_third_of_the_compromised_cards_payments(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    windows = mid.compromised_cards
    assert len(windows) == 3 * DAYS
    assert (windows["end"] - windows["start"] <= pd.Timedelta(days=14)).all()
    organic = tx[tx["scenario"].isin([0, 1, 2, 3])]
    card, ts = organic["card_id"].to_numpy(), organic["timestamp"]
    in_window = np.zeros(len(organic), bool)
    expected = 0
    for w in windows.itertuples():
        mask = (card == w.card_id) & (ts >= w.start).to_numpy() & (ts < w.end).to_numpy()
        in_window |= mask
        expected += int(mask.sum()) // 3
    stolen = organic["scenario"].to_numpy() == Scenario.COMPROMISED_CARD
    assert in_window[stolen].all()
    assert 0.75 * expected <= stolen.sum() <= expected
    means = _homes(mid).loc[organic.loc[stolen, "card_id"], "mean_amount"].to_numpy()
    ratio = organic.loc[stolen, "amount"].to_numpy() / means
    assert 4.0 < np.median(ratio) < 6.0
    legit_ratio = (
        organic.loc[organic["scenario"] == 0, "amount"].to_numpy()
        / _homes(mid).loc[organic.loc[organic["scenario"] == 0, "card_id"], "mean_amount"].to_numpy()
    )
    assert 0.8 < np.median(legit_ratio) < 1.2


def test_scenario_4_bursts_are_small_then_large(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    bursts = mid.card_testing
    assert 10 <= len(bursts) <= 55  # Poisson(1 a day) over 30 days
    testing = tx[tx["scenario"] == Scenario.CARD_TESTING]
    assert len(testing) == int((bursts["n_small"] + 1).sum())
    channel = mid.terminals.set_index("terminal_id")["channel"]
    for b in bursts.to_dict("records"):
        rows = testing[
            (testing["card_id"] == b["card_id"]) & testing["timestamp"].between(b["start"], b["end"])
        ]
        assert len(rows) == b["n_small"] + 1
        assert 5 <= b["n_small"] <= 15
        small, large = rows.iloc[:-1], rows.iloc[-1]
        assert small["amount"].between(0.5, 3.0).all()
        assert large["amount"] >= 150
        assert small["timestamp"].max() - small["timestamp"].min() <= pd.Timedelta(minutes=5)
        assert large["timestamp"] - small["timestamp"].max() <= pd.Timedelta(minutes=10)
        assert rows["terminal_id"].nunique() <= 3
        assert (channel.loc[rows["terminal_id"]] == "ecom").all()


def test_scenario_5_takeovers_pay_far_away_and_big(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    takeovers = mid.takeovers
    assert 10 <= len(takeovers) <= 55
    rows = tx[tx["scenario"] == Scenario.ACCOUNT_TAKEOVER]
    assert len(rows) >= len(takeovers) - 3  # one at least each, bar those past the end
    homes = _homes(mid).loc[rows["card_id"]]
    terminals = mid.terminals.set_index("terminal_id").loc[rows["terminal_id"]]
    distance = np.hypot(
        homes["x"].to_numpy() - terminals["x"].to_numpy(), homes["y"].to_numpy() - terminals["y"].to_numpy()
    )
    assert (distance > MID.takeover_min_distance - 2 * MID.radius).all()
    assert (rows["amount"].to_numpy() >= 3 * homes["mean_amount"].to_numpy() - 0.01).all()
    assert ((takeovers["end"] - takeovers["start"]) <= pd.Timedelta(days=2)).all()


def test_fraud_mix_follows_the_rates() -> None:
    quiet: dict[str, Any] = {
        "outlier_threshold": None,
        "compromised_terminals_per_day": 0,
        "compromised_cards_per_day": 0,
        "card_testing_per_day": 0.0,
        "takeover_per_day": 0.0,
    }
    assert _small(**quiet)["is_fraud"].sum() == 0
    only_testing = Simulator(
        SimulatorConfig(seed=4, n_customers=120, n_terminals=300, **{**quiet, "card_testing_per_day": 4.0})
    ).generate(START, 20)
    counts = only_testing.scenario_counts()
    assert {k for k, v in counts.items() if v} == {0, 4}
    assert 50 <= len(only_testing.card_testing) <= 110  # Poisson(80)
    assert counts[4] == int((only_testing.card_testing["n_small"] + 1).sum())


def test_daily_rhythm_peaks_at_midday_and_weekends_are_quieter(mid: SimulatedBatch) -> None:
    legit = mid.transactions[mid.transactions["scenario"] == 0]
    hours = np.bincount(legit["timestamp"].dt.hour, minlength=24)
    assert 10 <= int(np.argmax(hours)) <= 13
    assert hours[11:14].sum() > 3 * hours[0:3].sum()
    per_day = legit["timestamp"].dt.floor("D").value_counts()
    dow = pd.DatetimeIndex(per_day.index).dayofweek.to_numpy()
    weekend = per_day.to_numpy()[dow >= 5].mean()
    weekday = per_day.to_numpy()[dow < 5].mean()
    assert weekend / weekday == pytest.approx(MID.weekend_factor, abs=0.1)


def test_labels_only_for_fraud_with_the_delay(mid: SimulatedBatch) -> None:
    tx = mid.transactions
    chargebacks = labels(mid, delay=timedelta(days=7))
    fraud = tx[tx["is_fraud"] == 1].set_index("transaction_id")
    assert len(chargebacks) == len(fraud)
    assert set(chargebacks["transaction_id"]) == set(fraud.index)
    assert chargebacks["reported_at"].is_monotonic_increasing
    joined = chargebacks.set_index("transaction_id")
    assert (joined["transaction_timestamp"] == fraud.loc[joined.index, "timestamp"]).all()
    assert (joined["reported_at"] - joined["transaction_timestamp"] == pd.Timedelta(days=7)).all()
    assert (joined["scenario"] == fraud.loc[joined.index, "scenario"]).all()
    for event in label_events(chargebacks.head(300)):
        result = validate(EventKind.FRAUD_LABEL, event)
        assert result.ok, result.reason

    jittered = labels(tx, delay=timedelta(days=2), jitter=timedelta(hours=6), seed=1)
    lag = jittered["reported_at"] - jittered["transaction_timestamp"]
    assert lag.between(pd.Timedelta(days=2), pd.Timedelta(days=2, hours=6)).all()
    assert lag.nunique() > 1


def test_live_stream_is_day_by_day_deterministic_and_valid() -> None:
    sim = Simulator(SimulatorConfig(seed=9, n_customers=300, n_terminals=600))
    start = datetime(2025, 6, 1, tzinfo=UTC)
    frames = list(itertools.islice(iter_live(sim, start), 20))
    for d, frame in enumerate(frames):
        day = pd.Timestamp(start) + pd.Timedelta(days=d)
        assert frame["timestamp"].is_monotonic_increasing
        assert frame["timestamp"].min() >= day
        assert frame["timestamp"].max() < day + pd.Timedelta(days=1)
    live = pd.concat(frames, ignore_index=True)
    assert live["transaction_id"].is_unique
    assert list(live.columns) == [*TRANSACTION_COLUMNS, "is_fraud", "scenario"]
    # The population's daily volume, whatever rate a producer sends it at.
    assert len(live) / 20 == pytest.approx(sim.expected_daily_transactions(), rel=0.1)
    assert set(live["scenario"].unique()) == {0, 1, 2, 3, 4, 5}
    for event in to_events(live.sample(200, random_state=0)):
        assert validate(EventKind.TRANSACTION, event).ok
    again = pd.concat(itertools.islice(iter_live(sim, start), 20), ignore_index=True)
    pd.testing.assert_frame_equal(live, again)
    assert re.fullmatch(r"9-L20250601T000000-\d+", live["transaction_id"].iloc[0])
    assert speed_up(sim, 500.0) == pytest.approx(500 * 86_400 / sim.expected_daily_transactions())


def test_live_stream_carries_on_the_historys_compromises() -> None:
    sim = Simulator(SimulatorConfig(seed=4, n_customers=400, n_terminals=400))
    history = sim.generate(START, 20)
    running = history.compromised_terminals
    running = running[running["start"] > pd.Timestamp(START + timedelta(days=20 - 28))]
    assert len(running)
    first_day = next(iter_live(sim, START + timedelta(days=20), history=history))
    at_running = first_day[first_day["terminal_id"].isin(running["terminal_id"])]
    assert len(at_running)
    assert (at_running["scenario"] <= Scenario.COMPROMISED_TERMINAL).all()
    cold = next(iter_live(sim, START + timedelta(days=20)))
    assert cold["is_fraud"].sum() < first_day["is_fraud"].sum()


def test_live_traffic_has_the_historys_behaviour_and_a_compressed_clock_would_not() -> None:
    """The live stream's features are distributed as the history's (PSI < 0.1): what the model
    was trained and evaluated on is what it scores live, whatever the sending rate."""
    sim = Simulator(SimulatorConfig(seed=5, n_customers=500, n_terminals=1_000))
    history = sim.generate(START, 60)
    live_from = START + timedelta(days=60)
    live = pd.concat(itertools.islice(iter_live(sim, live_from, history=history), 30), ignore_index=True)

    def features(frame: pd.DataFrame) -> pd.DataFrame:
        both = pd.concat([history.transactions, frame], ignore_index=True)
        return offline_features(both, labels(both)).iloc[len(history.transactions) :]

    reference = offline_features(history.transactions, labels(history)).iloc[
        (history.transactions["timestamp"] >= pd.Timestamp(START + timedelta(days=30))).to_numpy()
    ]
    served = features(live)
    keys = [
        "amount",
        "card_tx_count_10m",
        "card_tx_count_1d",
        "card_tx_count_7d",
        "seconds_since_card_last_tx",
    ]
    for name in [*keys, "is_night", "terminal_risk_7d"]:
        assert sample_psi(reference[name], served[name]) < STABLE_PSI, name
    recent = history.transactions[
        history.transactions["timestamp"] >= pd.Timestamp(START + timedelta(days=30))
    ]
    assert live["is_fraud"].mean() == pytest.approx(recent["is_fraud"].mean(), rel=0.3)

    # The old live stream packed a simulated day into daily volume / rate seconds of wall
    # clock, stamped as event time: at 500/s the card windows fill far beyond training's.
    day_s = sim.expected_daily_transactions() / 500
    elapsed = live["timestamp"] - pd.Timestamp(live_from)
    compressed = live.assign(timestamp=pd.Timestamp(live_from) + elapsed * (day_s / 86_400))
    assert sample_psi(reference["card_tx_count_10m"], features(compressed)["card_tx_count_10m"]) > 1.0


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="ISO-4217"):
        SimulatorConfig(currency="EURO")
    with pytest.raises(ValidationError, match="low <= high"):
        SimulatorConfig(mean_amount=(100.0, 5.0))
    with pytest.raises(ValidationError):
        SimulatorConfig(unknown_field=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="days"):
        Simulator(SimulatorConfig(n_customers=10, n_terminals=10)).generate(START, 0)
    usd = _small(currency="USD")
    assert (usd["currency"] == "USD").all()


class _Collect:
    """Stands in for the producer in a unit test: keeps what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, *_: Any, **__: Any) -> None:
        self.sent.append((topic, orjson.loads(value)))


def test_live_traffic_sends_each_label_when_the_simulated_clock_reaches_it() -> None:
    from fraud_producers.modes import LiveTraffic
    from fraudcore.settings import Settings

    settings = Settings()
    config = SimulatorConfig(seed=6, n_customers=200, n_terminals=400)
    history = Simulator(config).generate(START, 20)
    start = START + timedelta(days=20)
    out = _Collect()
    traffic = LiveTraffic(settings, out, config, start, history=history)  # type: ignore[arg-type]
    transactions = [orjson.loads(value) for _, value in itertools.islice(traffic.messages(), 8_000)]
    clock = pd.Timestamp(transactions[-1]["timestamp"])
    sent = [event for topic, event in out.sent if topic == settings.topics.labels.name]
    assert sent, "no label came out"
    reported = [pd.Timestamp(e["reported_at"]) for e in sent]
    assert reported == sorted(reported)
    assert max(reported) <= clock  # none ahead of the simulated clock
    # The history's frauds whose labels were due after it ended come out live, on time.
    late = labels(history, delay=timedelta(days=7))
    late = late[(late["reported_at"] > pd.Timestamp(start)) & (late["reported_at"] <= clock)]
    assert set(late["transaction_id"]) <= {e["transaction_id"] for e in sent}
    assert len(late)
    assert traffic.labels_sent == len(sent)
    assert traffic.clock == clock
