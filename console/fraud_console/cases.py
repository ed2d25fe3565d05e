"""A case's life, as a pure state machine: opened -> claimed <-> released -> closed -> labelled.

A case is one transaction an analyst should look at: its decision (score, reason codes, the
features as served), the transaction itself, and, once decided, the verdict with what the
analyst saw when they made it (the audit record). Every transition is a ``CaseEvent`` that
carries the case's whole new state, so the latest event of a case is the case: the cases
topic is compacted by case id and replaying it rebuilds the book (``CaseBook.apply``).

The book never writes anything: a transition returns the event to make durable, and the
caller applies it once it is (``fraud_console.desk``). Times are UTC ISO-8601 strings on the
wire (the audit record is read by people); transitions take ``now`` so tests control time.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from fraudcore.events import analyst_label, format_timestamp, parse_timestamp

# Case ids: a UUID derived from the transaction id, so a redelivered decision (or one of the
# same transaction from another model version) finds its case instead of opening another.
CASE_NAMESPACE = uuid.UUID("6f1d8d64-3c1e-4a53-9f5e-2a8f6f0c1d7b")


def case_id_of(transaction_id: str) -> str:
    return str(uuid.uuid5(CASE_NAMESPACE, transaction_id))


class Status(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    CLOSED = "closed"


class UnknownCaseError(LookupError):
    """No such case (HTTP 404)."""


class CaseConflictError(Exception):
    """The transition does not apply to the case as it stands (HTTP 409); the message says why."""


@dataclass(frozen=True)
class Verdict:
    """The audit record of a decided case: who, when, what, and what they saw."""

    is_fraud: bool
    analyst: str
    decided_at: str
    note: str
    # The score, decision, model version, reason codes, features and transaction shown on the
    # form, and the card's state in the online store as it was displayed (None: unavailable).
    seen: dict[str, Any]


@dataclass(frozen=True)
class Case:
    case_id: str
    opened_at: str
    decision: dict[str, Any]
    transaction: dict[str, Any]
    status: Status = Status.OPEN
    claimant: str | None = None
    claimed_until: str | None = None
    verdict: Verdict | None = None
    # The fraud-labels record the verdict publishes (fixed at closing, so a retry after a
    # crash publishes the same bytes), and where it landed ("partition:offset") once it did.
    label: dict[str, Any] | None = None
    label_position: str | None = None

    @property
    def score(self) -> float:
        return float(self.decision["score"])

    def claim_expired(self, now: datetime) -> bool:
        return self.claimed_until is None or parse_timestamp(self.claimed_until) <= now

    def held_by_other(self, analyst: str, now: datetime) -> bool:
        """Whether another analyst's claim keeps ``analyst`` off the case right now."""
        return self.status is Status.CLAIMED and self.claimant != analyst and not self.claim_expired(now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        verdict = data.get("verdict")
        return cls(
            **{
                **data,
                "status": Status(data["status"]),
                "verdict": Verdict(**verdict) if verdict else None,
            }
        )


class EventKind(StrEnum):
    OPENED = "opened"
    CLAIMED = "claimed"
    RELEASED = "released"
    CLOSED = "closed"
    LABELLED = "labelled"
    EXPIRED = "expired"  # a tombstone: the record's value is empty


@dataclass(frozen=True)
class CaseEvent:
    kind: EventKind
    case_id: str
    at: str
    by: str | None
    case: Case | None  # None for EXPIRED

    def key(self) -> bytes:
        return self.case_id.encode()

    def value(self) -> bytes | None:
        """The record's value; None (a tombstone) when the case is dropped."""
        if self.case is None:
            return None
        return orjson.dumps(
            {"kind": self.kind.value, "at": self.at, "by": self.by, "case": self.case.to_dict()}
        )

    @classmethod
    def from_record(cls, key: bytes, value: bytes | None) -> CaseEvent:
        case_id = key.decode()
        if not value:
            return cls(EventKind.EXPIRED, case_id, "", None, None)
        data = orjson.loads(value)
        return cls(EventKind(data["kind"]), case_id, data["at"], data["by"], Case.from_dict(data["case"]))


@dataclass
class CaseBook:
    """Every case not yet decided, the latest decided ones, and the ids of all decided ones
    (a second verdict on an old case is refused as such, not as an unknown case)."""

    recent_closed: int = 1_000
    cases: dict[str, Case] = field(default_factory=dict)
    closed_ids: set[str] = field(default_factory=set)
    _closed_order: deque[str] = field(default_factory=deque)

    # --- reading ----------------------------------------------------------------------------
    def get(self, case_id: str) -> Case:
        case = self.cases.get(case_id)
        if case is None:
            if case_id in self.closed_ids:
                raise CaseConflictError("the case is closed: it already has a verdict")
            raise UnknownCaseError(case_id)
        return case

    def __contains__(self, case_id: str) -> bool:
        return case_id in self.cases or case_id in self.closed_ids

    def queue(self) -> list[Case]:
        """Cases waiting for a verdict, riskiest first."""
        waiting = [c for c in self.cases.values() if c.status is not Status.CLOSED]
        return sorted(waiting, key=lambda c: (-c.score, c.opened_at))

    def decided(self) -> list[Case]:
        """The latest decided cases still in memory, newest first."""
        closed = [self.cases[i] for i in reversed(self._closed_order) if i in self.cases]
        return [c for c in closed if c.status is Status.CLOSED]

    def awaiting_label(self) -> list[Case]:
        return [c for c in self.cases.values() if c.status is Status.CLOSED and c.label_position is None]

    # --- transitions (each returns the event to make durable) --------------------------------
    def open(self, decision: dict[str, Any], transaction: dict[str, Any], now: datetime) -> CaseEvent | None:
        """The case of this decision's transaction; None if it has one already."""
        case_id = case_id_of(decision["transaction_id"])
        if case_id in self:
            return None
        case = Case(case_id, format_timestamp(now), decision, transaction)
        return _event(EventKind.OPENED, case, now, None)

    def claim(self, case_id: str, analyst: str, now: datetime, timeout_s: float) -> CaseEvent:
        case = self._undecided(case_id)
        if case.held_by_other(analyst, now):
            raise CaseConflictError(f"{case.claimant} has claimed the case until {case.claimed_until}")
        until = format_timestamp(now + timedelta(seconds=timeout_s))
        claimed = replace(case, status=Status.CLAIMED, claimant=analyst, claimed_until=until)
        return _event(EventKind.CLAIMED, claimed, now, analyst)

    def release(self, case_id: str, analyst: str, now: datetime) -> CaseEvent:
        case = self._undecided(case_id)
        if case.status is not Status.CLAIMED or case.claimant != analyst:
            raise CaseConflictError("the case is not claimed by you")
        released = replace(case, status=Status.OPEN, claimant=None, claimed_until=None)
        return _event(EventKind.RELEASED, released, now, analyst)

    def close(
        self, case_id: str, analyst: str, is_fraud: bool, note: str, seen: dict[str, Any], now: datetime
    ) -> CaseEvent:
        """The verdict. Only the claimant decides; a claim past its timeout still counts until
        another analyst claims the case."""
        case = self._undecided(case_id)
        if case.status is not Status.CLAIMED or case.claimant != analyst:
            holder = f"{case.claimant} holds it" if case.status is Status.CLAIMED else "nobody holds it"
            raise CaseConflictError(f"claim the case before deciding it ({holder})")
        decided_at = format_timestamp(now)
        verdict = Verdict(is_fraud, analyst, decided_at, note, seen)
        closed = replace(case, status=Status.CLOSED, verdict=verdict, label=verdict_label(case, verdict, now))
        return _event(EventKind.CLOSED, closed, now, analyst)

    def labelled(self, case_id: str, position: str, now: datetime) -> CaseEvent:
        case = self.cases[case_id]
        return _event(EventKind.LABELLED, replace(case, label_position=position), now, None)

    def expired(self, now: datetime, max_age_s: float) -> list[CaseEvent]:
        """Tombstones for the open cases nobody claimed within ``max_age_s`` of opening."""
        cutoff = now - timedelta(seconds=max_age_s)
        return [
            CaseEvent(EventKind.EXPIRED, c.case_id, format_timestamp(now), None, None)
            for c in self.cases.values()
            if c.status is Status.OPEN and parse_timestamp(c.opened_at) < cutoff
        ]

    def overflow(self, now: datetime, max_open: int) -> list[CaseEvent]:
        """Tombstones for the lowest-scored unclaimed cases beyond ``max_open``."""
        unclaimed = [c for c in self.cases.values() if c.status is Status.OPEN]
        excess = len(unclaimed) - max_open
        if excess <= 0:
            return []
        lowest = heapq.nsmallest(excess, unclaimed, key=lambda c: (c.score, c.opened_at))
        return [CaseEvent(EventKind.EXPIRED, c.case_id, format_timestamp(now), None, None) for c in lowest]

    # --- state ------------------------------------------------------------------------------
    def apply(self, event: CaseEvent) -> None:
        """Take a durable event (written now, or replayed in the topic's order)."""
        if event.case is None:
            self.cases.pop(event.case_id, None)
            return
        case = event.case
        if case.status is Status.CLOSED:
            if case.case_id in self.closed_ids and case.case_id not in self.cases:
                return  # decided long ago and already out of memory
            if case.case_id not in self.closed_ids:
                self.closed_ids.add(case.case_id)
                self._closed_order.append(case.case_id)
        self.cases[case.case_id] = case
        self._forget_old_decisions()

    def _forget_old_decisions(self) -> None:
        """Keep ``recent_closed`` decided cases in memory (their audit stays in the topic); one
        whose label is not published yet stays, and with it the ones decided after it."""
        while len(self._closed_order) > self.recent_closed:
            oldest = self.cases.get(self._closed_order[0])
            if oldest is not None and oldest.label_position is None:
                return
            self.cases.pop(self._closed_order.popleft(), None)

    def _undecided(self, case_id: str) -> Case:
        case = self.get(case_id)
        if case.status is Status.CLOSED:
            assert case.verdict is not None
            raise CaseConflictError(
                f"the case is closed: {case.verdict.analyst} recorded "
                f"{'fraud' if case.verdict.is_fraud else 'legitimate'} at {case.verdict.decided_at}"
            )
        return case


def _event(kind: EventKind, case: Case, now: datetime, by: str | None) -> CaseEvent:
    return CaseEvent(kind, case.case_id, format_timestamp(now), by, case)


def verdict_label(case: Case, verdict: Verdict, now: datetime) -> dict[str, Any]:
    """The fraud-labels record of a verdict (contract fraud_label.v1, source analyst)."""
    tx = case.transaction
    return analyst_label(
        transaction_id=tx["transaction_id"],
        card_id=tx["card_id"],
        terminal_id=tx["terminal_id"],
        transaction_timestamp=tx["timestamp"],
        is_fraud=verdict.is_fraud,
        analyst=verdict.analyst,
        reported_at=now,
    )
