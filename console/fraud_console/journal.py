"""The console's Kafka side: the cases topic (written, and replayed at start-up), the analysts'
labels on ``fraud-labels``, and the transaction behind a decision on ``transactions``.

Every client comes from ``fraudcore.kafka``. Writes wait for the broker's acknowledgement
(acks=all, idempotent producer): a transition counts only once it is durable."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from contextlib import closing
from datetime import timedelta
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import TopicPartition
from kafka.partitioner.default import murmur2

from fraud_console.cases import Case, CaseEvent
from fraud_console.desk import closed_since
from fraudcore.events import parse_timestamp
from fraudcore.kafka import DeliveryReports, consume_ready, librdkafka_producer, partition_reader
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

CASE_ID_HEADER = "case-id"
# How far before a verdict's time a search for its label starts: the label's record time is
# this process's clock at publication, so only a clock step back could put it earlier.
LABEL_SEARCH_SLACK = timedelta(minutes=5)
METADATA_TIMEOUT_S = 10.0


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a record."""


def card_partition(card_id: str, partitions: int) -> int:
    """The partition of a record keyed by ``card_id`` (murmur2, as the platform's producers
    and Java clients place keyed records)."""
    return (murmur2(card_id.encode()) & 0x7FFFFFFF) % partitions


def _reader(settings: Settings, purpose: str) -> confluent_kafka.Consumer:
    # It never joins a group; the id only names it in the broker's logs.
    return partition_reader(
        settings, f"{settings.kafka.client_id}-console-{purpose}", **{"enable.partition.eof": True}
    )


def _partitions(client: confluent_kafka.Consumer, topic: str) -> list[int]:
    metadata = client.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic]
    if metadata.error is not None:
        raise DeliveryError(f"{topic}: {metadata.error}")
    return sorted(metadata.partitions)


def _read_to_end(
    client: confluent_kafka.Consumer, starts: list[TopicPartition]
) -> Generator[Any, None, None]:
    """The messages from each start to its partition's end as it is now."""
    ends: dict[int, int] = {}
    for tp in starts:
        _low, high = client.get_watermark_offsets(tp, timeout=METADATA_TIMEOUT_S)
        if tp.offset < high:
            ends[tp.partition] = high
    if not ends:
        return
    client.assign([tp for tp in starts if tp.partition in ends])
    try:
        while ends:
            # As soon as records arrive: librdkafka's consume(500, ...) would wait the whole
            # second for 500 records that a lookup near the partition's end never gets.
            for message in consume_ready(client, 500, 1.0):
                error, partition = message.error(), int(message.partition() or 0)
                if error is not None and error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    ends.pop(partition, None)
                elif error is not None:
                    raise confluent_kafka.KafkaException(error)
                elif partition in ends:
                    if int(message.offset() or 0) + 1 >= ends[partition]:
                        ends.pop(partition)
                    yield message
    finally:
        client.unassign()


def replay(settings: Settings) -> Iterator[CaseEvent]:
    """Every event on the cases topic, in each partition's order (a case's events share its
    partition), from the first retained one to the end as of the call."""
    topic = settings.topics.cases.name
    client = _reader(settings, "replay")
    try:
        starts = [
            TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in _partitions(client, topic)
        ]
        for tp in starts:
            tp.offset = client.get_watermark_offsets(tp, timeout=METADATA_TIMEOUT_S)[0]
        with closing(_read_to_end(client, starts)) as messages:
            for message in messages:
                yield CaseEvent.from_record(message.key() or b"", message.value())
    finally:
        client.close()


class KafkaCaseLog:
    """``desk.CaseLog`` on Kafka: case events on the cases topic (key: case id), labels on
    ``fraud-labels`` (key: card id, header ``case-id``)."""

    def __init__(self, settings: Settings, timeout_s: float = 15.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        # A record not acknowledged within the timeout fails for good (delivery report), so a
        # failed write is not published behind the caller's back much later.
        self.producer = librdkafka_producer(settings, **{"message.timeout.ms": int(timeout_s * 1000)})
        self._reports = DeliveryReports(self.producer, "console-deliveries")

    def close(self) -> None:
        self.producer.flush(self.timeout_s)
        self._reports.stop()

    def _send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> str:
        done: Future[str] = Future()

        def on_delivery(error: Any, message: Any) -> None:
            if error is not None:
                done.set_exception(DeliveryError(f"{topic}: {error}"))
            else:
                done.set_result(f"{message.partition()}:{message.offset()}")

        self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
        try:
            return done.result(timeout=self.timeout_s + 5)
        except TimeoutError as exc:
            raise DeliveryError(f"{topic}: no acknowledgement within {self.timeout_s + 5:.0f} s") from exc

    def write(self, event: CaseEvent) -> None:
        self._send(self.settings.topics.cases.name, event.key(), event.value())

    def publish_label(self, case: Case) -> str:
        assert case.label is not None
        return self._send(
            self.settings.topics.labels.name,
            case.label["card_id"].encode(),
            orjson.dumps(case.label),
            [(CASE_ID_HEADER, case.case_id.encode())],
        )

    def find_label(self, case: Case) -> str | None:
        topic = self.settings.topics.labels.name
        since_ms = int((closed_since(case) - LABEL_SEARCH_SLACK).timestamp() * 1000)
        wanted = case.case_id.encode()
        client = _reader(self.settings, "label-search")
        try:
            starts = client.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in _partitions(client, topic)],
                timeout=METADATA_TIMEOUT_S,
            )
            with closing(_read_to_end(client, [tp for tp in starts if tp.offset >= 0])) as messages:
                for message in messages:
                    if (CASE_ID_HEADER, wanted) in (message.headers() or []):
                        return f"{message.partition()}:{message.offset()}"
            return None
        finally:
            client.close()


class TransactionFinder:
    """The transaction a decision was made for, read back from ``transactions``.

    A decision carries ``ingested_at``, the transaction's Kafka record time, and the card id,
    its key: the record sits at that time in the card's partition, so a lookup reads a
    handful of records (``offsets_for_times``). A decision without ``ingested_at`` (a direct
    call to the transformer) has no transaction on Kafka to find."""

    def __init__(self, settings: Settings, window_s: float = 2.0, max_records: int = 20_000) -> None:
        self.topic = settings.topics.transactions.name
        self.window_ms = int(window_s * 1000)
        self.max_records = max_records
        self.client = _reader(settings, "transactions")
        self._partitions: list[int] | None = None

    def close(self) -> None:
        self.client.close()

    def find(self, decision: dict[str, Any]) -> dict[str, Any] | None:
        ingested = decision.get("ingested_at")
        if not ingested:
            return None
        at_ms = round(parse_timestamp(ingested).timestamp() * 1000)
        if self._partitions is None:
            self._partitions = _partitions(self.client, self.topic)
        partition = card_partition(decision["card_id"], len(self._partitions))
        [start] = self.client.offsets_for_times(
            [TopicPartition(self.topic, partition, at_ms - 1)], timeout=METADATA_TIMEOUT_S
        )
        if start.offset < 0:
            return None
        wanted = decision["transaction_id"].encode()
        with closing(_read_to_end(self.client, [start])) as messages:
            for read, message in enumerate(messages):
                if read >= self.max_records or message.timestamp()[1] > at_ms + self.window_ms:
                    break
                value = message.value() or b""
                if wanted in value:
                    event = orjson.loads(value)
                    if event.get("transaction_id") == decision["transaction_id"]:
                        return dict(event)
        return None
