"""The feature job's Redis keys, all under the settings' feature namespace."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import TopicPartition


@dataclass(frozen=True)
class RedisKeys:
    namespace: str

    def _key(self, *parts: object) -> str:
        return ":".join([self.namespace, *map(str, parts)])

    def transaction_counts(self, terminal_id: str) -> str:
        """Hash: a terminal's transaction count per UTC day (field ``<day>``)."""
        return self._key("tc", terminal_id)

    def fraud_counts(self, terminal_id: str) -> str:
        """Hash: a terminal's fraud count per transaction day and report day (``<day>:<day>``)."""
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
