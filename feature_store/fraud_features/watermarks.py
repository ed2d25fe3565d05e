"""How far every partition has progressed in event time, shared by the replicas in Redis, and
the watermark that says when an hour's terminal values are final.

Each replica publishes the latest event time of the partitions it owns, or ``inf`` for a
partition it has read completely. The watermark of a topic is the least progress over all of
its partitions, whoever owns them.

"Read completely" needs more than "read to its end" for ``transactions``: its records come
through the quality gate, and a gate working off a backlog (after a broker outage, or at the
start of a backfill) forwards one raw partition's records well ahead of another's, so a
partition read to its end may still have older records to come. A transactions partition
therefore counts as complete only up to where it ended at a moment the gate's consumer group
had committed all of ``transactions-raw`` (`GateCheck`): the gate forwards before it commits,
so everything it had taken by then was already in those ends. While the broker cannot be
asked, or the gate is behind, such a partition counts at its own latest event time. (With
several replicas, a "complete" that another replica published stands until that replica
publishes again, within about ``gate_check_interval_s``.)
Labels come straight from their producers: a label partition read to its end is complete,
its end asked of the broker after this batch's transactions were read (`latest_offsets`). The
end librdkafka caches from its last fetch is not enough: after a broker restart, a label
partition's first fetch may come back after a transaction partition's, and until it does the
cached end is the one from before the outage, so labels the producers flushed meanwhile would
not count for the hours of transactions already in hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import confluent_kafka
import redis
from confluent_kafka import TopicPartition

from fraud_features.card_state import NO_EVENT_US, PartitionState
from fraud_features.redis_keys import RedisKeys
from fraudcore import features as F
from fraudcore.kafka import high_watermark, latest_offsets, partition_reader
from fraudcore.settings import Settings

INF = float("inf")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watermark:
    transactions: float  # µs every transaction partition has progressed to
    labels: float  # µs every label partition has progressed to

    def allows(self, hour: int, delay_days: int) -> bool:
        """Whether the terminal values of UTC ``hour`` are final: every transaction partition
        has progressed ``delay_days`` before the start of ``hour`` and every label partition
        past its start."""
        start = hour * F.HOUR_US
        return self.transactions >= start - delay_days * F.DAY_US and self.labels >= start


class GateCheck:
    """Where the transactions partitions ended the last time the quality gate was seen to
    have forwarded everything in ``transactions-raw``; asked of the broker at most once per
    ``gate_check_interval_s``, never joining the gate's group.

    An answer covers only the records that were in the partitions when it was given: once
    the job has read past one of those ends, records forwarded since are in hand (perhaps a
    backlog the gate had just started on), so the answer no longer counts until the next."""

    def __init__(self, settings: Settings) -> None:
        topics = settings.topics
        self.group = settings.features.gate_group
        self.interval_s = settings.features.gate_check_interval_s
        self.raw = [TopicPartition(topics.raw.name, p) for p in range(topics.raw.partitions)]
        self.transactions = [
            TopicPartition(topics.transactions.name, p) for p in range(topics.transactions.partitions)
        ]
        self.reader = partition_reader(settings, self.group)
        self.checked_at = -INF
        self.ends: dict[int, int] | None = None
        self.unanswered_since: float | None = None  # the broker or its ACLs refusing the check

    def transaction_ends(self, reads: Mapping[int, int], timeout_s: float = 0.5) -> dict[int, int] | None:
        """Each transactions partition's end offset at a moment the gate had caught up, or
        None: the gate is behind, the broker cannot be asked, or this job has read (``reads``:
        next offset per owned partition) past an end since the last answer."""
        if self.ends is not None and any(read > self.ends.get(p, 0) for p, read in reads.items()):
            self.ends = None
        now = time.monotonic()
        if now - self.checked_at < self.interval_s:
            return self.ends
        self.checked_at = now
        try:
            for tp in self.reader.committed(self.raw, timeout=timeout_s):
                if tp.error is not None:
                    raise confluent_kafka.KafkaException(tp.error)
                low, high = self.reader.get_watermark_offsets(tp, timeout=timeout_s)
                done = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
                if done < high:
                    self.ends, self.unanswered_since = None, None
                    return None
            # Asked after the commits were seen: every record the gate had taken is in them.
            ends = {
                tp.partition: self.reader.get_watermark_offsets(tp, timeout=timeout_s)[1]
                for tp in self.transactions
            }
        except confluent_kafka.KafkaException as exc:
            self._unanswered(exc)
            return None
        self.ends, self.unanswered_since = ends, None
        return ends

    def _unanswered(self, exc: confluent_kafka.KafkaException) -> None:
        """Partitions read to their end count at their own progress meanwhile. A minute of
        this is said (a missing Describe ACL on the gate's group or the ingress topic, a gate
        group that does not exist under that name): held transactions then wait for every
        partition's own progress."""
        self.ends = None
        now = time.monotonic()
        if self.unanswered_since is None:
            self.unanswered_since = now
        elif now - self.unanswered_since >= 60:
            log.warning(
                "cannot tell for %.0f s whether the quality gate (group %r) has caught up: %s",
                now - self.unanswered_since,
                self.group,
                exc.args[0] if exc.args else exc,
            )
            self.unanswered_since = now

    def close(self) -> None:
        self.reader.close()


def _read_to_end(read: int | None, end: int | None) -> bool:
    """Whether a partition read up to ``read`` (the next offset) is read to ``end``."""
    return end is not None and (end == 0 or (read is not None and read >= end))


class Progress:
    def __init__(self, settings: Settings, client: redis.Redis, keys: RedisKeys) -> None:
        self.topics = settings.topics
        self.redis = client
        self.key = keys.progress()
        self.gate = GateCheck(settings) if settings.features.gate_group else None
        # Ends are asked with a client of their own, so the job's consumer only consumes;
        # it never joins a group (the id is only librdkafka's required setting).
        self.end_reader = partition_reader(settings, f"{keys.namespace}-partition-ends")
        self.end_timeout_s = 1.0

    def publish(
        self, consumer: confluent_kafka.Consumer, partitions: Mapping[TopicPartition, PartitionState]
    ) -> None:
        """Publish the progress of this replica's assigned partitions."""
        assigned = consumer.assignment()
        reads = {tp: state.next_offset if (state := partitions.get(tp)) else None for tp in assigned}
        gated = {tp for tp in assigned if self.gate is not None and tp.topic == self.topics.transactions.name}
        ends: dict[TopicPartition, int | None] = {}
        if self.gate is not None:
            gated_ends = self.gate.transaction_ends(
                {tp.partition: read for tp in gated if (read := reads[tp]) is not None}
            )
            ends = {tp: None if gated_ends is None else gated_ends.get(tp.partition) for tp in gated}
        ends.update({tp: high_watermark(consumer, tp) for tp in assigned if tp not in gated})
        # What looks read to its end by librdkafka's cached end is checked with the broker.
        looks_done = [tp for tp in assigned if tp not in gated and _read_to_end(reads[tp], ends[tp])]
        if looks_done:
            latest = latest_offsets(self.end_reader, looks_done, self.end_timeout_s) or {}
            ends.update({tp: latest.get(tp) for tp in looks_done})
        mapping: dict[str, str] = {}
        unknown: list[str] = []
        for tp in assigned:
            field = f"{tp.topic}:{tp.partition}"
            state = partitions.get(tp)
            if _read_to_end(reads[tp], ends[tp]):
                mapping[field] = "inf"
            elif state is not None and state.max_event_us > NO_EVENT_US:
                mapping[field] = str(state.max_event_us)
            elif tp in gated:
                unknown.append(field)  # an "inf" published earlier no longer holds
        if mapping:
            self.redis.hset(self.key, mapping=mapping)
        if unknown:
            self.redis.hdel(self.key, *unknown)

    def close(self) -> None:
        self.end_reader.close()
        if self.gate is not None:
            self.gate.close()

    def watermark(self) -> Watermark:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.key))
        progress = {k.decode(): float(v) for k, v in raw.items()}

        def least(topic: str, partitions: int) -> float:
            return min(progress.get(f"{topic}:{p}", -INF) for p in range(partitions))

        return Watermark(
            least(self.topics.transactions.name, self.topics.transactions.partitions),
            least(self.topics.labels.name, self.topics.labels.partitions),
        )
