"""The quality gate against real Kafka: bad events quarantined with a reason, good ones flow."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import orjson

from fraud_producers.gate import QualityGate
from fraudcore.kafka import producer
from fraudcore.settings import Settings
from tests.helpers import dumps, isolated, read_topic, transaction

FUTURE = (datetime.now(UTC) + timedelta(days=2)).isoformat()

BAD_CORPUS: list[tuple[bytes, str]] = [
    (b"\x00\x01\x02\xff binary garbage", "payload: not valid UTF-8 JSON"),
    (b'{"transaction_id": "tx-trunc", "amount": 1', "payload: not valid UTF-8 JSON"),
    (b"x" * 200_000, "payload: 200000 bytes exceeds the limit of 65536"),
    (b"[]", "payload: must be a JSON object, got array"),
    (dumps(transaction(1, amount=-5)), "amount: must be > 0"),
    (dumps(transaction(2, amount="12.0")), "amount: must be of type number, got string"),
    (dumps(transaction(3, currency="XX")), "currency: 'XX' is not ISO-4217"),
    (
        dumps(transaction(4, timestamp="not a time")),
        "timestamp: 'not a time' is not ISO-8601 with a UTC offset",
    ),
    (dumps(transaction(5, timestamp=FUTURE)), "timestamp: " + FUTURE + " is more than 300s in the future"),
    (dumps(transaction(6, card_id="")), "card_id: must not be empty"),
    (dumps({k: v for k, v in transaction(7).items() if k != "terminal_id"}), "terminal_id: is required"),
    (dumps({**transaction(8), "is_fraud": 1}), "is_fraud: is not a field of this event"),
]


def test_bad_events_land_in_dead_letter_with_reason_and_good_ones_flow(stack: Settings, unique: str) -> None:
    settings = isolated(stack, unique)
    topics = settings.topics
    good_before = [dumps(transaction(100 + i)) for i in range(50)]
    good_after = [dumps(transaction(200 + i)) for i in range(50)]
    prod = producer(settings, max_request_size=1_000_000)
    for raw in [*good_before, *(raw for raw, _ in BAD_CORPUS), *good_after]:
        prod.send(topics.raw.name, key=b"k", value=raw)
    prod.flush()
    prod.close()

    gate = QualityGate(settings, group=f"gate-{unique}")
    gate.run(threading.Event(), idle_exit_s=3)

    forwarded = read_topic(settings, topics.transactions.name, 100)
    assert [r.value for r in forwarded] == good_before + good_after  # same key, so same order
    dead = read_topic(settings, topics.dead_letter.name, len(BAD_CORPUS))
    assert len(dead) == len(BAD_CORPUS)
    for record, (raw, reason) in zip(dead, BAD_CORPUS, strict=True):
        headers = dict(record.headers)
        assert record.value == raw  # the original bytes, untouched
        assert headers["dlq-reason"].decode().startswith(reason), headers["dlq-reason"]
        assert headers["dlq-component"] == b"quality-gate"
        assert headers["dlq-source-topic"].decode() == topics.raw.name
    assert (gate.accepted, gate.rejected) == (100, len(BAD_CORPUS))


def test_gate_forwards_with_card_key_when_record_has_none(stack: Settings, unique: str) -> None:
    settings = isolated(stack, unique)
    prod = producer(settings)
    prod.send(settings.topics.raw.name, key=None, value=dumps(transaction(9)))
    prod.flush()
    QualityGate(settings, group=f"gate-{unique}").run(threading.Event(), idle_exit_s=2)
    [record] = read_topic(settings, settings.topics.transactions.name, 1)
    assert record.key == orjson.loads(record.value)["card_id"].encode()
