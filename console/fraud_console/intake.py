"""Decisions that open cases: every ``review``, and a share of the ``decline``s.

The console reads ``fraud-scores`` in its own consumer group and commits a batch once its
cases are durable (at-least-once; a case's id comes from its transaction id, so a decision
read twice opens one case). The decline sample is chosen by a hash of the transaction id:
the same transactions whatever the order, the replica or a restart."""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, Protocol

import confluent_kafka
from confluent_kafka import TopicPartition

from fraud_console.cases import case_id_of
from fraud_console.desk import ReviewDesk
from fraud_console.journal import TransactionFinder
from fraud_console.metrics import CASES_NOT_OPENED
from fraudcore.events import EventKind, validate
from fraudcore.kafka import RELAXED_FETCH, DeadLetters, Record, librdkafka_consumer
from fraudcore.service import commit_before_handover, consume_loop
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = (1.0, 30.0)  # after a failure: first delay, longest delay


def sampled(transaction_id: str, share: float) -> bool:
    """Whether the transaction falls in the first ``share`` of a uniform hash space."""
    digest = hashlib.sha256(transaction_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def opens_case(decision: dict[str, Any], decline_share: float) -> bool:
    if decision["decision"] == "review":
        return True
    return decision["decision"] == "decline" and sampled(decision["transaction_id"], decline_share)


class Quarantine(Protocol):
    def send(self, record: Any, reason: str) -> None: ...
    def flush(self) -> None: ...


class Intake:
    def __init__(
        self,
        settings: Settings,
        desk: ReviewDesk,
        finder: TransactionFinder,
        group: str,
        dead_letters: Quarantine | None = None,
    ) -> None:
        self.settings = settings
        self.desk = desk
        self.finder = finder
        self.group = group
        self.assigned = threading.Event()  # readiness: the consumer owns its partitions
        self.dead_letters = dead_letters or DeadLetters(settings, "console")

    def handle(self, records: list[Record]) -> None:
        """Open the cases of a batch; a record that is not a decision goes to the dead-letter
        topic with the reason (durably: the batch is committed when this returns)."""
        share = self.settings.console.decline_sample_share
        rejected = False
        for record in records:
            checked = validate(EventKind.DECISION, record.value, self.settings.max_event_bytes)
            if checked.event is None:
                CASES_NOT_OPENED.labels("invalid_decision").inc()
                self.dead_letters.send(record, checked.reason)
                rejected = True
                continue
            decision = checked.event
            if not opens_case(decision, share):
                continue
            self.open(decision)
        if rejected:
            self.dead_letters.flush()

    def open(self, decision: dict[str, Any]) -> bool:
        if self.desk.knows(case_id_of(decision["transaction_id"])):
            return False
        transaction = self.finder.find(decision)
        if transaction is None:
            # Its terminal (which the label needs) and amount are unknown: a direct call to the
            # transformer, or a transaction past the topic's retention.
            CASES_NOT_OPENED.labels("transaction_not_found").inc()
            log.warning(
                "decision %s: transaction %s not found", decision["decision_id"], decision["transaction_id"]
            )
            return False
        return self.desk.open(decision, transaction)

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop``; a failure (the broker away) restarts the consumer after a
        growing delay, from the last commit."""
        delay = RESTART_DELAY_S[0]
        while not stop.is_set():
            consumer = self._consumer()
            try:
                consume_loop(consumer, self.group, self.handle, stop=stop)
                delay = RESTART_DELAY_S[0]
            except Exception:
                log.exception("intake failed; restarting in %.0f s", delay)
                stop.wait(delay)
                delay = min(delay * 2, RESTART_DELAY_S[1])
            finally:
                self.assigned.clear()
                consumer.close()

    def _consumer(self) -> confluent_kafka.Consumer:
        def on_assign(_client: confluent_kafka.Consumer, _partitions: list[TopicPartition]) -> None:
            self.assigned.set()

        return librdkafka_consumer(
            self.settings,
            self.group,
            [self.settings.topics.scores.name],
            on_revoke=commit_before_handover,
            on_assign=on_assign,
            # A person reads the queue: half a second of delay is not seen, and it saves the
            # broker a fetch per decision.
            **{**RELAXED_FETCH, "auto.offset.reset": self.settings.console.initial_offset},
        )
