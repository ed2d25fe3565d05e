"""The model monitor against real Kafka and Redis: decisions joined with delayed labels,
counted exactly once across a kill -9, and exported as live metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from fraud_monitor.outcomes import DayCounts, Outcome, WindowMetrics
from fraud_monitor.store import OutcomeStore
from fraudcore.features import DAY_US
from fraudcore.kafka import producer
from fraudcore.metrics import sample_sum, scrape
from fraudcore.settings import Settings
from tests.helpers import env_for, isolated, read_topic

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 24  # of decisions; with the 7-day delay and a day's margin, the first 16 get counted
PER_DAY = 250
VERSION = "v-monitor-1"
METRICS_PORT = 9958
# Metrics over 9 event days. The monitor keeps twice its window behind the latest day whose
# truth is known (day 16 here): every day counted stays until the test shrinks the window.
WINDOW_DAYS = 9


FIRST_DAY = int(START.timestamp()) // 86_400
FRAUD: set[str] = set()  # the test's truth: transactions whose label will come


def _decisions(rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    for i in range(DAYS * PER_DAY):
        t = START + timedelta(seconds=86_400 * i / PER_DAY)
        fraud = bool(rng.random() < 0.05)
        if fraud:
            FRAUD.add(f"tx-{i}")
        score = float(np.clip(rng.normal(0.7 if fraud else 0.15, 0.15), 0, 1))
        out.append(
            {
                "schema_version": 1,
                "decision_id": f"d-{i}",
                "transaction_id": f"tx-{i}",
                "card_id": f"C{int(rng.integers(400)):05d}",
                "score": score,
                "decision": "decline" if score >= 0.8 else "review" if score >= 0.5 else "approve",
                "model_version": VERSION,
                "reasons": [],
                "features_fallback": False,
                "transaction_timestamp": t.isoformat(),
                "scored_at": t.isoformat(),
            }
        )
    return out


def _label(decision: dict[str, Any]) -> dict[str, Any]:
    t = datetime.fromisoformat(decision["transaction_timestamp"])
    return {
        "schema_version": 1,
        "transaction_id": decision["transaction_id"],
        "card_id": decision["card_id"],
        "terminal_id": "T00001",
        "transaction_timestamp": decision["transaction_timestamp"],
        "reported_at": (t + timedelta(days=7)).isoformat(),
        "scenario": 2,
    }


def _messages(settings: Settings, decisions: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    """As the live platform sends them: each fraud's label when event time reaches its report."""
    frauds = [d for d in decisions if d["transaction_id"] in FRAUD]
    pending = [_label(d) for d in sorted(frauds, key=lambda d: d["transaction_timestamp"])]
    out = []
    for d in decisions:
        while pending and pending[0]["reported_at"] <= d["transaction_timestamp"]:
            label = pending.pop(0)
            out.append((settings.topics.labels.name, label["card_id"].encode(), orjson.dumps(label)))
        out.append((settings.topics.scores.name, d["transaction_id"].encode(), orjson.dumps(d)))
    return out


def _produce(settings: Settings, messages: list[tuple[str, bytes, bytes]]) -> None:
    prod = producer(settings)
    for topic, key, value in messages:
        prod.send(topic, key=key, value=value)
    prod.flush()
    prod.close()


def _counted(store: OutcomeStore) -> int:
    return sum(c.decisions for c in store.days(VERSION, FIRST_DAY, FIRST_DAY + DAYS).values())


def _start(settings: Settings, group: str, window_days: int = WINDOW_DAYS) -> subprocess.Popen[bytes]:
    env = {
        **env_for(settings),
        "FRAUD_MONITOR__INITIAL_OFFSET": "earliest",
        "FRAUD_MONITOR__WINDOW_DAYS": str(window_days),
        "FRAUD_METRICS_PORTS__MODEL_MONITOR": str(METRICS_PORT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "fraud_app.cli", "monitor", "--group", group],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_monitor_resumes_and_counts_every_decision_once(stack: Settings, unique: str) -> None:
    settings = isolated(stack, unique)
    group = f"monitor-test-{unique}"
    store = OutcomeStore(redis.Redis(**settings.redis.client_kwargs()), f"monitor:{group}")
    decisions = _decisions(np.random.default_rng(7))
    messages = _messages(settings, decisions)
    half = len(messages) // 2
    # Poison among the first half: unreadable decisions and labels are dead-lettered with
    # the reason and counted as nothing; everything after them is counted.
    poison = [
        (settings.topics.scores.name, b"p1", b"not json"),
        (settings.topics.scores.name, b"p2", b"[1, 2]"),
        (settings.topics.scores.name, b"p3", orjson.dumps({"transaction_id": "p3"})),
        (settings.topics.labels.name, b"p4", b"\xff\xfe"),
        (settings.topics.labels.name, b"p5", orjson.dumps({"transaction_id": "p5", "is_fraud": True})),
        (settings.topics.labels.name, b"p6", b"[1, 2]"),
        # A decision with its time but a score that is not a number.
        (
            settings.topics.scores.name,
            b"p7",
            orjson.dumps({**decisions[0], "transaction_id": "p7", "score": "high"}),
        ),
    ]
    messages[half // 2 : half // 2] = poison
    half += len(poison)
    _produce(settings, messages[:half])
    monitor = _start(settings, group)
    try:
        deadline = time.monotonic() + 60
        while _counted(store) == 0:  # killed while it counts, wherever it is in a batch
            assert time.monotonic() < deadline, "the monitor counted nothing"
            time.sleep(0.05)
        os.kill(monitor.pid, signal.SIGKILL)
        monitor.wait(10)
        _produce(settings, messages[half:])
        monitor = _start(settings, group)

        # Matured: event time + 7 days + 1 day of margin <= the latest decision's event time.
        clock = datetime.fromisoformat(decisions[-1]["transaction_timestamp"])
        due = [
            d
            for d in decisions
            if datetime.fromisoformat(d["transaction_timestamp"]) + timedelta(days=8) <= clock
        ]
        expected: dict[int, DayCounts] = {}
        for d in due:
            t_us = int(datetime.fromisoformat(d["transaction_timestamp"]).timestamp() * 1e6)
            fraud = d["transaction_id"] in FRAUD
            o = Outcome(VERSION, t_us, d["card_id"], d["score"], d["decision"] != "approve", fraud)
            expected.setdefault(o.day, DayCounts()).add(o)
        deadline = time.monotonic() + 90
        while _counted(store) < len(due):
            assert time.monotonic() < deadline, f"counted {_counted(store)} of {len(due)}"
            time.sleep(0.2)
        time.sleep(2)  # anything counted twice would show now
        days = store.days(VERSION, min(expected), max(expected) + 1)
        for day, want in expected.items():
            got = days[day]
            assert (got.decisions, got.alerts, got.frauds, got.alerted_frauds) == (
                want.decisions,
                want.alerts,
                want.frauds,
                want.alerted_frauds,
            ), day
            assert got.card_precision() == pytest.approx(want.card_precision())

        # The exported metrics: the window's event days up to the last whose truth is known.
        last_day = int((clock - timedelta(days=8)).timestamp() * 1e6) // DAY_US
        window = WindowMetrics.of(
            c for day, c in expected.items() if last_day - WINDOW_DAYS < day <= last_day
        )
        deadline = time.monotonic() + 30
        while True:
            families = scrape(METRICS_PORT)
            got_precision = sample_sum(families, "fraud_live_precision", {"model_version": VERSION})
            if got_precision == pytest.approx(window.precision) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert got_precision == pytest.approx(window.precision)
        assert sample_sum(families, "fraud_live_recall", {"model_version": VERSION}) == pytest.approx(
            window.recall
        )
        assert (
            sample_sum(families, "fraud_live_labelled_decisions", {"model_version": VERSION})
            == window.decisions
        )
        assert sample_sum(families, "fraud_label_backlog_decisions") == len(decisions) - len(due)
        dead = read_topic(settings, settings.topics.dead_letter.name, len(poison))
        # At least once: a restart may read a record it had dead-lettered before its offset
        # was stored.
        assert {r.value for r in dead} == {value for _, _, value in poison}
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["dlq-component"] == "model-monitor"
            assert ": " in headers["dlq-reason"], headers

        # Days the window has left behind go, in event time: with a 2-day window, the days
        # before last_day - 3.
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(20)
        monitor = _start(settings, group, window_days=2)
        kept_from = last_day - 2 * 2 + 1
        deadline = time.monotonic() + 30
        while store.days(VERSION, FIRST_DAY, kept_from - 1):
            assert time.monotonic() < deadline, "the monitor kept days its window has left"
            time.sleep(0.2)
        assert sorted(store.days(VERSION, kept_from, last_day)) == list(range(kept_from, last_day + 1))
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(20)


def test_the_skew_check_runs_in_a_child_process_and_reports_back(stack: Settings, unique: str) -> None:
    """Each check is a fresh spawned process (its memory goes with it); its report, or its
    failure, comes back to the monitor's metrics."""
    from fraud_monitor import metrics as M
    from fraud_monitor.service import ModelMonitor

    settings = isolated(stack, unique)
    settings = settings.model_copy(
        update={"monitor": settings.monitor.model_copy(update={"skew_interval_s": 0.1})}
    )
    monitor = ModelMonitor(settings, group=f"skew-{unique}")
    done = M.SKEW_CHECKS.labels("done")._value.get()
    stop = threading.Event()
    loop = threading.Thread(target=monitor._skew_loop, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while M.SKEW_CHECKS.labels("done")._value.get() < done + 2:
            assert time.monotonic() < deadline, "no skew check came back"
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(60)
    assert M.SKEW_CHECKS.labels("failed")._value.get() == 0
