"""Helpers for integration tests: isolated topics per test, sample events, reading topics back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from fraudcore.kafka import consumer, ensure_topics, producer
from fraudcore.settings import Settings, TopicSettings, TopicSpec

CREATED_TOPICS: set[str] = set()  # deleted when the test session ends (tests/conftest.py)


def isolated(settings: Settings, unique: str) -> Settings:
    """The same stack, with this test's own topics (created here)."""
    base = settings.topics
    topics = TopicSettings(
        **{
            field: spec.model_copy(update={"name": f"{spec.name}-{unique}"})  # compaction too
            for field, spec in base.model_dump().items()
            for spec in [TopicSpec(**spec)]
        }
    )
    isolated_settings = settings.model_copy(update={"topics": topics})
    CREATED_TOPICS.update(spec["name"] for spec in topics.model_dump().values())
    ensure_topics(isolated_settings)
    return isolated_settings


def env_for(settings: Settings) -> dict[str, str]:
    """Environment variables that make a subprocess use these settings' topics."""
    env = dict(os.environ)
    for field, spec in settings.topics.model_dump().items():
        env[f"FRAUD_TOPICS__{field.upper()}__NAME"] = spec["name"]
    env["FRAUD_METRICS_HOST"] = "127.0.0.1"
    return env


def transaction(i: int, ts: datetime | None = None, **overrides: Any) -> dict[str, Any]:
    ts = ts or datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=37 * i)
    event = {
        "schema_version": 1,
        "transaction_id": f"tx-{i:07d}",
        "card_id": f"C{i % 97:05d}",
        "terminal_id": f"T{i % 211:05d}",
        "amount": round(5 + (i * 7.31) % 200, 2),
        "currency": "EUR",
        "timestamp": ts.isoformat(),
    }
    event.update(overrides)
    return event


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """Read a topic from the beginning until ``expected`` records (then 1 s of silence) or timeout."""
    cons = consumer(settings, None, topic)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    while time.monotonic() < deadline:
        batch = [r for rs in cons.poll(timeout_ms=200).values() for r in rs]
        records.extend(batch)
        if len(records) >= expected:
            quiet_until = quiet_until or time.monotonic() + 1.0
            if time.monotonic() > quiet_until:
                break
    cons.close()
    return records


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def simulated(
    days: int = 40, customers: int = 150, terminals: int = 300, seed: int = 11, jitter_days: float = 0.0
) -> tuple[Any, Any]:
    """A small simulated history: (transactions frame, labels frame)."""
    from fraud_producers.encoding import labels
    from fraud_producers.sim_config import SimulatorConfig
    from fraud_producers.simulator import Simulator

    sim = Simulator(
        SimulatorConfig(
            seed=seed,
            n_customers=customers,
            n_terminals=terminals,
            compromised_terminals_per_day=1,
            compromised_cards_per_day=1,
        )
    )
    batch = sim.generate(datetime(2026, 1, 1, tzinfo=UTC), days)
    lab = labels(batch, delay=timedelta(days=7), jitter=timedelta(days=jitter_days), seed=seed)
    return batch.transactions, lab


def produce_history(settings: Settings, transactions: Any, labels_frame: Any) -> None:
    """Labels first (in report order), then transactions keyed by card (in event order)."""
    from fraud_producers.encoding import label_events, to_event_bytes

    prod = producer(settings)
    for event in label_events(labels_frame.sort_values("reported_at")):
        prod.send(settings.topics.labels.name, key=event["card_id"].encode(), value=orjson.dumps(event))
    for card, value in zip(transactions["card_id"], to_event_bytes(transactions), strict=True):
        prod.send(settings.topics.transactions.name, key=card.encode(), value=value)
    prod.flush()
    prod.close()


def start_processes(
    commands: Mapping[str, list[str]], env: Mapping[str, str], logs: Mapping[str, Path]
) -> dict[str, subprocess.Popen[bytes]]:
    """Each command as a process, its output into its log."""
    return {
        name: subprocess.Popen(argv, env=env, stdout=logs[name].open("wb"), stderr=subprocess.STDOUT)
        for name, argv in commands.items()
    }


def stop_processes(procs: Mapping[str, subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """SIGTERM to those still running, then wait (SIGKILL past ``timeout_s``); safe to call twice."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
