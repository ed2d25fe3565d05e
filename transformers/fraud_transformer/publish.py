"""Decision events to ``fraud-scores``, acknowledged before the caller gets a 2xx.

The producer is librdkafka's (``confluent_kafka``): batching, retries and network I/O run in
its C threads, so a decision costs the event loop a few microseconds. Delivery reports are
served by one poller thread and bridged to asyncio futures on the server's loop
(``call_soon_threadsafe``), so a request awaits its acks without blocking the loop.
With ``acks=all`` and idempotence, an acknowledged decision is on the broker: a kill -9 of
the transformer afterwards loses nothing the caller saw acknowledged; one killed before the
ack never answered 2xx, and the redelivered event yields the same ``decision_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import confluent_kafka

from fraudcore.kafka import DeliveryReports, librdkafka_producer
from fraudcore.settings import Settings

log = logging.getLogger(__name__)


def serving_producer(settings: Settings) -> confluent_kafka.Producer:
    """The platform's durable producer for decisions: no linger (a request waits for its own
    acks) and a bounded local queue, so a broker outage fails requests instead of piling up."""
    return librdkafka_producer(
        settings,
        **{"client.id": f"{settings.kafka.client_id}-transformer", "queue.buffering.max.messages": 100_000},
    )


class PublishError(Exception):
    pass


def _settle(future: asyncio.Future[Any], error: Any, message: Any) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(PublishError(str(error)))
    else:
        future.set_result((message.partition(), message.offset()))


class DecisionPublisher:
    def __init__(self, client: confluent_kafka.Producer, topic: str, timeout_s: float) -> None:
        self.client = client
        self.topic = topic
        self.timeout_s = timeout_s
        self._reports = DeliveryReports(client, "decision-acks")

    def warm_up(self, timeout_s: float = 10.0) -> None:
        """Fetch the topic's metadata now rather than on the first request."""
        metadata = self.client.list_topics(self.topic, timeout=timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(
                f"topic {self.topic!r} is not available: {topic.error if topic else 'missing'}"
            )
        log.info("publishing decisions to %s (%d partitions)", self.topic, len(topic.partitions))

    async def publish(
        self, records: Sequence[tuple[bytes, bytes]], topic: str | None = None
    ) -> list[tuple[int, int]]:
        """Send every (key, value) to ``topic`` (default: the decisions topic) and wait until
        the broker has acknowledged them all; return their (partition, offset)."""
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[Any]] = []
        for key, value in records:
            done: asyncio.Future[Any] = loop.create_future()

            def report(error: Any, message: Any, f: asyncio.Future[Any] = done) -> None:
                loop.call_soon_threadsafe(_settle, f, error, message)

            try:
                self.client.produce(topic or self.topic, value=value, key=key, on_delivery=report)
            except BufferError as exc:  # the local queue is full: the broker is away or slow
                raise PublishError(f"producer queue full: {exc}") from exc
            waiting.append(done)
        return list(await asyncio.wait_for(asyncio.gather(*waiting), timeout=self.timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        remaining = self.client.flush(timeout_s)
        self._reports.stop()
        if remaining:
            log.warning("%d decisions were not acknowledged before shutdown", remaining)
