"""Helpers for the review console's tests: decisions and transactions as the platform writes
them, and an in-memory case log for unit tests (the integration tests use Kafka)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fraud_console.cases import Case, CaseBook, CaseEvent, EventKind
from fraudcore.features import MODEL_FEATURES

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def transaction(n: int = 1, **overrides: Any) -> dict[str, Any]:
    event = {
        "schema_version": 1,
        "transaction_id": f"tx-console-{n}",
        "card_id": f"C{n:05d}",
        "terminal_id": f"T{n:05d}",
        "amount": 125.5 + n,
        "currency": "EUR",
        "timestamp": (T0 - timedelta(minutes=n)).isoformat(),
    }
    return {**event, **overrides}


def decision(
    tx: dict[str, Any], kind: str = "review", score: float = 0.62, **overrides: Any
) -> dict[str, Any]:
    event = {
        "schema_version": 1,
        "decision_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tx['transaction_id']}/v-test")),
        "transaction_id": tx["transaction_id"],
        "card_id": tx["card_id"],
        "score": score,
        "decision": kind,
        "model_version": "v-test",
        "reasons": [
            {"feature": "amount", "contribution": 0.21},
            {"feature": "card_tx_count_1h", "contribution": 0.08},
        ],
        "features_fallback": False,
        "transaction_timestamp": tx["timestamp"],
        "scored_at": T0.isoformat(),
        "features": {name: float(i) for i, name in enumerate(MODEL_FEATURES)} | {"amount": tx["amount"]},
    }
    return {**event, **overrides}


class Clock:
    """A settable clock for the desk."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class MemoryLog:
    """``desk.CaseLog`` in memory: the case events as their records (key, value bytes), the
    labels published, and failures on demand."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.labels: list[tuple[str, dict[str, Any]]] = []  # (case id, label)
        self.fail_writes_of: set[EventKind] = set()
        self.publish_failures = 0  # the next N publications raise
        self.land_failed_publications = False  # a failed publication still reaches the topic
        self.searches = 0
        self._lock = threading.Lock()

    def write(self, event: CaseEvent) -> None:
        if event.kind in self.fail_writes_of:
            raise ConnectionError(f"broker away while writing {event.kind}")
        with self._lock:
            self.records.append((event.key(), event.value()))

    def publish_label(self, case: Case) -> str:
        assert case.label is not None
        with self._lock:
            if self.publish_failures:
                self.publish_failures -= 1
                if self.land_failed_publications:
                    self.labels.append((case.case_id, orjson.loads(orjson.dumps(case.label))))
                raise TimeoutError("no acknowledgement")
            self.labels.append((case.case_id, orjson.loads(orjson.dumps(case.label))))
            return f"0:{len(self.labels) - 1}"

    def find_label(self, case: Case) -> str | None:
        self.searches += 1
        for offset, (case_id, _label) in enumerate(self.labels):
            if case_id == case.case_id:
                return f"0:{offset}"
        return None

    def replayed(self, recent_closed: int = 1_000) -> CaseBook:
        """The book a restarted console rebuilds from these records."""
        book = CaseBook(recent_closed=recent_closed)
        for key, value in self.records:
            book.apply(CaseEvent.from_record(key, value))
        return book
