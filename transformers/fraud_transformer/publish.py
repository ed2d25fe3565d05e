"""Decision events to ``fraud-scores``, acknowledged before the caller gets a 2xx.

kafka-python's producer runs its network I/O in a sender thread and resolves each record's
future there. Each future's callbacks are bridged to an asyncio future on the server's event
loop (``call_soon_threadsafe``), so a request awaits its acks without blocking the loop.
With ``acks=all`` and idempotence, an acknowledged decision is on the broker: a kill -9 of
the transformer afterwards loses nothing the caller saw acknowledged; one killed before the
ack never answered 2xx, and the redelivered event yields the same ``decision_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer

from fraudcore.kafka import producer
from fraudcore.settings import Settings

log = logging.getLogger(__name__)


def serving_producer(settings: Settings) -> KafkaProducer:
    """The platform's durable producer, tuned for one small batch per request: no linger
    (a request waits for its own acks), and a short block when the broker is away."""
    return producer(
        settings, linger_ms=0, max_block_ms=2_000, client_id=f"{settings.kafka.client_id}-transformer"
    )


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class DecisionPublisher:
    def __init__(self, client: KafkaProducer, topic: str, timeout_s: float) -> None:
        self.client = client
        self.topic = topic
        self.timeout_s = timeout_s

    def warm_up(self) -> None:
        """Fetch the topic's metadata now: a first send would otherwise block for it."""
        partitions = self.client.partitions_for(self.topic)
        log.info("publishing decisions to %s (%d partitions)", self.topic, len(partitions or ()))

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> list[Any]:
        """Send every (key, value) and wait until the broker has acknowledged them all."""
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[Any]] = []
        for key, value in records:
            done: asyncio.Future[Any] = loop.create_future()
            sent = self.client.send(self.topic, key=key, value=value)
            sent.add_callback(lambda metadata, f=done: loop.call_soon_threadsafe(_resolve, f, metadata))
            sent.add_errback(lambda error, f=done: loop.call_soon_threadsafe(_reject, f, error))
            waiting.append(done)
        return list(await asyncio.wait_for(asyncio.gather(*waiting), timeout=self.timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        self.client.flush(timeout=timeout_s)
        self.client.close(timeout=timeout_s)
