"""Sending events to Kafka: durable, keyed, rate-controlled, measured to the broker's ack.

Rate control works in time slices (100 a second): at each slice the loop sends however
many messages the target rate says are due by now, then sleeps to the next slice. There is
no sleep per message, and falling behind is caught up in the next slice, so the achieved
rate tracks the target closely at any rate the client can sustain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import confluent_kafka
from prometheus_client import Counter, Histogram

from fraudcore.kafka import DeliveryReports, librdkafka_producer
from fraudcore.settings import Settings

MESSAGES_SENT = Counter("producer_messages_sent", "Messages acknowledged by the broker", ["topic"])
SEND_ERRORS = Counter("producer_send_errors", "Messages the broker did not acknowledge", ["topic"])
SEND_LATENCY = Histogram(
    "producer_send_latency_seconds",
    "Time from send() to the broker's acknowledgement (acks=all)",
    ["topic"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

Message = tuple[bytes, bytes]  # (key, value)


@dataclass
class SendStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    ack_latencies: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class EventProducer:
    """A librdkafka producer with the project's durable defaults and ack-time metrics.

    librdkafka batches, retries and talks to the brokers in its own C threads; this class
    queues messages, and a poller thread serves their delivery reports as they arrive (so
    the ack times it records are the broker's, not those of the sender's next call)."""

    def __init__(
        self,
        settings: Settings,
        *,
        keep_latencies: bool = False,
        client: confluent_kafka.Producer | None = None,
        linger_ms: int = 1,
    ) -> None:
        # linger.ms 1 gathers a producer's own burst into one request; a stage that waits
        # for its acks before it commits (the quality gate) takes 0.
        self.client = client or librdkafka_producer(settings, **{"linger.ms": linger_ms})
        self.stats = SendStats()
        self._settled = threading.Condition()  # notified by each delivery report
        self._keep = keep_latencies
        self._children: dict[str, tuple[Counter, Counter, Histogram]] = {}
        self._reports = DeliveryReports(self.client, "producer-acks")

    def _metrics(self, topic: str) -> tuple[Counter, Counter, Histogram]:
        if topic not in self._children:
            self._children[topic] = (
                MESSAGES_SENT.labels(topic),
                SEND_ERRORS.labels(topic),
                SEND_LATENCY.labels(topic),
            )
        return self._children[topic]

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        timestamp_ms: int = 0,
    ) -> None:
        """Queue one message; ``timestamp_ms`` (0: now) is the record's time."""
        sent, errors, latency = self._metrics(topic)
        t0 = time.perf_counter()

        def report(error: Any, _message: Any) -> None:
            if error is not None:
                errors.inc()
                self.stats.errors += 1
            else:
                elapsed = time.perf_counter() - t0
                latency.observe(elapsed)
                sent.inc()
                self.stats.acked += 1
                if self._keep:
                    self.stats.ack_latencies.append(elapsed)
            with self._settled:
                self._settled.notify_all()

        while True:
            try:
                self.client.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=cast(Any, headers),
                    on_delivery=report,
                    timestamp=timestamp_ms,
                )
                break
            except BufferError:  # the local queue is full: wait for the broker to catch up
                time.sleep(0.01)
        self.stats.sent += 1

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message sent so far is acknowledged or has failed (``stats.errors``).

        The delivery reports are served by this producer's poller thread, so this waits for
        them to be counted. librdkafka's own flush polls in 10-ms steps for reports that the
        poller thread has already taken: it added 10 ms to every call, and the quality gate
        flushes every batch before it commits."""
        target = self.stats.sent
        with self._settled:
            settled = self._settled.wait_for(
                lambda: self.stats.acked + self.stats.errors >= target, timeout_s
            )
        if not settled:
            left = target - self.stats.acked - self.stats.errors
            raise TimeoutError(f"{left} messages not acknowledged within {timeout_s}s")

    def close(self) -> None:
        self.client.flush()
        self._reports.stop()


def paced(
    messages: Iterable[Message],
    rate: float | None,
    *,
    duration_s: float | None = None,
    slices_per_s: int = 100,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[Message]]:
    """Yield the messages in time slices so that ``rate`` messages a second go out.

    ``rate=None`` means as fast as possible (slices of 5,000). Stops when the messages run
    out or ``duration_s`` has passed.
    """
    it = iter(messages)
    start = clock()
    due_total = 0
    if rate is None:
        while duration_s is None or clock() - start < duration_s:
            chunk = [m for _, m in zip(range(5000), it, strict=False)]
            if not chunk:
                return
            yield chunk
        return
    tick = 1.0 / slices_per_s
    next_tick = start
    while True:
        now = clock()
        if duration_s is not None and now - start >= duration_s:
            return
        target = int(rate * (now - start)) + 1
        if target > due_total:
            chunk = [m for _, m in zip(range(target - due_total), it, strict=False)]
            if not chunk:
                return
            due_total += len(chunk)
            yield chunk
        next_tick += tick
        delay = next_tick - clock()
        if delay > 0:
            sleep(delay)
        else:
            next_tick = clock()  # fell behind: the next slice's target (absolute) catches up


def send_paced(
    producer: EventProducer,
    topic: str,
    messages: Iterable[Message],
    rate: float | None,
    *,
    duration_s: float | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> SendStats:
    """Send keyed messages to ``topic`` at ``rate`` per second; flush and return the stats."""
    producer.stats = SendStats(ack_latencies=producer.stats.ack_latencies)
    for chunk in paced(messages, rate, duration_s=duration_s):
        for key, value in chunk:
            producer.send(topic, key, value)
        if on_slice:
            on_slice(len(chunk))
    producer.stats.finished = time.perf_counter()
    producer.flush()
    return producer.stats
