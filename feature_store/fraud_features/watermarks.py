"""How far every partition has progressed in event time, shared by the replicas in Redis, and
the watermark that says when a day's terminal values are final.

Each replica publishes the latest event time of the partitions it owns, or ``inf`` for a
partition it has read to the end (a caught-up partition counts as complete). The watermark
of a topic is the least progress over all of its partitions, whoever owns them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import confluent_kafka
import redis
from confluent_kafka import TopicPartition

from fraud_features.card_state import NO_EVENT_US, PartitionState
from fraud_features.redis_keys import RedisKeys
from fraudcore import features as F
from fraudcore.kafka import high_watermark
from fraudcore.settings import Settings

INF = float("inf")


@dataclass(frozen=True)
class Watermark:
    transactions: float  # µs every transaction partition has progressed to
    labels: float  # µs every label partition has progressed to

    def allows(self, day: int, delay_days: int) -> bool:
        """Whether the terminal values of UTC ``day`` are final: every transaction partition
        has progressed past day ``day - delay_days`` and every label partition past the start
        of ``day``."""
        return self.transactions >= (day - delay_days) * F.DAY_US and self.labels >= day * F.DAY_US


class Progress:
    def __init__(self, settings: Settings, client: redis.Redis, keys: RedisKeys) -> None:
        self.topics = settings.topics
        self.redis = client
        self.key = keys.progress()

    def publish(
        self, consumer: confluent_kafka.Consumer, partitions: Mapping[TopicPartition, PartitionState]
    ) -> None:
        """Publish the progress of this replica's assigned partitions."""
        mapping: dict[str, str] = {}
        for tp in consumer.assignment():
            state = partitions.get(tp)
            high = high_watermark(consumer, tp)
            caught_up = (
                high is not None
                and state is not None
                and state.next_offset is not None
                and state.next_offset >= high
            )
            if high == 0 or caught_up:
                mapping[f"{tp.topic}:{tp.partition}"] = "inf"
            elif state is not None and state.max_event_us > NO_EVENT_US:
                mapping[f"{tp.topic}:{tp.partition}"] = str(state.max_event_us)
        if mapping:
            self.redis.hset(self.key, mapping=mapping)

    def watermark(self) -> Watermark:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.key))
        progress = {k.decode(): float(v) for k, v in raw.items()}

        def least(topic: str, partitions: int) -> float:
            return min(progress.get(f"{topic}:{p}", -INF) for p in range(partitions))

        return Watermark(
            least(self.topics.transactions.name, self.topics.transactions.partitions),
            least(self.topics.labels.name, self.topics.labels.partitions),
        )
