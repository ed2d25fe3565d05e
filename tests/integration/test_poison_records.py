"""Poison records on every topic the archiver and the feature job read (``transactions``,
``fraud-labels``), against real Kafka, Redis and MinIO: each record that cannot be taken is
dead-lettered once, with its original bytes and a reason naming the field; the component
stays up and takes every record after it. (The quality gate's own corpus on
``transactions-raw`` is in test_gate.py; the transformer's bad requests in
test_serving_e2e.py.)"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fraud_features.stream import FeatureJob
from fraud_producers.archive import Archiver
from fraudcore.kafka import producer
from fraudcore.settings import Settings
from fraudcore.storage import s3_client
from tests.helpers import dumps, isolated, produce_history, read_topic, simulated, transaction

MEGABYTE = b'{"pad": "' + b"x" * 1_000_000 + b'"}'


def _without(event: dict[str, Any], field: str) -> bytes:
    return dumps({k: v for k, v in event.items() if k != field})


def transaction_poison() -> list[tuple[bytes, bytes | None]]:
    """(value, key): what a broken or hostile producer can put on ``transactions``."""
    return [
        (b"\x00\xff garbage", b"C1"),
        (b"[1, 2]", b"C1"),
        (b"", b"C1"),
        (dumps({**transaction(900), "amount": "abc"}), b"C1"),
        (_without(transaction(901), "timestamp"), None),  # no key either
        (MEGABYTE, b"C1"),
    ]


def label_poison() -> list[tuple[bytes, bytes | None]]:
    label = {
        "schema_version": 1,
        "transaction_id": "tx-poison",
        "card_id": "C1",
        "terminal_id": "T1",
        "transaction_timestamp": "2026-03-01T10:00:00+00:00",
        "reported_at": "2026-03-08T10:00:00+00:00",
    }
    return [(b"not json", None), (b"{}", b"C1"), (_without(label, "reported_at"), b"C1"), (MEGABYTE, b"C1")]


def _send(settings: Settings, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    prod = producer(settings, max_request_size=2 * 1024 * 1024)
    for value, key in records:
        prod.send(topic, key=key, value=value)
    prod.flush()
    prod.close()


def _dead_letters(settings: Settings, expected: int) -> list[tuple[bytes, dict[str, str]]]:
    dead = read_topic(settings, settings.topics.dead_letter.name, expected)
    return [(r.value, {k: v.decode() for k, v in r.headers}) for r in dead]


def _check_dead_letters(
    dead: list[tuple[bytes, dict[str, str]]], poison: list[tuple[bytes, bytes | None]], component: str
) -> dict[bytes, str]:
    """Each poison record dead-lettered exactly once, with its bytes and a reason naming a
    field; returns the reasons by record value."""
    assert sorted(value for value, _ in dead) == sorted(value for value, _ in poison)
    for value, headers in dead:
        assert headers["dlq-component"] == component
        field, _, problem = headers["dlq-reason"].partition(": ")
        assert field, (value[:40], headers["dlq-reason"])
        assert problem, (value[:40], headers["dlq-reason"])
    return {value: headers["dlq-reason"] for value, headers in dead}


def test_the_archiver_dead_letters_poison_and_archives_everything_else(stack: Settings, unique: str) -> None:
    settings = isolated(stack, unique)
    good = [transaction(i) for i in range(30)]
    poison, bad_labels = transaction_poison(), label_poison()
    _send(settings, settings.topics.transactions.name, [(dumps(t), b"C1") for t in good[:15]])
    _send(settings, settings.topics.transactions.name, poison)
    keyless = transaction(99)  # valid without a key: archived like any other
    _send(settings, settings.topics.transactions.name, [(dumps(t), b"C1") for t in good[15:]])
    _send(settings, settings.topics.transactions.name, [(dumps(keyless), None)])
    _send(settings, settings.topics.labels.name, bad_labels)

    prefix = f"tests/{unique}"
    archiver = Archiver(
        settings, group=f"arch-{unique}", block_size=1000, flush_interval_s=0.2, prefix=prefix
    )
    archiver.run(threading.Event(), idle_exit_s=3)

    client = s3_client(settings)
    archived: list[str] = []
    for obj in client.list_objects(settings.s3.raw_bucket, prefix=f"{prefix}/", recursive=True):
        data = client.get_object(settings.s3.raw_bucket, obj.object_name or "").read()
        archived += pq.read_table(io.BytesIO(data)).column("transaction_id").to_pylist()
    assert sorted(archived) == sorted(t["transaction_id"] for t in [*good, keyless])
    dead = _dead_letters(settings, len(poison) + len(bad_labels))
    reasons = _check_dead_letters(dead, poison + bad_labels, "archiver")
    assert reasons[b"[1, 2]"] == "payload: must be a JSON object"
    assert reasons[MEGABYTE].startswith("payload: 1000011 bytes exceeds the limit")
    assert reasons[poison[3][0]].startswith("amount: ")
    assert reasons[poison[4][0]] == "timestamp: is required"

    # Restarted, it reads nothing again: the poison's offsets were committed past.
    again = Archiver(settings, group=f"arch-{unique}", block_size=1000, flush_interval_s=0.2, prefix=prefix)
    again.run(threading.Event(), idle_exit_s=2)
    assert len(read_topic(settings, settings.topics.dead_letter.name, len(dead))) == len(dead)


def test_the_feature_job_dead_letters_poison_and_serves_everything_else(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    from tests.integration.test_feature_job import _settings

    settings = _settings(stack, unique, tmp_path)
    transactions, labels = simulated(days=3, customers=20, terminals=40)
    poison, bad_labels = transaction_poison(), label_poison()
    _send(settings, settings.topics.transactions.name, poison)
    _send(settings, settings.topics.labels.name, bad_labels)
    produce_history(settings, transactions, labels)
    job = FeatureJob(settings, group=f"fj-{unique}")
    job.run(threading.Event(), idle_exit_s=3)
    assert job.processed == len(transactions)
    dead = _dead_letters(settings, len(poison) + len(bad_labels))
    reasons = _check_dead_letters(dead, poison + bad_labels, "feature-job")
    assert reasons[poison[3][0]] == "amount: must be a number, got str"
