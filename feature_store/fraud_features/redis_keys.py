"""The feature job's Redis keys, all under the settings' feature namespace and the state's
layout version.

``LAYOUT`` names how the state is laid out (``h1``: terminal counters per UTC hour). A job of a
new layout finds none of its keys, so it rebuilds every partition's state from the topics'
retention, as after a loss of state, rather than misreading counters laid out another way.
The keys of an earlier layout are left to expire (counters) or to be deleted by an operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import TopicPartition

LAYOUT = "h1"
#: The state mark of a partition in the layout before versions (terminal counters per UTC day).
UNVERSIONED_MARK = "{namespace}:mark:{topic}:{partition}"


@dataclass(frozen=True)
class RedisKeys:
    namespace: str

    def _key(self, *parts: object) -> str:
        return ":".join([self.namespace, LAYOUT, *map(str, parts)])

    def earlier_layout_mark(self, tp: TopicPartition) -> str:
        """The partition's state mark as the layout before this one named it: present when
        the job's state is being rebuilt for a new layout rather than after a loss."""
        return UNVERSIONED_MARK.format(namespace=self.namespace, topic=tp.topic, partition=tp.partition)

    def transaction_counts(self, terminal_id: str) -> str:
        """Hash: a terminal's transaction counts per UTC hour, one field per UTC day (``<day>``)
        holding its active hours' counts (``<hour of the day>:<count>``, comma-separated)."""
        return self._key("tc", terminal_id)

    def fraud_counts(self, terminal_id: str) -> str:
        """Hash: a terminal's fraud count per transaction hour and report hour (``<hour>:<hour>``)."""
        return self._key("tf", terminal_id)

    def counted_frauds(self, day: int) -> str:
        """Set: the transactions of UTC ``day`` whose fraud is counted (later fraud verdicts
        count nothing). One set per transaction day, so old days go as their counters do."""
        return self._key("frauds-counted", day)

    def counted_days(self) -> str:
        """Sorted set: each ``counted_frauds`` set, scored by its day."""
        return self._key("frauds-counted-days")

    def applied(self, tp: TopicPartition) -> str:
        """The offset after the partition's last record whose counter increments are applied."""
        return self._key("applied", tp.topic, tp.partition)

    def progress(self) -> str:
        """Hash: each partition's event-time progress (µs, or ``inf`` once caught up)."""
        return self._key("progress")

    def checkpoint(self, tp: TopicPartition) -> str:
        """A transaction partition's card histories and the offset they resume from."""
        return self._key("ckpt", tp.topic, tp.partition)

    def state_mark(self, tp: TopicPartition) -> str:
        """The sequence number of the partition's last checkpoint, written with it: a value
        other than the one the job wrote last (or none, once written) means Redis lost
        the partition's state, or its newest part (a restart from an older snapshot)."""
        return self._key("mark", tp.topic, tp.partition)
