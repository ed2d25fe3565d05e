"""A local stand-in for Knative Eventing's KafkaSource: Kafka records in, CloudEvents out.

It reads its configuration from the same KafkaSource manifest the cluster uses
(`kustomize/base/serving/eventing.yaml`): topics, consumer group, delivery retry, backoff
policy and delay. Only what Knative resolves on a cluster is given locally: the bootstrap
servers and the sink's URL.

Delivery follows KafkaSource's contract:
* each record becomes a CloudEvent in binary mode: ``ce-specversion: 1.0``,
  ``ce-id: partition:<p>/offset:<o>``, ``ce-type: dev.knative.kafka.event``,
  ``ce-source: /apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>``,
  ``ce-subject: partition:<p>#<o>``, ``ce-time`` (the record's timestamp), the record key
  as the ``ce-key`` extension, and the record value as the body;
* ``ordering: ordered`` keeps the order of records with the same key (different keys are
  delivered concurrently, up to ``max_in_flight``); ``unordered`` drops that constraint;
* a failed delivery (connection error, 5xx, 404, 408, 409, 429) is retried ``retry`` times
  with ``linear`` or ``exponential`` backoff from ``backoffDelay``; other 4xx answers are
  final. After the retries the record goes to the dead-letter topic with the reason;
* offsets are committed only after every record of the batch was answered 2xx or
  dead-lettered: at-least-once, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from fraudcore.kafka import consumer as make_consumer
from fraudcore.kafka import dead_letter_headers
from fraudcore.kafka import producer as make_producer
from fraudcore.metrics import DEAD_LETTERS
from fraudcore.settings import Settings

log = logging.getLogger(__name__)
COMPONENT = "dispatcher"

DELIVERED = Counter("dispatcher_deliveries", "Delivery attempts by outcome", ["outcome"])
DELIVERY_SECONDS = Histogram(
    "dispatcher_delivery_seconds",
    "Time from the record's timestamp to the sink's 2xx answer",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
RETRYABLE = {404, 408, 409, 429}
DEFAULT_MANIFEST = Path("kustomize/base/serving/eventing.yaml")


class Delivery(BaseModel):
    retry: int = Field(3, ge=0)
    backoff_policy: Literal["linear", "exponential"] = "exponential"
    backoff_delay_s: float = Field(0.1, ge=0)


class SourceSpec(BaseModel):
    """The parts of a KafkaSource spec the dispatcher honours."""

    name: str = "fraud-scoring"
    namespace: str = "fraud"
    topics: list[str]
    consumer_group: str
    ordering: Literal["ordered", "unordered"] = "ordered"
    initial_offset: Literal["earliest", "latest"] = "latest"
    delivery: Delivery = Delivery()
    sink_path: str = ""


def iso_duration_s(value: str) -> float:
    """ISO-8601 durations as KafkaSource's backoffDelay uses them (PT0.2S, PT1M, P1D)."""
    match = re.fullmatch(
        r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", value
    )
    if not match or value in ("P", "PT"):
        raise ValueError(f"backoffDelay: {value!r} is not an ISO-8601 duration")
    d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return d * 86_400 + h * 3_600 + m * 60 + s


def load_source(path: Path = DEFAULT_MANIFEST, name: str | None = None) -> SourceSpec:
    """Read a KafkaSource from a (multi-document) manifest."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "KafkaSource":
            continue
        if name and doc["metadata"]["name"] != name:
            continue
        spec = doc["spec"]
        delivery = spec.get("delivery", {})
        return SourceSpec(
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace", "fraud"),
            topics=spec["topics"],
            consumer_group=spec["consumerGroup"],
            ordering=spec.get("ordering", "ordered"),
            initial_offset=spec.get("initialOffset", "latest"),
            delivery=Delivery(
                retry=delivery.get("retry", 3),
                backoff_policy=delivery.get("backoffPolicy", "exponential"),
                backoff_delay_s=iso_duration_s(delivery.get("backoffDelay", "PT0.1S")),
            ),
            sink_path=spec.get("sink", {}).get("uri", ""),
        )
    raise ValueError(f"{path}: no KafkaSource{' named ' + name if name else ''}")


@dataclass
class Outcome:
    ok: bool
    reason: str = ""


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        spec: SourceSpec,
        sink: str | list[str],
        *,
        max_in_flight: int = 64,
        timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.spec = spec
        # Several sinks stand for the replicas behind one Service: a key always goes to the
        # same replica, so per-key order holds.
        self.sinks = [sink] if isinstance(sink, str) else list(sink)
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.delivered = 0
        self.dead_lettered = 0
        self.dlq = make_producer(settings)

    def _headers(self, record: Any) -> dict[str, str]:
        topic, p, o = record.topic, record.partition, record.offset
        headers = {
            "ce-specversion": "1.0",
            "ce-id": f"partition:{p}/offset:{o}",
            "ce-type": "dev.knative.kafka.event",
            "ce-source": f"/apis/v1/namespaces/{self.spec.namespace}/kafkasources/{self.spec.name}#{topic}",
            "ce-subject": f"partition:{p}#{o}",
            "ce-time": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(),
            "content-type": "application/json",
        }
        if record.key is not None:
            headers["ce-key"] = record.key.decode(errors="replace")
        return headers

    async def _deliver(self, client: httpx.AsyncClient, record: Any) -> Outcome:
        delivery = self.spec.delivery
        reason = ""
        for attempt in range(delivery.retry + 1):
            if attempt:
                factor = 2 ** (attempt - 1) if delivery.backoff_policy == "exponential" else attempt
                await asyncio.sleep(delivery.backoff_delay_s * factor)
                DELIVERED.labels("retry").inc()
            sink = self.sinks[hash(record.key) % len(self.sinks)]
            try:
                response = await client.post(sink, content=record.value or b"", headers=self._headers(record))
            except httpx.HTTPError as exc:
                reason = f"sink: {type(exc).__name__}: {exc}"
                continue
            if 200 <= response.status_code < 300:
                DELIVERED.labels("success").inc()
                DELIVERY_SECONDS.observe(max(0.0, time.time() - record.timestamp / 1000))
                return Outcome(True)
            reason = f"sink: HTTP {response.status_code}: {response.text[:500]}"
            if response.status_code < 500 and response.status_code not in RETRYABLE:
                break  # the event itself is bad: retrying cannot help
        return Outcome(False, reason)

    async def _deliver_chain(
        self, client: httpx.AsyncClient, records: list[Any], gate: asyncio.Semaphore
    ) -> None:
        for record in records:  # one key's records, in order
            async with gate:
                outcome = await self._deliver(client, record)
            if outcome.ok:
                self.delivered += 1
            else:
                self._dead_letter(record, outcome.reason)

    def _dead_letter(self, record: Any, reason: str) -> None:
        DELIVERED.labels("dead_letter").inc()
        DEAD_LETTERS.labels(COMPONENT, "delivery").inc()
        headers = dead_letter_headers(COMPONENT, reason, record.topic, record.partition, record.offset)
        self.dlq.send(
            self.settings.topics.dead_letter.name, key=record.key, value=record.value or b"", headers=headers
        )
        self.dead_lettered += 1

    async def deliver_batch(self, client: httpx.AsyncClient, records: list[Any]) -> None:
        gate = asyncio.Semaphore(self.max_in_flight)
        if self.spec.ordering == "ordered":
            chains: dict[Any, list[Any]] = defaultdict(list)
            for r in records:
                chains[(r.topic, r.partition, r.key)].append(r)
            groups = list(chains.values())
        else:
            groups = [[r] for r in records]
        await asyncio.gather(*(self._deliver_chain(client, g, gate) for g in groups))
        if self.dead_lettered:
            self.dlq.flush()  # dead letters are durable before the offsets move

    async def run_async(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        consumer = make_consumer(
            self.settings,
            self.spec.consumer_group,
            *self.spec.topics,
            auto_offset_reset=self.spec.initial_offset,
            fetch_max_wait_ms=5,
            max_poll_records=1000,
        )
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        last = time.monotonic()
        from fraudcore.kafka import record_lag

        try:
            async with httpx.AsyncClient(limits=limits, timeout=self.timeout_s) as client:
                while not stop.is_set():
                    batches = await asyncio.to_thread(consumer.poll, 20)
                    records = [r for batch in batches.values() for r in batch]
                    if records:
                        await self.deliver_batch(client, records)
                        await asyncio.to_thread(consumer.commit)
                        last = time.monotonic()
                        record_lag(consumer, self.spec.consumer_group)
                    elif not consumer.assignment():
                        last = time.monotonic()
                    elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                        break
        finally:
            consumer.close()
            self.dlq.flush()

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        asyncio.run(self.run_async(stop, idle_exit_s))
