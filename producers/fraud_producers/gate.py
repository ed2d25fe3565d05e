"""The quality gate: a filter stage between untrusted ingress and the platform.

It consumes ``transactions-raw``, validates every event against the contract and the
business rules, forwards valid events (original bytes, same key) to ``transactions`` and
routes everything else to ``transactions-dlq`` with the original bytes and the reason in
headers. Why a filter stage rather than validation inside each producer: any producer
(the simulator, a replay, a partner feed) writes to one ingress topic, and nothing reaches
the feature job, the archive or scoring without passing the same checks.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from functools import cache

from prometheus_client import Counter

from fraud_producers.producer import EventProducer
from fraudcore.events import EventKind, Problem, Validated, parse_timestamp, schema_text, validate
from fraudcore.kafka import Record, dead_letter, librdkafka_consumer
from fraudcore.service import commit_before_handover, consume_loop
from fraudcore.settings import Settings

COMPONENT = "quality-gate"
ACCEPTED = Counter("quality_gate_accepted", "Events forwarded to the transactions topic")
REJECTED = Counter("quality_gate_rejected", "Events quarantined in the dead-letter topic", ["reason"])


@cache
def _contract_fields() -> frozenset[str]:
    return frozenset(json.loads(schema_text(EventKind.TRANSACTION))["properties"])


def reason_label(problem: Problem) -> str:
    """A low-cardinality metric label: the contract field at fault, ``payload`` or ``unknown_field``."""
    return (
        problem.field
        if problem.field in _contract_fields() or problem.field == "payload"
        else "unknown_field"
    )


def check(raw: bytes, *, now: datetime, max_future: timedelta, max_bytes: int) -> Validated:
    """The contract plus business rules that need context (event time not far in the future)."""
    result = validate(EventKind.TRANSACTION, raw, max_bytes=max_bytes)
    if result.event is not None:
        ts = parse_timestamp(result.event["timestamp"])
        if ts - now > max_future:
            result = Validated(
                None,
                [
                    Problem(
                        "timestamp",
                        f"{result.event['timestamp']} is more than "
                        f"{max_future.total_seconds():.0f}s in the future",
                    )
                ],
            )
    return result


class QualityGate:
    def __init__(
        self,
        settings: Settings,
        *,
        group: str = "quality-gate",
        max_future: timedelta = timedelta(minutes=5),
        producer: EventProducer | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        self.max_future = max_future
        # No linger: a batch's forwards go out at once, and the gate waits for their acks.
        self.producer = producer or EventProducer(settings, linger_ms=0)
        self.accepted = 0
        self.rejected = 0

    def handle(self, records: list[Record]) -> None:
        topics = self.settings.topics
        now = datetime.now(UTC)
        for r in records:
            raw = r.value
            result = check(raw, now=now, max_future=self.max_future, max_bytes=self.settings.max_event_bytes)
            if result.event is not None:
                key = r.key or result.event["card_id"].encode()
                # The record keeps its time: end-to-end latency runs from the producer's send.
                self.producer.send(topics.transactions.name, key, raw, timestamp_ms=r.timestamp_ms)
                ACCEPTED.inc()
                self.accepted += 1
            else:
                label = reason_label(result.problems[0])
                REJECTED.labels(label).inc()
                dead_letter(self.producer.send, self.settings, COMPONENT, label, result.reason, r)
                self.rejected += 1
        # Offsets are committed after this returns: everything forwarded must be acknowledged first.
        self.producer.flush()
        if self.producer.stats.errors:
            raise RuntimeError(f"{self.producer.stats.errors} forwards were not acknowledged; not committing")

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> int:
        # librdkafka: the gate sits on the scoring path, where every millisecond counts.
        consumer = librdkafka_consumer(
            self.settings, self.group, [self.settings.topics.raw.name], on_revoke=commit_before_handover
        )
        try:
            return consume_loop(consumer, self.group, self.handle, stop=stop, idle_exit_s=idle_exit_s)
        finally:
            consumer.close()
            self.producer.close()
