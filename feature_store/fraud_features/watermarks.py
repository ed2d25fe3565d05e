"""How far every partition has progressed in event time, shared by the replicas in Redis, and
the watermark that says when a day's terminal values are final.

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
asked, or the gate is behind, such a partition counts at its own latest event time.
Labels come straight from their producers: a label partition read to its end is complete.
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
from fraudcore.kafka import high_watermark, partition_reader
from fraudcore.settings import Settings

INF = float("inf")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watermark:
    transactions: float  # µs every transaction partition has progressed to
    labels: float  # µs every label partition has progressed to

    def allows(self, day: int, delay_days: int) -> bool:
        """Whether the terminal values of UTC ``day`` are final: every transaction partition
        has progressed past day ``day - delay_days`` and every label partition past the start
        of ``day``."""
        return self.transactions >= (day - delay_days) * F.DAY_US and self.labels >= day * F.DAY_US


class GateCheck:
    """Where the transactions partitions ended the last time the quality gate was seen to
    have forwarded everything in ``transactions-raw``; asked of the broker at most once per
    ``gate_check_interval_s``, never joining the gate's group."""

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

    def transaction_ends(self, timeout_s: float = 0.5) -> dict[int, int] | None:
        """Each transactions partition's end offset at a moment the gate had caught up, or
        None: the gate is behind, or the broker cannot be asked."""
        now = time.monotonic()
        if now - self.checked_at < self.interval_s:
            return self.ends
        self.checked_at = now
        try:
            for tp in self.reader.committed(self.raw, timeout=timeout_s):
                low, high = self.reader.get_watermark_offsets(tp, timeout=timeout_s)
                done = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
                if done < high:
                    self._behind(f"the gate has {high - done} records of {tp.topic}[{tp.partition}] to go")
                    return None
            # Asked after the commits were seen: every record the gate had taken is in them.
            ends = {
                tp.partition: self.reader.get_watermark_offsets(tp, timeout=timeout_s)[1]
                for tp in self.transactions
            }
        except confluent_kafka.KafkaException as exc:
            self._behind(f"the broker cannot be asked ({exc.args[0] if exc.args else exc})")
            return None
        self.ends = ends
        return ends

    def _behind(self, reason: str) -> None:
        log.debug("transactions partitions read to their end do not count as complete: %s", reason)
        self.ends = None

    def close(self) -> None:
        self.reader.close()


class Progress:
    def __init__(self, settings: Settings, client: redis.Redis, keys: RedisKeys) -> None:
        self.topics = settings.topics
        self.redis = client
        self.key = keys.progress()
        self.gate = GateCheck(settings) if settings.features.gate_group else None

    def publish(
        self, consumer: confluent_kafka.Consumer, partitions: Mapping[TopicPartition, PartitionState]
    ) -> None:
        """Publish the progress of this replica's assigned partitions."""
        gated_ends = self.gate.transaction_ends() if self.gate is not None else None
        mapping: dict[str, str] = {}
        unknown: list[str] = []
        for tp in consumer.assignment():
            field = f"{tp.topic}:{tp.partition}"
            state = partitions.get(tp)
            gated = self.gate is not None and tp.topic == self.topics.transactions.name
            if gated:
                end = None if gated_ends is None else gated_ends.get(tp.partition)
            else:
                end = high_watermark(consumer, tp)
            read = state.next_offset if state is not None else None
            if end is not None and (end == 0 or (read is not None and read >= end)):
                mapping[field] = "inf"
            elif state is not None and state.max_event_us > NO_EVENT_US:
                mapping[field] = str(state.max_event_us)
            elif gated:
                unknown.append(field)  # an "inf" published earlier no longer holds
        if mapping:
            self.redis.hset(self.key, mapping=mapping)
        if unknown:
            self.redis.hdel(self.key, *unknown)

    def close(self) -> None:
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
