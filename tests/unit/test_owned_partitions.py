"""OwnedPartitions: where partitions resume after a rebalance, and which records in hand a
component may use (no Kafka here: the rebalance callbacks are driven by hand)."""

from __future__ import annotations

from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, TopicPartition

from fraudcore.kafka import OwnedPartitions, Record


class FakeClient:
    """The calls the callbacks make on a consumer, answered from fixed offsets."""

    def __init__(self, committed: dict[int, int], low: int = 0, high: int = 1_000) -> None:
        self.committed_at = committed
        self.low = low
        self.high = high
        self.assigned: list[TopicPartition] = []
        self.unassigned = False
        self.commits: list[list[tuple[int, int]]] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.committed_at.get(tp.partition, -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return self.low, self.high

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def unassign(self) -> None:
        self.unassigned = True

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous  # a handover waits for its commit
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


def records(partition: int, offsets: range) -> list[Record]:
    return [Record("tx", partition, o, b"k", b"v", 0) for o in offsets]


def owned(
    resume: dict[int, int | None] | None = None, hand_over: dict[TopicPartition, int] | None = None
) -> tuple[OwnedPartitions, list[Any]]:
    """The object under test, and a log of the component's release and forget calls."""
    calls: list[Any] = []

    def resume_at(tp: TopicPartition, committed: int | None) -> int | None:
        return (resume or {}).get(tp.partition, committed)

    def release(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        calls.append(("release", tps))
        return hand_over or {}

    def forget(tps: list[TopicPartition]) -> None:
        calls.append(("forget", tps))

    return OwnedPartitions(resume_at, release, forget), calls


def test_a_partition_starts_where_the_component_says_else_at_its_committed_offset_else_the_beginning() -> (
    None
):
    parts, _ = owned(resume={0: 40})
    client = FakeClient(committed={0: 10, 1: 20}, low=5)
    parts._on_assign(client, [TopicPartition("tx", p) for p in (0, 1, 2)])  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in client.assigned] == [(0, 40), (1, 20), (2, 5)]
    assert parts.next == {
        TopicPartition("tx", 0): 40,
        TopicPartition("tx", 1): 20,
        TopicPartition("tx", 2): 5,
    }


class ElectingClient(FakeClient):
    """A partition whose leader answers only after ``refusals`` requests (a new topic's
    first moments, a broker restarting)."""

    def __init__(self, refusals: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        super().__init__(committed={0: 10}, low=5)
        self.refusals = refusals
        self.code = code
        self.asked = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.asked += 1
        if self.asked <= self.refusals:
            raise confluent_kafka.KafkaException(KafkaError(self.code))
        return super().get_watermark_offsets(tp, timeout)


def test_a_leader_being_elected_at_assignment_is_waited_for() -> None:
    parts, _ = owned()
    client = ElectingClient(refusals=2)
    parts._on_assign(client, [TopicPartition("tx", 0)])  # type: ignore[arg-type]
    assert client.asked == 3
    assert [(tp.partition, tp.offset) for tp in client.assigned] == [(0, 10)]


def test_any_other_broker_error_at_assignment_is_raised() -> None:
    parts, _ = owned()
    client = ElectingClient(refusals=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(confluent_kafka.KafkaException):
        parts._on_assign(client, [TopicPartition("tx", 0)])  # type: ignore[arg-type]
    assert client.asked == 1
    assert not client.assigned


def test_never_before_the_first_retained_record() -> None:
    parts, _ = owned(resume={0: 3})
    client = FakeClient(committed={}, low=100)
    parts._on_assign(client, [TopicPartition("tx", 0)])  # type: ignore[arg-type]
    assert client.assigned[0].offset == 100


def test_records_continue_exactly_where_the_partition_stands() -> None:
    parts, _ = owned()
    parts._on_assign(FakeClient(committed={0: 10, 1: 10}), [TopicPartition("tx", 0), TopicPartition("tx", 1)])  # type: ignore[arg-type]
    taken = parts.take(records(0, range(8, 14)) + records(1, range(12, 15)))
    # partition 0: the two already handled go; partition 1 would leave a gap: they come again
    assert {tp.partition: [r.offset for r in recs] for tp, recs in taken.items()} == {0: [10, 11, 12, 13]}
    assert parts.take(records(0, range(14, 16)))[TopicPartition("tx", 0)][0].offset == 14
    assert parts.take(records(0, range(10, 16))) == {}  # replayed from before: all handled


def test_a_revoked_partition_is_handed_over_and_its_records_in_hand_left_to_its_new_owner() -> None:
    tx0 = TopicPartition("tx", 0)
    parts, calls = owned(hand_over={tx0: 3})
    client = FakeClient(committed={0: 0})
    parts._on_assign(client, [tx0])  # type: ignore[arg-type]
    in_hand = records(0, range(0, 5))
    parts._on_revoke(client, [tx0])  # type: ignore[arg-type]
    assert calls == [("release", [tx0]), ("forget", [tx0])]
    assert client.commits == [[(0, 3)]]
    assert client.unassigned
    assert parts.take(in_hand) == {}


def test_a_failed_handover_still_forgets_the_partitions() -> None:
    tx0 = TopicPartition("tx", 0)
    forgotten: list[Any] = []

    def release(_tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        raise ConnectionError("redis away")

    parts = OwnedPartitions(lambda _tp, committed: committed, release, forgotten.append)
    client = FakeClient(committed={0: 0})
    parts._on_assign(client, [tx0])  # type: ignore[arg-type]
    parts._on_revoke(client, [tx0])  # type: ignore[arg-type]
    assert forgotten == [[tx0]]
    assert client.commits == []
    assert client.unassigned


def test_a_position_past_the_partitions_end_reads_it_from_the_beginning() -> None:
    """A checkpoint or commit left by an earlier incarnation of the topic: without this the
    client would reset to the beginning and every record would look already taken."""
    parts, _ = owned(resume={0: 5_000})
    client = FakeClient(committed={}, low=0, high=300)
    parts._on_assign(client, [TopicPartition("tx", 0)])  # type: ignore[arg-type]
    assert client.assigned[0].offset == 0
    assert [r.offset for r in parts.take(records(0, range(0, 3)))[TopicPartition("tx", 0)]] == [0, 1, 2]


def test_a_gap_left_by_retention_is_taken_and_any_other_gap_is_not() -> None:
    parts, _ = owned()
    client = FakeClient(committed={0: 10, 1: 10}, low=0)
    parts._on_assign(client, [TopicPartition("tx", 0), TopicPartition("tx", 1)])  # type: ignore[arg-type]
    assert parts.take(records(0, range(50, 52))) == {}  # offset 10 still exists: stale records
    client.low = 40  # retention deleted 10..39 while the consumer lagged; the client reset to 40
    taken = parts.take(records(1, range(40, 42)))
    assert [r.offset for r in taken[TopicPartition("tx", 1)]] == [40, 41]
