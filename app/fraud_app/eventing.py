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
* records are delivered as soon as they are read (no batch barrier), and a partition's
  offset is committed only past records answered 2xx or dead-lettered: at-least-once,
  never a loss.

Two builds keep this contract: ``Dispatcher`` here, and a Go build (``app/kafkasource``,
which ``make setup`` compiles to ``fraud-kafkasource`` beside the virtualenv's python).
``fraud dispatch`` runs the Go build when there is one: delivery is per event, and in
Python it cost about half a millisecond of CPU per event. Both read their configuration
from here (``go_config``), with the same metric names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import aiohttp
import confluent_kafka
import uvloop
import yaml
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from fraudcore.health import LIVENESS
from fraudcore.kafka import (
    Record,
    consume_ready,
    dead_letter,
    librdkafka_consumer,
    record_lag,
)
from fraudcore.kafka import producer as make_producer
from fraudcore.settings import Settings

log = logging.getLogger(__name__)
COMPONENT = "dispatcher"

DELIVERED = Counter("dispatcher_deliveries", "Delivery attempts by outcome", ["outcome"])
DELIVERY_SECONDS = Histogram(
    "dispatcher_delivery_seconds",
    "Time from the record's timestamp to the sink's 2xx answer",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PENDING = Gauge("dispatcher_pending_records", "Records read and not yet delivered or dead-lettered")
RETRYABLE = {404, 408, 409, 429}
# librdkafka prefetches up to this much per consumer (its default is 64 MiB): with
# max_pending, what bounds the dispatcher's memory while the sink does not answer.
PREFETCH_KBYTES = 8 * 1024
DEFAULT_MANIFEST = Path("kustomize/base/serving/eventing.yaml")
# Both builds' limits: concurrent deliveries (records of one key stay in order), records
# read and unfinished before the fetch pauses, one HTTP call's timeout, commit period.
MAX_IN_FLIGHT = 64
MAX_PENDING = 5_000
TIMEOUT_S = 10.0
COMMIT_INTERVAL_S = 0.1
GO_BUILD = "fraud-kafkasource"
GO_CONFIG_ENV = "FRAUD_KAFKASOURCE_CONFIG"  # the Go build's configuration, as JSON


class Delivery(BaseModel):
    retry: int = Field(3, ge=0)
    backoff_policy: Literal["linear", "exponential"] = "exponential"
    backoff_delay_s: float = Field(0.1, ge=0)

    def delay_before_retry_s(self, n: int) -> float:
        """The wait before retry ``n`` (1, 2, ...), as Knative computes it: backoffDelay x n
        (linear) or backoffDelay x 2^n (exponential)."""
        return self.backoff_delay_s * (2**n if self.backoff_policy == "exponential" else n)


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


class OffsetTracker:
    """What may be committed per partition: the offset after the longest run of finished
    records. Records finish out of order (different keys run concurrently); the committed
    position never passes one that has not finished, so a crash redelivers, never skips."""

    def __init__(self) -> None:
        self._order: dict[tuple[str, int], deque[int]] = {}  # started offsets, oldest first
        self._unfinished: dict[tuple[str, int], set[int]] = {}
        self._safe: dict[tuple[str, int], int] = {}
        self.outstanding = 0

    def started(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        unfinished = self._unfinished.setdefault(tp, set())
        if record.offset in unfinished:  # redelivered after a rebalance while still in flight
            return
        unfinished.add(record.offset)
        self._order.setdefault(tp, deque()).append(record.offset)
        self.outstanding += 1

    def finished(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        unfinished = self._unfinished.get(tp)
        if unfinished is None or record.offset not in unfinished:  # partition revoked meanwhile
            return
        unfinished.discard(record.offset)
        self.outstanding -= 1
        order = self._order.get(tp)  # (a revoke runs on the consumer's thread)
        while order and order[0] not in unfinished:
            self._safe[tp] = order.popleft() + 1

    def committable(self) -> dict[tuple[str, int], int]:
        """Positions not yet handed out for commit (and forgets them)."""
        safe, self._safe = self._safe, {}
        return safe

    def forget(self, topic: str, partition: int) -> None:
        tp = (topic, partition)
        self.outstanding -= len(self._unfinished.pop(tp, ()))
        self._order.pop(tp, None)
        self._safe.pop(tp, None)


class Dispatcher:
    """Records are delivered as they arrive: each key's records one after another (``ordered``),
    different keys concurrently up to ``max_in_flight``; consumption pauses while
    ``max_pending`` records are unfinished; finished positions are committed every
    ``commit_interval_s``.

    Backpressure: at ``max_pending`` unfinished records the assigned partitions are paused
    (the consumer keeps polling, so it stays in its group however long the sink is away)
    and resumed once deliveries catch up; memory stays within ``max_pending`` records plus
    librdkafka's prefetch (``PREFETCH_KBYTES``)."""

    def __init__(
        self,
        settings: Settings,
        spec: SourceSpec,
        sink: str | list[str],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_pending: int = MAX_PENDING,
        timeout_s: float = TIMEOUT_S,
        commit_interval_s: float = COMMIT_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self.spec = spec
        # Several sinks stand for the replicas behind one Service: a key always goes to the
        # same replica, so per-key order holds.
        self.sinks = [sink] if isinstance(sink, str) else list(sink)
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.commit_interval_s = commit_interval_s
        self.delivered = 0
        self.dead_lettered = 0
        self.pending_high_water = 0  # the most unfinished records at once
        self.pauses = 0  # times consumption paused for backpressure
        self.dlq = make_producer(settings)
        self._source = f"/apis/v1/namespaces/{spec.namespace}/kafkasources/{spec.name}#"

    def _headers(self, record: Record) -> dict[str, str]:
        p, o = record.partition, record.offset
        headers = {
            "ce-specversion": "1.0",
            "ce-id": f"partition:{p}/offset:{o}",
            "ce-type": "dev.knative.kafka.event",
            "ce-source": self._source + record.topic,
            "ce-subject": f"partition:{p}#{o}",
            "ce-time": datetime.fromtimestamp(record.timestamp_ms / 1000, UTC).isoformat(),
            "content-type": "application/json",
        }
        if record.key is not None:
            headers["ce-key"] = record.key.decode(errors="replace")
        return headers

    def _sink_for(self, record: Record) -> str:
        if len(self.sinks) == 1:
            return self.sinks[0]
        return self.sinks[zlib.crc32(record.key or b"") % len(self.sinks)]

    async def _deliver(self, client: aiohttp.ClientSession, record: Record) -> Outcome:
        delivery = self.spec.delivery
        reason = ""
        sink, headers = self._sink_for(record), self._headers(record)
        for attempt in range(delivery.retry + 1):
            if attempt:
                await asyncio.sleep(delivery.delay_before_retry_s(attempt))
                DELIVERED.labels("retry").inc()
            try:
                async with client.post(sink, data=record.value, headers=headers) as response:
                    status = response.status
                    body = await response.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"sink: {type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                DELIVERED.labels("success").inc()
                DELIVERY_SECONDS.observe(max(0.0, time.time() - record.timestamp_ms / 1000))
                return Outcome(True)
            reason = f"sink: HTTP {status}: {body[:500]}"
            if status < 500 and status not in RETRYABLE:
                break  # the event itself is bad: retrying cannot help
        return Outcome(False, reason)

    def _dead_letter(self, record: Record, reason: str) -> None:
        DELIVERED.labels("dead_letter").inc()
        future = dead_letter(self.dlq.send, self.settings, COMPONENT, "delivery", reason, record)
        future.get(timeout=30)  # durable before its offset can be committed
        self.dead_lettered += 1

    async def _handle(self, client: aiohttp.ClientSession, record: Record, gate: asyncio.Semaphore) -> None:
        async with gate:
            outcome = await self._deliver(client, record)
        if outcome.ok:
            self.delivered += 1
            return
        while True:  # the record's offset stays uncommitted until its dead letter is durable
            try:
                await asyncio.to_thread(self._dead_letter, record, outcome.reason)
                return
            except Exception as exc:
                log.error(
                    "dead-lettering %s/%d@%d failed (%s); retrying",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                await asyncio.sleep(1)

    async def run_async(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        tracker = OffsetTracker()
        reset: dict[str, Any] = {
            "auto.offset.reset": self.spec.initial_offset,
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
        }
        consumer = librdkafka_consumer(
            self.settings,
            self.spec.consumer_group,
            self.spec.topics,
            on_revoke=lambda c, partitions: self._revoked(c, partitions, tracker),
            **reset,
        )
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        gate = asyncio.Semaphore(self.max_in_flight)
        chains: dict[Any, deque[Record]] = {}  # per key: records waiting behind the one in flight
        tasks: set[asyncio.Task[None]] = set()
        ordered = self.spec.ordering == "ordered"
        progress = LIVENESS.watch(self.spec.consumer_group)  # /healthz: deliveries must advance

        async def run_chain(client: aiohttp.ClientSession, key: Any, first: Record) -> None:
            record: Record | None = first
            while record is not None:
                await self._handle(client, record, gate)
                tracker.finished(record)
                progress.advanced()
                waiting = chains.get(key)
                record = waiting.popleft() if waiting else None
            chains.pop(key, None)

        def start(client: aiohttp.ClientSession, record: Record) -> None:
            tracker.started(record)
            key: Any = (record.topic, record.partition, record.key) if ordered else None
            if ordered and key in chains:
                chains[key].append(record)
                return
            if ordered:
                chains[key] = deque()
            task = asyncio.create_task(run_chain(client, key, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        last_event = last_commit = last_lag = time.monotonic()
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
                paused: set[tuple[str, int]] = set()
                while not stop.is_set():
                    PENDING.set(tracker.outstanding)
                    self.pending_high_water = max(self.pending_high_water, tracker.outstanding)
                    if tracker.outstanding >= self.max_pending:
                        paused |= self._pause(consumer, paused)
                    elif paused:
                        consumer.resume([confluent_kafka.TopicPartition(t, p) for t, p in paused])
                        paused.clear()
                    # While paused this returns nothing but still serves the group (and its
                    # rebalances): the consumer is never dropped for not polling.
                    messages = await asyncio.to_thread(consume_ready, consumer, 500, 0.02)
                    for message in messages:
                        if message.error():
                            log.warning("consumer: %s", message.error())
                            continue
                        start(client, Record.of(message))
                    now = time.monotonic()
                    if messages or tracker.outstanding:
                        last_event = now
                    elif idle_exit_s is not None and consumer.assignment() and now - last_event > idle_exit_s:
                        break
                    if now - last_commit >= self.commit_interval_s:
                        self._commit(consumer, tracker, asynchronous=True)
                        last_commit = now
                    if now - last_lag >= 5:
                        lag = await asyncio.to_thread(record_lag, consumer, self.spec.consumer_group)
                        if lag is not None:
                            progress.measured_lag(lag)
                        last_lag = now
                if tasks:  # finish what was started: those records are not committed yet
                    await asyncio.wait(set(tasks), timeout=self.timeout_s * (self.spec.delivery.retry + 1))
        finally:
            LIVENESS.forget(progress)
            self._commit(consumer, tracker, asynchronous=False)
            consumer.close()
            self.dlq.flush()

    def _pause(
        self, consumer: confluent_kafka.Consumer, paused: set[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """Pause the assigned partitions not paused yet (a rebalance may have added some)."""
        fresh = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in paused]
        if fresh:
            consumer.pause(fresh)
            if not paused:
                self.pauses += 1
                log.warning(
                    "%d records waiting for the sink: reading paused until deliveries catch up",
                    self.max_pending,
                )
        return {(tp.topic, tp.partition) for tp in fresh}

    @staticmethod
    def _commit(consumer: confluent_kafka.Consumer, tracker: OffsetTracker, asynchronous: bool) -> None:
        positions = tracker.committable()
        if not positions:
            return
        offsets = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:  # redelivered later: at-least-once
            log.warning("offset commit failed: %s", exc)

    def _revoked(self, consumer: Any, partitions: list[Any], tracker: OffsetTracker) -> None:
        """Before a partition moves: commit what finished; what is still in flight will be
        delivered again by its next owner (at-least-once)."""
        self._commit(consumer, tracker, asynchronous=False)
        for tp in partitions:
            tracker.forget(tp.topic, tp.partition)

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        uvloop.run(self.run_async(stop, idle_exit_s))  # less CPU per delivery than asyncio's own loop


# --------------------------------------------------------------------------- the Go build
def go_build() -> Path | None:
    """The Go build of this stand-in, beside the virtualenv's interpreter (None when it was
    not built: ``make setup`` builds it where a Go toolchain is installed)."""
    path = Path(sys.executable).parent / GO_BUILD
    return path if os.access(path, os.X_OK) else None


def go_config(
    settings: Settings,
    spec: SourceSpec,
    sinks: list[str],
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    idle_exit_s: float | None = None,
) -> dict[str, Any]:
    """The Go build's configuration: the manifest's spec, the sinks, and the broker's
    connection and credentials from the settings."""
    kafka = settings.kafka
    host = settings.metrics_host
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_username": kafka.sasl_username,
        "sasl_password": kafka.sasl_password.get_secret_value(),
        "ssl_ca_file": kafka.ssl_ca_file,
        "ssl_cert_file": kafka.ssl_cert_file,
        "ssl_key_file": kafka.ssl_key_file,
        "consumer_group": spec.consumer_group,
        "topics": spec.topics,
        "ordering": spec.ordering,
        "initial_offset": spec.initial_offset,
        "retry": spec.delivery.retry,
        "backoff_policy": spec.delivery.backoff_policy,
        "backoff_delay_s": spec.delivery.backoff_delay_s,
        "source": f"/apis/v1/namespaces/{spec.namespace}/kafkasources/{spec.name}#",
        "sinks": sinks,
        "max_in_flight": max_in_flight,
        "max_pending": MAX_PENDING,
        "timeout_s": TIMEOUT_S,
        "commit_interval_s": COMMIT_INTERVAL_S,
        "dead_letter_topic": settings.topics.dead_letter.name,
        "metrics_address": f"[{host}]:{settings.metrics_ports.dispatcher}"
        if ":" in host
        else f"{host}:{settings.metrics_ports.dispatcher}",
        "stall_after_s": settings.consumer_stall_after_s,
        "idle_exit_s": -1 if idle_exit_s is None else idle_exit_s,  # negative: never
    }


def exec_go_build(path: Path, config: dict[str, Any]) -> NoReturn:
    """Replace this process with the Go build (same pid, so a supervisor's signals and CPU
    figures reach it). The configuration goes in the environment: credentials stay off the
    command line."""
    os.execve(path, [str(path)], {**os.environ, GO_CONFIG_ENV: json.dumps(config)})
