"""When a partition counts as read completely for the terminal watermark: a transactions
partition only up to where it ended while the quality gate had caught up
(fraud_features.watermarks). Fakes stand in for the broker and Redis; the broker-kill
integration test runs the same rule against the real ones."""

from __future__ import annotations

import confluent_kafka
import pytest
from confluent_kafka import TopicPartition

from fraud_features.card_state import PartitionState
from fraud_features.redis_keys import RedisKeys
from fraud_features.watermarks import INF, GateCheck, Progress
from fraudcore.settings import Settings

DAY_US = 86_400_000_000


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def hdel(self, key: str, *fields: str) -> None:
        for f in fields:
            self.hashes.get(key, {}).pop(f, None)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {k.encode(): v.encode() for k, v in self.hashes.get(key, {}).items()}


class FakeConsumer:
    """The feature job's own consumer: its assignment, the ends its fetches last saw and the
    ends the broker has now (the same unless ``broker_ends`` says otherwise)."""

    def __init__(
        self, ends: dict[TopicPartition, int], broker_ends: dict[TopicPartition, int] | None = None
    ) -> None:
        self.ends = ends
        self.broker_ends = {**ends, **(broker_ends or {})}
        self.down = False
        self.asked: list[list[TopicPartition]] = []

    def assignment(self) -> list[TopicPartition]:
        return list(self.ends)

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached, "the job's own consumer reads its cached ends; the broker is asked in one request"
        return 0, self.ends[tp]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.append([TopicPartition(tp.topic, tp.partition) for tp in tps])
        if self.down:
            raise confluent_kafka.KafkaException("broker transport failure")
        assert all(tp.offset == confluent_kafka.OFFSET_END for tp in tps)
        return [TopicPartition(tp.topic, tp.partition, self.broker_ends[tp]) for tp in tps]


class FakeGateReader:
    """The broker as a reader under the gate's group id sees it."""

    def __init__(self, committed: dict[int, int], raw_ends: dict[int, int], tx_ends: dict[int, int]) -> None:
        self.committed_offsets, self.raw_ends, self.tx_ends = committed, raw_ends, tx_ends
        self.down = False
        self.asked = 0

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked += 1
        if self.down:
            raise confluent_kafka.KafkaException("broker transport failure")
        return [
            TopicPartition(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, -1001))
            for tp in tps
        ]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        ends = self.tx_ends if tp.topic == "transactions" else self.raw_ends
        return 0, ends[tp.partition]

    def close(self) -> None:
        pass


def two_partitions(gate_group: str = "quality-gate") -> Settings:
    settings = Settings()
    topics = settings.topics.model_copy(
        update={
            name: getattr(settings.topics, name).model_copy(update={"partitions": 2})
            for name in ("raw", "transactions", "labels")
        }
    )
    features = settings.features.model_copy(update={"gate_group": gate_group, "gate_check_interval_s": 0.0})
    return settings.model_copy(update={"topics": topics, "features": features})


def tx(p: int) -> TopicPartition:
    return TopicPartition("transactions", p)


def label(p: int) -> TopicPartition:
    return TopicPartition("fraud-labels", p)


def state(next_offset: int | None, day: float | None) -> PartitionState:
    s = PartitionState(next_offset=next_offset)
    if day is not None:
        s.max_event_us = int(day * DAY_US)
    return s


def publish(progress: Progress, consumer: FakeConsumer, states: dict[TopicPartition, PartitionState]) -> None:
    """``progress.publish`` with ``consumer`` as the broker's answer to end queries too."""
    progress.end_reader = consumer  # type: ignore[assignment]
    progress.publish(consumer, states)  # type: ignore[arg-type]


def progress_with(
    reader: FakeGateReader | None, settings: Settings | None = None
) -> tuple[Progress, FakeRedis]:
    redis = FakeRedis()
    progress = Progress(settings or two_partitions(), redis, RedisKeys("t"))  # type: ignore[arg-type]
    progress.end_reader.close()
    if reader is not None:
        assert progress.gate is not None
        progress.gate.close()
        progress.gate.reader = reader  # type: ignore[assignment]
    return progress, redis


# Both transactions partitions are read to the end the job's fetches last saw: partition 0
# holds day 10, partition 1 only day 2 (the gate forwarded partition 0's backlog first).
OWN_ENDS = {tx(0): 100, tx(1): 40, label(0): 5, label(1): 0}
READ_TO_END = {tx(0): state(100, 10), tx(1): state(40, 2), label(0): state(5, 9)}


def test_while_the_gate_is_behind_a_partition_read_to_its_end_counts_at_its_own_progress() -> None:
    reader = FakeGateReader(committed={0: 500, 1: 480}, raw_ends={0: 500, 1: 900}, tx_ends={0: 100, 1: 40})
    progress, _ = progress_with(reader)
    publish(progress, FakeConsumer(OWN_ENDS), READ_TO_END)
    watermark = progress.watermark()
    assert watermark.transactions == 2 * DAY_US  # not inf: partition 1 has older records to come
    assert watermark.labels == INF  # labels do not pass the gate: read to the end is complete
    assert not watermark.allows(10 * 24, 7)  # day 10's first hour needs every partition past day 3
    assert not watermark.allows(9 * 24 + 1, 7)  # 01:00 on day 9 needs them past 01:00 on day 2
    assert watermark.allows(9 * 24, 7)


def test_once_the_gate_caught_up_a_partition_read_to_the_ends_then_seen_is_complete() -> None:
    # The gate committed everything; partition 1 has since received records this job has not
    # fetched yet (its own cached end is stale).
    reader = FakeGateReader(committed={0: 500, 1: 900}, raw_ends={0: 500, 1: 900}, tx_ends={0: 100, 1: 75})
    progress, _ = progress_with(reader)
    publish(progress, FakeConsumer(OWN_ENDS), READ_TO_END)
    assert progress.watermark().transactions == 2 * DAY_US  # partition 1 is not read to 75 yet

    reader.tx_ends = {0: 100, 1: 40}
    publish(progress, FakeConsumer(OWN_ENDS), READ_TO_END)
    assert progress.watermark().transactions == INF


def test_a_broker_that_cannot_be_asked_counts_as_a_gate_behind() -> None:
    reader = FakeGateReader(committed={0: 500, 1: 900}, raw_ends={0: 500, 1: 900}, tx_ends={0: 100, 1: 40})
    progress, redis = progress_with(reader)
    no_events = {tx(0): state(100, 10), tx(1): state(40, None), label(0): state(5, 9)}
    publish(progress, FakeConsumer(OWN_ENDS), no_events)
    assert progress.watermark().transactions == INF

    reader.down = True
    publish(progress, FakeConsumer(OWN_ENDS), no_events)
    # Partition 1's earlier "inf" is withdrawn: with no event of its own it holds the watermark.
    assert progress.watermark().transactions == -INF
    assert "transactions:1" not in redis.hashes[RedisKeys("t").progress()]


def test_an_empty_partition_is_complete_only_once_the_gate_caught_up() -> None:
    reader = FakeGateReader(committed={}, raw_ends={0: 0, 1: 30}, tx_ends={0: 100, 1: 0})
    progress, _ = progress_with(reader)
    only_one = {tx(0): state(100, 10), label(0): state(5, 9)}
    publish(progress, FakeConsumer({tx(0): 100, tx(1): 0}), only_one)
    assert progress.watermark().transactions == -INF  # the gate has 30 raw records to go

    reader.committed_offsets = {1: 30}
    publish(progress, FakeConsumer({tx(0): 100, tx(1): 0}), only_one)
    assert progress.watermark().transactions == INF


def gate_check(reader: FakeGateReader) -> GateCheck:
    """A GateCheck with the default interval (1 s) asking ``reader``."""
    gate = GateCheck(two_partitions().model_copy(update={"features": Settings().features}))
    gate.close()
    gate.reader = reader  # type: ignore[assignment]
    return gate


def test_the_gate_is_asked_at_most_once_per_interval() -> None:
    reader = FakeGateReader(committed={0: 5, 1: 5}, raw_ends={0: 5, 1: 5}, tx_ends={0: 1, 1: 1})
    gate = gate_check(reader)
    assert gate.transaction_ends({0: 1, 1: 0}) == {0: 1, 1: 1}
    reader.down = True
    assert gate.transaction_ends({0: 1, 1: 1}) == {0: 1, 1: 1}  # within the interval: the last answer
    assert reader.asked == 1


def test_an_answer_stops_counting_once_the_job_reads_past_its_ends() -> None:
    """The gate looked caught up just before a backlog reached the ingress topic (the broker
    back, the producers flushing); the job then reads partition 0's share of it: within the
    interval the old answer must not make partition 1 complete."""
    reader = FakeGateReader(committed={0: 5, 1: 5}, raw_ends={0: 5, 1: 5}, tx_ends={0: 100, 1: 40})
    gate = gate_check(reader)
    assert gate.transaction_ends({0: 100, 1: 40}) == {0: 100, 1: 40}
    assert gate.transaction_ends({0: 3100, 1: 40}) is None
    assert gate.transaction_ends({0: 3100, 1: 40}) is None  # not back until asked again
    assert reader.asked == 1


def test_a_gate_group_the_broker_refuses_is_said_after_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    reader = FakeGateReader(committed={}, raw_ends={0: 5, 1: 5}, tx_ends={0: 1, 1: 1})
    reader.down = True
    gate = gate_check(reader)
    gate.interval_s = 0.0
    assert gate.transaction_ends({}) is None
    assert not caplog.records
    assert gate.unanswered_since is not None
    gate.unanswered_since -= 61
    assert gate.transaction_ends({}) is None
    assert "cannot tell for 61 s whether the quality gate (group 'quality-gate') has caught up" in caplog.text


def test_without_a_gate_group_the_end_the_job_saw_is_complete() -> None:
    progress, _ = progress_with(None, two_partitions(gate_group=""))
    assert progress.gate is None
    publish(progress, FakeConsumer(OWN_ENDS), READ_TO_END)
    assert progress.watermark().transactions == INF


def test_a_label_partition_is_complete_only_once_read_to_the_end_the_broker_has_now() -> None:
    """After a broker restart the job's cached end of a label partition is the one from before
    the outage until that partition's first fetch comes back, while a transaction partition's
    may already have: labels flushed meanwhile must still hold the hours they count for."""
    ends = {tx(0): 100, tx(1): 40, label(0): 5, label(1): 8}
    events = {**READ_TO_END, label(0): state(5, 9), label(1): state(8, 9)}
    progress, _ = progress_with(None, two_partitions(gate_group=""))
    stale = FakeConsumer(ends, broker_ends={label(1): 12})
    publish(progress, stale, events)
    assert progress.watermark().labels == 9 * DAY_US  # label partition 1 has 4 more on the broker
    assert sorted(tp.partition for tp in stale.asked[0] if tp.topic == "fraud-labels") == [0, 1]

    events[label(1)] = state(12, 9.5)
    publish(progress, FakeConsumer({**ends, label(1): 12}), events)
    assert progress.watermark().labels == INF


def test_a_label_partition_whose_end_cannot_be_asked_counts_at_its_own_progress() -> None:
    progress, redis = progress_with(None, two_partitions(gate_group=""))
    ends = {tx(0): 100, tx(1): 40, label(0): 5, label(1): 0}
    events = {**READ_TO_END, label(0): state(5, 9)}
    publish(progress, FakeConsumer(ends), events)
    assert progress.watermark().labels == INF

    down = FakeConsumer(ends)
    down.down = True
    publish(progress, down, events)
    assert progress.watermark().labels == 9 * DAY_US
    assert redis.hashes[RedisKeys("t").progress()]["fraud-labels:0"] == str(9 * DAY_US)


def test_nothing_is_asked_of_the_broker_while_no_partition_looks_read_to_its_end() -> None:
    progress, _ = progress_with(None, two_partitions(gate_group=""))
    behind = {tx(0): state(50, 10), tx(1): state(20, 10), label(0): state(2, 9), label(1): state(3, 9)}
    consumer = FakeConsumer({tx(0): 100, tx(1): 40, label(0): 5, label(1): 8})
    publish(progress, consumer, behind)
    assert consumer.asked == []
    assert progress.watermark().labels == 9 * DAY_US
