"""The review desk: case transitions made durable before they count, and each verdict's label
published exactly once.

**One writer.** The book lives in this process's memory, rebuilt at start-up by replaying the
cases topic; every transition is checked and written under one lock, and applied only once
the broker has acknowledged it. So two analysts never hold the same case (the second claim
sees the first), and a verdict is recorded once: a second submission, a double click or a
replayed form finds the case closed. This holds for one console replica; two replicas would
each keep their own book. The console runs as a single replica (Deployment ``replicas: 1``,
strategy ``Recreate``).

**Verdict to label, across crashes.** A verdict touches two topics: the case closes on the
cases topic and its label goes to ``fraud-labels``. A Kafka transaction over both would make
that atomic, but its commit markers take offsets on ``fraud-labels``, whose consumers (the
archiver, the feature job: ``fraudcore.kafka.OwnedPartitions``) rely on contiguous offsets.
So the write order does it, with an idempotent retry:

1. the ``closed`` event, carrying the verdict's audit record and the exact label record to
   publish, is made durable first (the outbox): a verdict either exists with its label
   fixed, or not at all;
2. the label is published (key: the card id, as the producers write labels; header
   ``case-id``) and acknowledged;
3. a ``labelled`` event records where it landed.

A crash or broker failure between 1 and 3 leaves a closed case without a label position.
Such cases are finished by ``deliver_labels`` (at start-up, then every few seconds): if an
earlier attempt may have reached the broker (a crash, a timed-out wait), it first looks for
the label on ``fraud-labels`` by its ``case-id`` header, from the verdict's time on, and
publishes it only if it is not there. A verdict therefore yields exactly one label record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fraud_console.cases import Case, CaseBook, CaseEvent, Status
from fraud_console.metrics import (
    CASES,
    CASES_DROPPED,
    CASES_OPENED,
    LABELS_PUBLISHED,
    VERDICT_TO_LABEL,
    VERDICTS,
)
from fraudcore.events import parse_timestamp

log = logging.getLogger(__name__)


class CaseLog(Protocol):
    """Where cases and labels become durable (Kafka in production: ``journal.KafkaCaseLog``)."""

    def write(self, event: CaseEvent) -> None:
        """Make the event durable, or raise."""

    def publish_label(self, case: Case) -> str:
        """Publish the case's label and return where it landed ("partition:offset"), or raise
        (the record may still arrive later)."""

    def find_label(self, case: Case) -> str | None:
        """Where an earlier attempt published the case's label, or None if it is not there."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class ReviewDesk:
    def __init__(
        self,
        book: CaseBook,
        journal: CaseLog,
        *,
        claim_timeout_s: float,
        case_expiry_s: float,
        max_open: int | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.book = book
        self.journal = journal
        self.claim_timeout_s = claim_timeout_s
        self.case_expiry_s = case_expiry_s
        self.max_open = max_open  # unclaimed cases kept (console.queue_max_cases); None: no limit
        self.clock = clock
        self._lock = threading.Lock()  # the book's transitions, and their writes
        self._delivering = threading.Lock()  # one label publication at a time
        # Closed cases whose label may already be on fraud-labels: replayed ones (a crash may
        # have come after the publication), and those of a failed attempt.
        self._uncertain = {c.case_id for c in book.awaiting_label()}
        self._submitted: dict[str, float] = {}  # case id -> monotonic time of its verdict
        self._count()

    # --- reading ----------------------------------------------------------------------------
    def case(self, case_id: str) -> Case:
        with self._lock:
            return self.book.get(case_id)

    def knows(self, case_id: str) -> bool:
        with self._lock:
            return case_id in self.book

    def queue(self) -> list[Case]:
        with self._lock:
            return self.book.queue()

    def decided(self) -> list[Case]:
        with self._lock:
            return self.book.decided()

    # --- transitions ------------------------------------------------------------------------
    def open(self, decision: dict[str, Any], transaction: dict[str, Any]) -> bool:
        with self._lock:
            now = self.clock()
            event = self.book.open(decision, transaction, now)
            if event is None:
                return False
            self._commit(event)
            dropped = self.book.overflow(now, self.max_open) if self.max_open is not None else []
            for tombstone in dropped:  # the lowest-scored, perhaps the one just opened
                self._commit(tombstone)
        CASES_OPENED.labels(decision["decision"]).inc()
        if dropped:
            CASES_DROPPED.labels("overflow").inc(len(dropped))
        return True

    def claim(self, case_id: str, analyst: str) -> Case:
        with self._lock:
            return self._commit_case(self.book.claim(case_id, analyst, self.clock(), self.claim_timeout_s))

    def release(self, case_id: str, analyst: str) -> Case:
        with self._lock:
            return self._commit_case(self.book.release(case_id, analyst, self.clock()))

    def decide(self, case_id: str, analyst: str, is_fraud: bool, note: str, seen: dict[str, Any]) -> Case:
        """Record the verdict (durable when this returns), then publish its label; a label
        that cannot be published now is left to ``deliver_labels``."""
        started = time.monotonic()
        with self._lock:
            case = self._commit_case(self.book.close(case_id, analyst, is_fraud, note, seen, self.clock()))
            self._submitted[case_id] = started
        VERDICTS.labels("fraud" if is_fraud else "legitimate").inc()
        try:
            return self._deliver(case_id) or case
        except Exception:
            log.warning(
                "case %s: label not published yet; retrying in the background", case_id, exc_info=True
            )
            return case

    def deliver_labels(self) -> int:
        """Publish the labels of closed cases that have none yet; returns how many."""
        with self._lock:
            pending = [c.case_id for c in self.book.awaiting_label()]
        delivered = 0
        for case_id in pending:
            try:
                delivered += self._deliver(case_id) is not None
            except Exception:
                log.warning("case %s: label still not published", case_id, exc_info=True)
        return delivered

    def expire(self) -> int:
        """Drop the open cases nobody claimed in time (tombstones on the cases topic)."""
        with self._lock:
            events = self.book.expired(self.clock(), self.case_expiry_s)
            for event in events:
                self._commit(event)
        if events:
            CASES_DROPPED.labels("expired").inc(len(events))
        return len(events)

    def _deliver(self, case_id: str) -> Case | None:
        with self._delivering:
            with self._lock:
                case = self.book.cases.get(case_id)
            if case is None or case.status is not Status.CLOSED or case.label_position is not None:
                return None
            position = self.journal.find_label(case) if case_id in self._uncertain else None
            if position is None:
                self._uncertain.add(case_id)  # from here a failure may still have published it
                position = self.journal.publish_label(case)
                LABELS_PUBLISHED.inc()
            with self._lock:
                labelled = self._commit_case(self.book.labelled(case_id, position, self.clock()))
            self._uncertain.discard(case_id)
            started = self._submitted.pop(case_id, None)
            if started is not None:
                VERDICT_TO_LABEL.observe(time.monotonic() - started)
            return labelled

    def _commit(self, event: CaseEvent) -> None:
        """Write, then apply (the caller holds the lock)."""
        self.journal.write(event)
        self.book.apply(event)
        self._count()

    def _commit_case(self, event: CaseEvent) -> Case:
        """``_commit`` a transition of a case that stays; returns its new state."""
        assert event.case is not None
        self._commit(event)
        return event.case

    def _count(self) -> None:
        now = self.clock()
        waiting = claimed = 0
        for c in self.book.cases.values():  # on every transition: counted, not sorted
            if c.status is not Status.CLOSED:
                waiting += 1
                claimed += c.status is Status.CLAIMED and not c.claim_expired(now)
        CASES.labels("open").set(waiting - claimed)
        CASES.labels("claimed").set(claimed)
        CASES.labels("awaiting_label").set(len(self.book.awaiting_label()))


def closed_since(case: Case) -> datetime:
    """When the case's verdict was recorded (where a search for its label starts)."""
    assert case.verdict is not None
    return parse_timestamp(case.verdict.decided_at)
