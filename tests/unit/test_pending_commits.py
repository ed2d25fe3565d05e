"""PendingCommits: offsets go to the broker at most every interval, merged, and at once on
the way out (no Kafka here: the consumer records the commits it is asked for)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from fraudcore.service import PendingCommits


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[list[tuple[int, int]] | None, bool]] = []

    def commit(self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True) -> Any:
        parts = None if offsets is None else sorted((tp.partition, tp.offset) for tp in offsets)
        self.commits.append((parts, asynchronous))


def test_offsets_are_merged_and_sent_once_the_interval_has_passed() -> None:
    consumer = RecordingConsumer()
    pending = PendingCommits(consumer, interval_s=0.05)  # type: ignore[arg-type]
    pending.add({TopicPartition("tx", 0): 10})
    pending.add({TopicPartition("tx", 0): 12, TopicPartition("tx", 1): 3})
    pending.add({})
    pending.send_if_due()
    assert consumer.commits == []
    time.sleep(0.06)
    pending.send_if_due()
    assert consumer.commits == [([(0, 12), (1, 3)], True)]
    pending.send_if_due()  # nothing new: nothing sent
    assert len(consumer.commits) == 1


def test_everything_read_so_far_and_the_last_commit_waited_for() -> None:
    consumer = RecordingConsumer()
    pending = PendingCommits(consumer, interval_s=60)  # type: ignore[arg-type]
    pending.add(None)
    pending.send(wait=True)
    assert consumer.commits == [(None, False)]


def test_a_rebalance_forgets_what_belonged_to_the_old_assignment() -> None:
    consumer = RecordingConsumer()
    pending = PendingCommits(consumer, interval_s=0)  # type: ignore[arg-type]
    pending.add({TopicPartition("tx", 0): 10})
    pending.forget()
    pending.send_if_due()
    assert consumer.commits == []


def test_a_lag_metric_that_fails_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A broker restart made get_watermark_offsets raise _UNKNOWN_PARTITION inside the quality
    gate's loop, which then died: the lag is now unknown for a while, never fatal."""
    import confluent_kafka

    from fraudcore.kafka import record_lag

    class BrokerAway:
        def assignment(self) -> list[confluent_kafka.TopicPartition]:
            return [confluent_kafka.TopicPartition("transactions", 0)]

        def position(
            self, partitions: list[confluent_kafka.TopicPartition]
        ) -> list[confluent_kafka.TopicPartition]:
            return [confluent_kafka.TopicPartition(tp.topic, tp.partition, 42) for tp in partitions]

        def get_watermark_offsets(
            self, tp: confluent_kafka.TopicPartition, timeout: float
        ) -> tuple[int, int]:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._UNKNOWN_PARTITION)
            )

    with caplog.at_level("WARNING"):
        assert record_lag(BrokerAway(), "quality-gate") is None  # type: ignore[arg-type]
    assert "consumer lag unknown" in caplog.text
