"""Kafka helpers every component uses: topics, producers and consumers with the project's defaults.

Two clients, each for a reason:

| role | client | why |
| --- | --- | --- |
| producers on the scoring path: simulator/replay (``EventProducer``), quality gate, transformer's decisions | librdkafka (``librdkafka_producer``) | the work happens in C threads; kafka-python's sender thread cost ~28 % of a transformer's CPU |
| consumers on the scoring path: quality gate, KafkaSource stand-in, the decision monitor (demo, bench) | librdkafka (``librdkafka_consumer``, ``fraudcore.service.consume_loop``) | latency: a record is handed over as soon as it arrives (``consume_ready``) |
| stateful consumers: archiver, feature job | librdkafka (``owning_consumer``, ``fraudcore.service.consume_loop``) | the fetching is done in C threads; the rebalance callbacks run on the loop's own thread, so a partition is positioned before its first record and released after its last |
| control and low-rate paths: admin, dead letters, model events | kafka-python | no hot loop; one client less to configure there |

librdkafka producers use the murmur2 partitioner, so keyed records land on the partition
kafka-python and Java clients choose: a card's events share a partition whichever wrote them.

Every client is built here, and each gets the broker's security options from the settings
(``KafkaSettings.security_protocol``, SASL credentials, CA and client certificate files):
``librdkafka_security`` maps them to librdkafka's keys, ``kafka_python_security`` to
kafka-python's arguments. No other module constructs a client (a unit test scans for it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import confluent_kafka
import orjson
from confluent_kafka import TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from fraudcore.settings import KafkaSettings, Settings, TopicSpec

log = logging.getLogger(__name__)


def _require_credentials(kafka: KafkaSettings) -> None:
    if kafka.uses_sasl and not (kafka.sasl_username and kafka.sasl_password.get_secret_value()):
        raise ValueError(
            f"kafka.security_protocol {kafka.security_protocol} needs kafka.sasl_username and "
            "kafka.sasl_password (FRAUD_KAFKA__SASL_USERNAME, FRAUD_KAFKA__SASL_PASSWORD)"
        )


def _security_options(kafka: KafkaSettings) -> list[tuple[str, str, Any]]:
    """(librdkafka key, kafka-python keyword, value) of each security option in use; none
    for PLAINTEXT (the local broker), so such a client is configured exactly as before."""
    _require_credentials(kafka)
    if kafka.security_protocol == "PLAINTEXT":
        return []
    options: list[tuple[str, str, Any]] = [
        ("security.protocol", "security_protocol", kafka.security_protocol)
    ]
    if kafka.uses_sasl:
        # kafka-python names the credentials after PLAIN but uses them for SCRAM too.
        options += [
            ("sasl.mechanisms", "sasl_mechanism", kafka.sasl_mechanism),
            ("sasl.username", "sasl_plain_username", kafka.sasl_username),
            ("sasl.password", "sasl_plain_password", kafka.sasl_password.get_secret_value()),
        ]
    if kafka.ssl_ca_file:
        options.append(("ssl.ca.location", "ssl_cafile", kafka.ssl_ca_file))
    if kafka.ssl_cert_file:
        options += [
            ("ssl.certificate.location", "ssl_certfile", kafka.ssl_cert_file),
            ("ssl.key.location", "ssl_keyfile", kafka.ssl_key_file),
        ]
    return options


def librdkafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka's configuration for the broker's security (empty for PLAINTEXT)."""
    config = {key: value for key, _, value in _security_options(kafka)}
    if "security.protocol" in config:
        config["security.protocol"] = config["security.protocol"].lower()
    return config


def kafka_python_security(kafka: KafkaSettings) -> dict[str, Any]:
    """The same for kafka-python's clients (its keyword arguments); empty for PLAINTEXT."""
    return {keyword: value for _, keyword, value in _security_options(kafka)}


def admin(settings: Settings, timeout_s: float = 10.0) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        # Within the same budget: a broker refusing the credentials is an answer, not 30 s.
        bootstrap_timeout_ms=int(timeout_s * 1000),
        **kafka_python_security(settings.kafka),
    )


def upsert_scram_user(settings: Settings, username: str, password: str, iterations: int = 8192) -> None:
    """Create or update a SCRAM-SHA-512 user on the brokers (KRaft keeps it in the cluster's
    metadata); the password never leaves this call but to the broker."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    client = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, **librdkafka_security(settings.kafka)}
    )
    upsert = UserScramCredentialUpsertion(
        username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, iterations), password.encode()
    )
    for future in client.alter_user_scram_credentials([upsert], request_timeout=15).values():
        future.result()


def broker_ready(settings: Settings, timeout_s: float = 2.0) -> bool:
    try:
        client = admin(settings, timeout_s)
    except KafkaError:
        return False
    try:
        client.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        client.close()


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics (and grow partition counts); return the names created."""
    specs = specs or settings.topics.all()
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        new = [
            NewTopic(s.name, s.partitions, settings.kafka.replication_factor, topic_configs=topic_config(s))
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                client.create_topics(new, timeout_ms=30_000)
            _wait_for_leaders(client, [t.name for t in new])
        return [t.name for t in new]
    finally:
        client.close()


def topic_config(spec: TopicSpec) -> dict[str, str]:
    """The broker-side configuration a topic is created with (its retention, its compaction)."""
    config = {"retention.ms": str(spec.retention_ms)} if spec.retention_ms else {}
    if spec.compacted:
        config["cleanup.policy"] = "compact"
    return config


def _wait_for_leaders(client: KafkaAdminClient, names: list[str], timeout_s: float = 30) -> None:
    """New partitions take a moment to elect leaders; producing before that only earns retries."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = client.describe_topics(names)
        if all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader_id"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} have no leaders after {timeout_s}s")


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A durable producer: acks=all, idempotent, retries, batching tuned for throughput."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "client_id": settings.kafka.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 2_147_483_647,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 1,  # latency first; under load batches still fill while the sender is busy
        "batch_size": 256 * 1024,
        "compression_type": None,
        "request_timeout_ms": 30_000,
        "delivery_timeout_ms": 120_000,
        **kafka_python_security(settings.kafka),
    }
    config.update(overrides)
    return KafkaProducer(**config)


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, detached from the client that read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int

    @classmethod
    def of(cls, message: Any) -> Record:
        _kind, timestamp = message.timestamp()
        return cls(
            message.topic(),
            message.partition(),
            message.offset(),
            message.key(),
            message.value() or b"",
            timestamp if timestamp > 0 else int(time.time() * 1000),
        )


def librdkafka_producer(settings: Settings, **overrides: Any) -> confluent_kafka.Producer:
    """The durable producer for hot paths (librdkafka: the client does its work in C threads,
    not in the interpreter): acks=all, idempotent, retried until ``message.timeout.ms``.

    Delivery reports arrive through ``poll()``; whoever owns the producer must call it."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "client.id": settings.kafka.client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,  # latency first; batches still form while requests are in flight
        # Keyed records land where Java clients and kafka-python put them (murmur2), so a
        # card's events share a partition whichever client wrote them.
        "partitioner": "murmur2_random",
        "message.timeout.ms": 120_000,
        "socket.nagle.disable": True,
        **librdkafka_security(settings.kafka),
    }
    config.update(overrides)
    return confluent_kafka.Producer(config)


class DeliveryReports:
    """A thread that serves a librdkafka producer's delivery reports (its ``poll``) as they
    arrive, so callbacks run at the broker's ack time, not at the sender's next call."""

    def __init__(self, client: confluent_kafka.Producer, name: str) -> None:
        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.client.poll(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


# For consumers off the scoring path (model monitor, review console): the broker holds their
# fetches until 64 KiB or half a second. Fetching as soon as one record arrives cost the
# broker a tenth of a core per idle consumer, and about 0.4 ms of CPU per event in all for
# a busy one (the console's intake in `make bench`).
RELAXED_FETCH = {"fetch.wait.max.ms": 500, "fetch.min.bytes": 65_536}


def librdkafka_consumer(
    settings: Settings,
    group_id: str,
    topics: list[str],
    on_revoke: Callable[[confluent_kafka.Consumer, list[TopicPartition]], None] | None = None,
    on_assign: Callable[[confluent_kafka.Consumer, list[TopicPartition]], None] | None = None,
    **overrides: Any,
) -> confluent_kafka.Consumer:
    """A librdkafka consumer that commits only when told: at-least-once. The rebalance
    callbacks run inside ``consume()``/``poll()``, on the caller's thread, between batches."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "client.id": settings.kafka.client_id,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # With fetch.min.bytes 1 the broker answers as soon as data arrives; this only bounds
        # the wait on idle partitions (shorter just makes idle consumers busy the broker).
        "fetch.wait.max.ms": 100,
        "socket.nagle.disable": True,
        **librdkafka_security(settings.kafka),
    }
    config.update(overrides)
    client = confluent_kafka.Consumer(config)
    callbacks: dict[str, Any] = {}
    if on_assign is not None:
        callbacks["on_assign"] = on_assign
    if on_revoke is not None:
        callbacks["on_revoke"] = on_revoke
    client.subscribe(topics, **callbacks)
    return client


class OwnedPartitions:
    """The partitions a consumer owns, for a component that keeps state per partition, and
    where each one's next record must begin.

    librdkafka runs the rebalance callbacks inside ``consume()``/``poll()``, on the consume
    loop's thread, between batches. On assignment each partition starts at
    ``resume_at(tp, committed)`` (None: at the committed offset, else the beginning; never
    before the partition's first retained record; a position past the partition's end, left
    by an earlier incarnation of the topic, starts it from the beginning). On revocation
    ``release(tps)`` makes what the component holds for them durable and returns the
    offsets to commit, which are committed at once, so the next owner resumes exactly
    there; should that fail, it replays from the last commit (at-least-once either way).
    Then ``forget(tps)`` drops their state.

    A batch read just before a rebalance can still be in hand after it, so ``take`` keeps,
    per partition, only records that continue exactly where the partition stands (the rest
    come again from the broker) and none of a partition no longer owned (its new owner
    reads them). The one gap accepted is retention's: a partition whose position fell off
    its start is reset by the client to the first retained record. The topics' offsets are
    otherwise contiguous: no transactions, no compaction."""

    def __init__(
        self,
        resume_at: Callable[[TopicPartition, int | None], int | None],
        release: Callable[[list[TopicPartition]], Offsets],
        forget: Callable[[list[TopicPartition]], None],
    ) -> None:
        self._resume_at = resume_at
        self._release = release
        self._forget = forget
        self._client: confluent_kafka.Consumer | None = None
        self.next: dict[TopicPartition, int] = {}

    def consumer(
        self, settings: Settings, group_id: str, topics: list[str], **overrides: Any
    ) -> confluent_kafka.Consumer:
        """A consumer whose rebalances go through this object. The assignment strategy is an
        eager one: every rebalance revokes everything and assigns afresh."""
        overrides.setdefault("partition.assignment.strategy", "roundrobin")
        return librdkafka_consumer(
            settings, group_id, topics, on_revoke=self._on_revoke, on_assign=self._on_assign, **overrides
        )

    def _on_assign(self, client: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        self._client = client
        committed = client.committed(
            [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10
        )
        for tp, done in zip(partitions, committed, strict=True):
            low, high = partition_offsets(client, tp)
            wanted = self._resume_at(tp, done.offset if done.offset >= 0 else None)
            if wanted is not None and wanted > high:
                log.warning(
                    "%s[%d]: resume offset %d is past the partition's end %d (the topic was "
                    "recreated?): reading it from the beginning",
                    tp.topic,
                    tp.partition,
                    wanted,
                    high,
                )
                wanted = low
            tp.offset = max(low, wanted if wanted is not None else low)
            self.next[tp] = tp.offset
        client.assign(partitions)

    def _on_revoke(self, client: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        try:
            offsets = self._release(partitions)
            if offsets:
                commit(client, offsets, wait=True)
        except Exception:  # Redis, S3 or the broker away: the next owner replays instead
            log.warning("could not hand over %s cleanly; their next owner replays", partitions, exc_info=True)
        self._forget(partitions)
        for tp in partitions:
            self.next.pop(tp, None)
        client.unassign()

    def rewind(self, tp: TopicPartition, offset: int | None) -> None:
        """Read an owned partition again from ``offset`` (None: its first retained record);
        records of it already in hand are dropped by ``take`` (they come again)."""
        if self._client is None or tp not in self.next:
            return
        low, _high = partition_offsets(self._client, tp)
        position = max(low, offset if offset is not None else low)
        self._client.seek(TopicPartition(tp.topic, tp.partition, position))
        self.next[tp] = position

    def take(self, records: list[Record]) -> dict[TopicPartition, list[Record]]:
        """``records`` by partition, less those this consumer must not use (see above)."""
        taken: dict[TopicPartition, list[Record]] = {}
        for tp, recs in by_partition(records).items():
            expected = self.next.get(tp)
            if expected is None:
                continue  # revoked while in hand: the new owner reads them
            recs = [r for r in recs if r.offset >= expected]
            if not recs:
                continue  # already taken: read again after a rebalance
            if recs[0].offset != expected and not self._fell_off_the_start(tp, expected, recs[0].offset):
                continue  # read before a rebalance moved the partition's position: they come again
            self.next[tp] = recs[-1].offset + 1
            taken[tp] = recs
        return taken

    def _fell_off_the_start(self, tp: TopicPartition, expected: int, first: int) -> bool:
        """Whether retention deleted ``expected`` (asks the broker: only ever on a gap)."""
        if self._client is None:
            return False
        low, _high = partition_offsets(self._client, tp)
        if expected < low:
            log.warning(
                "%s[%d]: offsets %d..%d were deleted by retention before they were read",
                tp.topic,
                tp.partition,
                expected,
                first - 1,
            )
            return True
        return False


Offsets = dict[TopicPartition, int]  # the next offset to read, per partition


def offset_list(offsets: Offsets) -> list[TopicPartition]:
    """The form librdkafka's commit takes."""
    return [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


def commit(consumer: confluent_kafka.Consumer, offsets: Offsets | None, *, wait: bool = False) -> None:
    """Commit ``offsets`` (None: every position read so far), waiting for it or not."""
    if offsets is None and wait:
        consumer.commit(asynchronous=False)
    elif offsets is None:
        consumer.commit(asynchronous=True)
    elif offsets and wait:
        consumer.commit(offsets=offset_list(offsets), asynchronous=False)
    elif offsets:
        consumer.commit(offsets=offset_list(offsets), asynchronous=True)


def commit_now(consumer: confluent_kafka.Consumer, offsets: Offsets | None = None) -> None:
    """Offsets and wait for it (on the way out, or before partitions move to another member).
    Nothing consumed means nothing to commit, which librdkafka reports as an error."""
    with contextlib.suppress(confluent_kafka.KafkaException):
        commit(consumer, offsets, wait=True)


# A partition whose leader is being elected or moved: a new topic's first moments, a broker
# restarting. Asked again until it answers.
LEADER_MOVING = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._UNKNOWN_PARTITION,
    }
)


def partition_offsets(
    client: confluent_kafka.Consumer, tp: TopicPartition, timeout_s: float = 30.0
) -> tuple[int, int]:
    """The partition's first retained and end offsets, from its leader; a leader being elected
    or moved is waited for, up to ``timeout_s`` (then its error is raised)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            moving = isinstance(error, confluent_kafka.KafkaError) and (
                error.code() in LEADER_MOVING or error.retriable()
            )
            if not moving or time.monotonic() >= deadline:
                raise
            log.info("%s[%d]: %s; asking again", tp.topic, tp.partition, error)
            time.sleep(0.2)


def high_watermark(client: confluent_kafka.Consumer, tp: TopicPartition) -> int | None:
    """The partition's end offset as last seen in a fetch (no request); None before one."""
    _low, high = client.get_watermark_offsets(tp, cached=True)
    return high if high >= 0 else None


def latest_offsets(
    client: confluent_kafka.Consumer, tps: list[TopicPartition], timeout_s: float = 1.0
) -> dict[TopicPartition, int] | None:
    """The partitions' end offsets as the broker has them now (one ListOffsets request per
    leader), or None if it cannot be asked. Unlike `high_watermark`, never an end from before
    a fetch that has not come back yet (after a broker restart, say)."""
    try:
        found = client.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, confluent_kafka.OFFSET_END) for tp in tps],
            timeout=timeout_s,
        )
    except confluent_kafka.KafkaException:
        return None
    if any(tp.error is not None or tp.offset < 0 for tp in found):
        return None
    return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in found}


def by_partition(records: list[Record]) -> dict[TopicPartition, list[Record]]:
    """Records grouped by partition, each group in offset order."""
    groups: dict[TopicPartition, list[Record]] = defaultdict(list)
    for r in records:
        groups[TopicPartition(r.topic, r.partition)].append(r)
    return groups


def consume_ready(client: confluent_kafka.Consumer, max_records: int, timeout_s: float) -> list[Any]:
    """Up to ``max_records`` messages, returning as soon as there is one.

    librdkafka's ``consume(n, timeout)`` waits for all ``n`` or the whole timeout, which on
    a trickle of records is pure added latency. Here one ``poll`` waits for the first and
    ``consume(..., 0)`` takes whatever has already arrived behind it."""
    first = client.poll(timeout_s)
    if first is None:
        return []
    return [first, *client.consume(max_records - 1, 0)] if max_records > 1 else [first]


def record_lag(client: confluent_kafka.Consumer, group: str, timeout_s: float = 1.0) -> int | None:
    """Publish the consumer's lag per topic (asks the broker: call it now and then).

    A metric must never stop the consume loop: while the broker is away (restarting, a
    leader moving) the lag is unknown, logged, and None is returned."""
    from fraudcore.metrics import CONSUMER_LAG

    per_topic: dict[str, int] = {}
    try:
        assigned = client.assignment()
        for tp in client.position(assigned) if assigned else []:
            if tp.offset < 0:  # nothing consumed from this partition yet
                continue
            _low, high = client.get_watermark_offsets(tp, timeout=timeout_s)
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, high - tp.offset)
    except confluent_kafka.KafkaException as exc:
        log.warning("%s: consumer lag unknown for now (%s)", group, exc.args[0] if exc.args else exc)
        return None
    for topic, lag in per_topic.items():
        CONSUMER_LAG.labels(group=group, topic=topic).set(lag)
    return sum(per_topic.values())


def group_lag(settings: Settings, group: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Records per topic that ``group`` has not committed yet, as the broker sees it.

    Reads the group's committed offsets without joining it, so it is safe to call while the
    group's members run (a wait on "every partition done", not on idle time)."""
    client = partition_reader(settings, group)
    try:
        metadata = client.list_topics(timeout=timeout_s)
        partitions = [
            confluent_kafka.TopicPartition(topic, p)
            for topic in topics
            for p in metadata.topics[topic].partitions
        ]
        lag: dict[str, int] = dict.fromkeys(topics, 0)
        for tp in client.committed(partitions, timeout=timeout_s):
            low, high = client.get_watermark_offsets(tp, timeout=timeout_s)
            done = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
            lag[tp.topic] += max(0, high - done)
        return lag
    finally:
        client.close()


def partition_reader(settings: Settings, group_id: str, **overrides: Any) -> confluent_kafka.Consumer:
    """A librdkafka consumer that subscribes to nothing and commits nothing: its owner assigns
    it partitions (or only asks for offsets). ``group_id`` names whose committed offsets
    ``committed()`` reads; the consumer never joins that group."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        **librdkafka_security(settings.kafka),
    }
    config.update(overrides)
    return confluent_kafka.Consumer(config)


def consumer(
    settings: Settings,
    group_id: str | None,
    *topics: str,
    **overrides: Any,
) -> KafkaConsumer:
    """A kafka-python consumer for low-rate paths; it commits only when told."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "client_id": settings.kafka.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        **kafka_python_security(settings.kafka),
    }
    config.update(overrides)
    client = KafkaConsumer(*topics, **config)
    # Learn the topics' partitions before the first poll joins the group: kafka-python 3.0
    # otherwise joins with an empty assignment, rejoins once the metadata arrives, and with
    # short polls may never apply the second assignment (a consumer that reads nothing).
    for topic in topics:
        client.partitions_for_topic(topic)
    return client


class DeadLetterSend(Protocol):
    def __call__(
        self, topic: str, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> Any: ...


def dead_letter(
    send: DeadLetterSend, settings: Settings, component: str, label: str, reason: str, record: Any
) -> Any:
    """Quarantine ``record`` (its original bytes) on the dead-letter topic with the reason
    headers, and count it; returns what ``send`` returns (a future, for a caller that waits)."""
    from fraudcore.metrics import DEAD_LETTERS

    DEAD_LETTERS.labels(component, label).inc()
    headers = dead_letter_headers(component, reason, record.topic, record.partition, record.offset)
    return send(settings.topics.dead_letter.name, key=record.key, value=record.value or b"", headers=headers)


def dead_letter_headers(
    component: str, reason: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Headers every dead-lettered record carries: who rejected it, why, and where it came from.

    The record's value is always the original bytes, untouched.
    """
    return [
        ("dlq-component", component.encode()),
        ("dlq-reason", reason.encode()[:4000]),
        ("dlq-source-topic", topic.encode()),
        ("dlq-source-partition", str(partition).encode()),
        ("dlq-source-offset", str(offset).encode()),
    ]


def rejection_reason(exc: Exception) -> str:
    """Why a record was rejected, as ``<field>: <problem>`` where a field is to blame."""
    if isinstance(exc, KeyError):
        return f"{exc.args[0]}: is required"
    if isinstance(exc, orjson.JSONDecodeError):
        return "payload: not valid UTF-8 JSON"
    return str(exc) or type(exc).__name__


Event = TypeVar("Event")


class DeadLetters:
    """Quarantines the records a consumer cannot take on the dead-letter topic, with the
    reason: bad input never crashes a consumer or stalls its partition."""

    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        # Room for any record the broker accepted (its default limit is about 1 MiB).
        self.producer = producer(settings, max_request_size=2 * 1024 * 1024)
        self._sent: list[Any] = []  # delivery futures not confirmed yet

    def parse_all(self, records: list[Any], parse: Callable[[bytes, int], Event]) -> list[Event]:
        """The events of ``records`` in their order; each bad one goes to the dead-letter topic."""
        events = []
        for record in records:
            try:
                events.append(parse(record.value, record.offset))
            except Exception as exc:  # bad input: quarantine, never crash
                self.send(record, rejection_reason(exc))
        return events

    def send(self, record: Any, reason: str) -> None:
        label = reason.split(":")[0] if ":" in reason else "payload"
        self._sent.append(
            dead_letter(self.producer.send, self.settings, self.component, label, reason, record)
        )

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every dead letter sent is acknowledged; raises if one was refused (no
        permission, too large...), so the caller does not commit past a record that is
        neither taken nor quarantined: it is read again."""
        self.producer.flush(timeout=timeout_s)
        sent, self._sent = self._sent, []
        for future in sent:
            future.get(timeout=timeout_s)

    def close(self) -> None:
        self.producer.close()
