"""EventProducer.flush: it returns once every message sent so far is settled (acknowledged or
failed), as counted from the delivery reports its poller thread serves.

The client here is a stand-in that answers from a thread of its own, as librdkafka's broker
threads do; what reaches a real broker is covered by the integration tests (the quality gate
flushes every batch before it commits)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fraud_producers.producer import EventProducer
from fraudcore.settings import Settings


class AnsweringClient:
    """produce() queues; poll() runs the delivery callbacks whose answer is due."""

    def __init__(self, answer_after_s: float, error: Any = None) -> None:
        self.answer_after_s = answer_after_s
        self.error = error
        self.hold = False  # True: never answer (a broker away)
        self._due: list[tuple[float, Callable[[Any, Any], None]]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, *, value: bytes, key: bytes | None, on_delivery: Any, **_: Any) -> None:
        with self._lock:
            self._due.append((time.monotonic() + self.answer_after_s, on_delivery))

    def poll(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                ready = [] if self.hold else [cb for at, cb in self._due if at <= time.monotonic()]
                self._due = [(at, cb) for at, cb in self._due if cb not in ready]
            for callback in ready:
                callback(self.error, None)
            if ready or time.monotonic() >= deadline:
                return len(ready)
            time.sleep(0.001)

    def flush(self, timeout: float = -1) -> int:
        return len(self._due)


def _producer(client: AnsweringClient) -> EventProducer:
    return EventProducer(Settings(_env_file=None), client=client)  # type: ignore[arg-type]


def test_flush_returns_once_every_message_is_acknowledged() -> None:
    client = AnsweringClient(answer_after_s=0.05)
    producer = _producer(client)
    try:
        for i in range(5):
            producer.send("t", b"k", f"v{i}".encode())
        started = time.monotonic()
        producer.flush(timeout_s=5)
        waited = time.monotonic() - started
        assert producer.stats.acked == 5
        assert waited >= 0.03  # it waited for the answers, not just for the queue
    finally:
        producer.close()


def test_failed_messages_settle_the_flush_and_are_counted() -> None:
    producer = _producer(AnsweringClient(answer_after_s=0.01, error="broker refused"))
    try:
        producer.send("t", b"k", b"v")
        producer.flush(timeout_s=5)
        assert (producer.stats.acked, producer.stats.errors) == (0, 1)
    finally:
        producer.close()


def test_flush_gives_up_after_its_timeout_and_says_how_many_are_left() -> None:
    client = AnsweringClient(answer_after_s=0.0)
    producer = _producer(client)
    try:
        producer.send("t", b"k", b"first")
        producer.flush(timeout_s=5)
        client.hold = True
        producer.send("t", b"k", b"second")
        producer.send("t", b"k", b"third")
        with pytest.raises(TimeoutError, match=re.escape("2 messages not acknowledged within 0.2s")):
            producer.flush(timeout_s=0.2)
        client.hold = False
        producer.flush(timeout_s=5)  # the answers came after all
        assert producer.stats.acked == 3
    finally:
        producer.close()
