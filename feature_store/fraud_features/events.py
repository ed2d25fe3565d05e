"""The feature job's input: transactions and fraud labels parsed from Kafka records, and the
dead-letter topic for records that cannot be parsed (with the reason, never a crash)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from fraudcore import features as F
from fraudcore.events import label_is_fraud, parse_timestamp
from fraudcore.kafka import dead_letter
from fraudcore.kafka import producer as make_producer
from fraudcore.settings import Settings

_TX_FIELDS = ("transaction_id", "card_id", "terminal_id", "amount", "timestamp")
_LABEL_FIELDS = ("transaction_id", "terminal_id", "transaction_timestamp", "reported_at")


@dataclass
class Transaction:
    offset: int
    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    t_us: int

    @property
    def day(self) -> int:
        """The UTC day of the transaction (days since the epoch)."""
        return self.t_us // F.DAY_US


@dataclass
class Label:
    """A verdict on a transaction (a chargeback or an analyst's): the transaction, its
    terminal and time, when it was reported, and whether it says fraud."""

    offset: int
    transaction_id: str
    terminal_id: str
    t_us: int
    reported_us: int
    is_fraud: bool = True


def to_us(value: str) -> int:
    """An ISO-8601 timestamp in microseconds since the epoch."""
    ts = parse_timestamp(value)
    return int(ts.timestamp()) * F.US_PER_S + ts.microsecond


def _require(event: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(event, dict):
        raise ValueError("payload: must be a JSON object")
    missing = [f for f in fields if f not in event]
    if missing:
        raise ValueError("; ".join(f"{f}: is required" for f in missing))


def parse_transaction(value: bytes, offset: int) -> Transaction:
    event = orjson.loads(value)
    _require(event, _TX_FIELDS)
    amount = float(event["amount"])
    if not amount > 0:
        raise ValueError("amount: must be > 0")
    t_us = to_us(event["timestamp"])
    ids = [event["transaction_id"], event["card_id"], event["terminal_id"]]
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError("transaction_id, card_id, terminal_id: must be non-empty strings")
    return Transaction(offset, ids[0], ids[1], ids[2], amount, t_us)


def parse_label(value: bytes, offset: int) -> Label:
    event = orjson.loads(value)
    _require(event, _LABEL_FIELDS)
    t_us, reported_us = to_us(event["transaction_timestamp"]), to_us(event["reported_at"])
    terminal, transaction_id = event["terminal_id"], event["transaction_id"]
    if not (isinstance(terminal, str) and terminal):
        raise ValueError("terminal_id: must be a non-empty string")
    if not (isinstance(transaction_id, str) and transaction_id):
        raise ValueError("transaction_id: must be a non-empty string")
    # The contract's rule (source, is_fraud); a breach raises ValueError naming the field.
    return Label(offset, transaction_id, terminal, t_us, reported_us, label_is_fraud(event))


def rejection_reason(exc: Exception) -> str:
    """Why a record was rejected, as ``<field>: <problem>`` where a field is to blame."""
    if isinstance(exc, KeyError):
        return f"{exc.args[0]}: is required"
    if isinstance(exc, orjson.JSONDecodeError):
        return "payload: not valid UTF-8 JSON"
    return str(exc) or type(exc).__name__


Event = TypeVar("Event")


class DeadLetters:
    """Quarantines the records that cannot be parsed on the dead-letter topic."""

    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        self.producer = make_producer(settings)

    def parse_all(self, records: list[Any], parse: Callable[[bytes, int], Event]) -> list[Event]:
        """The events of ``records`` in their order; each bad one goes to the dead-letter topic."""
        events = []
        for record in records:
            try:
                events.append(parse(record.value, record.offset))
            except Exception as exc:  # bad input: quarantine, never crash
                self.send(record, rejection_reason(exc))
        return events

    def send(self, record: Any, reason: str) -> None:
        label = reason.split(":")[0] if ":" in reason else "payload"
        dead_letter(self.producer.send, self.settings, self.component, label, reason, record)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()
