"""The feature job's input: transactions and fraud labels parsed from Kafka records (a record
that cannot be parsed raises ValueError naming the field; ``fraudcore.kafka.DeadLetters``
quarantines it with that reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from fraudcore import features as F
from fraudcore.events import label_is_fraud, parse_timestamp

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
    def hour(self) -> int:
        """The UTC hour of the transaction (hours since the epoch): its terminal values'."""
        return self.t_us // F.HOUR_US


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
    try:
        amount = float(event["amount"])
    except (TypeError, ValueError):
        raise ValueError(f"amount: must be a number, got {type(event['amount']).__name__}") from None
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
