"""The event contract: transaction, fraud-label and decision events (schema version 1).

The JSON Schema files in ``fraudcore/schemas`` are the contract; this module loads them
and adds the checks JSON Schema cannot express well (ISO-4217 currency codes, ISO-8601
timestamps with an offset, finite amounts, payload size). ``validate`` returns every
problem as ``"<field>: <what is wrong>"`` and never raises on bad input.

A fraud label is a verdict on one transaction: a chargeback (the bank's final word, always a
fraud; a record without ``source`` and ``is_fraud`` is one) or an analyst's verdict, fraud or
legitimate (``analyst_label`` builds one). Every consumer reads a verdict with
``label_is_fraud`` and combines a transaction's verdicts with ``next_verdict``: the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Annotated, Any

import fastjsonschema
import orjson
import pycountry
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import AfterValidator

SCHEMA_VERSION = 1
DEFAULT_MAX_EVENT_BYTES = 64 * 1024


class EventKind(StrEnum):
    TRANSACTION = "transaction"
    FRAUD_LABEL = "fraud_label"
    DECISION = "decision"


ISO_4217 = frozenset(c.alpha_3 for c in pycountry.currencies)


def _iso_4217(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError(f"{value!r} is not an ISO-4217 currency code")
    return value


#: A settings or config field that must hold an ISO-4217 currency code.
CurrencyCode = Annotated[str, AfterValidator(_iso_4217)]

# Fields whose string value must be an ISO-8601 timestamp with a UTC offset.
_TIMESTAMP_FIELDS = {
    EventKind.TRANSACTION: ("timestamp",),
    EventKind.FRAUD_LABEL: ("transaction_timestamp", "reported_at"),
    EventKind.DECISION: ("transaction_timestamp", "scored_at"),
}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class Validated:
    """Result of validating one raw event: the decoded event when valid, else the problems."""

    event: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(str(p) for p in self.problems)


def schema_text(kind: EventKind, fmt: str = "json") -> str:
    suffix = "json" if fmt == "json" else "avsc"
    return (resources.files("fraudcore") / "schemas" / f"{kind.value}.v{SCHEMA_VERSION}.{suffix}").read_text()


@cache
def _conforms(kind: EventKind) -> Any:
    """The contract compiled to Python (fastjsonschema): a valid event passes in microseconds;
    only an invalid one goes through jsonschema, which names each field at fault."""
    return fastjsonschema.compile(orjson.loads(schema_text(kind)))


@cache
def _validator(kind: EventKind) -> Draft202012Validator:
    return Draft202012Validator(orjson.loads(schema_text(kind)))


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries a UTC offset; raise ValueError otherwise."""
    ts = datetime.fromisoformat(value)
    if ts.tzinfo is None:
        raise ValueError("no UTC offset")
    return ts


def format_timestamp(ts: datetime) -> str:
    """The canonical wire form: UTC, microseconds, ``+00:00``."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _describe(error: ValidationError) -> Problem:
    problem = _describe_plainly(error)
    # A rule of a conditional branch (if/then/else) says when it applies in its description.
    conditional = {"then", "else"} & set(map(str, error.relative_schema_path))
    if conditional and isinstance(error.schema, dict) and (when := error.schema.get("description")):
        return Problem(problem.field, f"{problem.message} ({when})")
    return problem


def _describe_plainly(error: ValidationError) -> Problem:
    path = ".".join(str(p) for p in error.absolute_path)
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return Problem(f"{path}.{missing}" if path else missing, "is required")
    if kind == "additionalProperties":
        instance: dict[str, Any] = error.instance if isinstance(error.instance, dict) else {}
        schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
        extras = sorted(set(instance) - set(schema.get("properties", {})))
        name = extras[0] if extras and extras[0] else '""'
        return Problem(f"{path}.{name}" if path else name, "is not a field of this event")
    got = _JSON_TYPE_NAMES.get(type(error.instance), type(error.instance).__name__)
    messages = {
        "type": f"must be of type {error.validator_value}, got {got}",
        "exclusiveMinimum": f"must be > {error.validator_value}",
        "minimum": f"must be >= {error.validator_value}",
        "maximum": f"must be <= {error.validator_value}",
        "minLength": "must not be empty",
        "maxLength": f"must be at most {error.validator_value} characters",
        "const": f"must be {error.validator_value!r}",
        "enum": f"{error.instance!r} is not one of {error.validator_value}",
        "not": "must be absent",
    }
    return Problem(path or "payload", messages.get(str(kind), error.message))


def _semantic_problems(kind: EventKind, event: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name in _TIMESTAMP_FIELDS[kind]:
        value = event.get(name)
        if isinstance(value, str):
            try:
                parse_timestamp(value)
            except ValueError:
                problems.append(Problem(name, f"{value[:40]!r} is not ISO-8601 with a UTC offset"))
    if kind is EventKind.TRANSACTION:
        currency = event.get("currency")
        if isinstance(currency, str) and currency not in ISO_4217:
            problems.append(Problem("currency", f"{currency[:16]!r} is not ISO-4217"))
        amount = event.get("amount")
        if isinstance(amount, float) and not math.isfinite(amount):
            problems.append(Problem("amount", "must be finite"))
    return problems


def decode(raw: bytes | str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> tuple[Any, Problem | None]:
    """Decode a raw payload as strict JSON (no NaN/Infinity), bounded in size."""
    size = len(raw)
    if size > max_bytes:
        return None, Problem("payload", f"{size} bytes exceeds the limit of {max_bytes}")
    if size == 0:
        return None, Problem("payload", "is empty")
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        detail = str(exc).split(":")[0]
        return None, Problem("payload", f"not valid UTF-8 JSON ({detail})")


def validate_object(kind: EventKind, event: Any) -> list[Problem]:
    if not isinstance(event, dict):
        got = _JSON_TYPE_NAMES.get(type(event), type(event).__name__)
        return [Problem("payload", f"must be a JSON object, got {got}")]
    try:
        _conforms(kind)(event)
        problems = []
    except fastjsonschema.JsonSchemaException:
        problems = [_describe(e) for e in _validator(kind).iter_errors(event)]
    problems.extend(_semantic_problems(kind, event))
    return sorted(set(problems), key=lambda p: (p.field, p.message))


def validate(
    kind: EventKind, raw: bytes | str | dict[str, Any], max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> Validated:
    """Validate one event, raw bytes or already decoded; never raises on bad input."""
    if isinstance(raw, dict):
        event: Any = raw
    else:
        event, problem = decode(raw, max_bytes)
        if problem:
            return Validated(None, [problem])
    problems = validate_object(kind, event)
    return Validated(None if problems else event, problems)


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


# --------------------------------------------------------------------------- fraud labels
class LabelSource(StrEnum):
    CHARGEBACK = "chargeback"
    ANALYST = "analyst"


def label_source(label: Mapping[str, Any]) -> LabelSource:
    """Who gave a label's verdict; absent (or null, as in an archive written before the field
    existed) means a chargeback. Raises ValueError on an unknown source."""
    value = label.get("source")
    try:
        return LabelSource.CHARGEBACK if value is None else LabelSource(value)
    except ValueError:
        raise ValueError(f"source: {value!r} is not one of {[s.value for s in LabelSource]}") from None


def label_is_fraud(label: Mapping[str, Any]) -> bool:
    """Whether a label's verdict says fraud: ``is_fraud``, true when absent (or null). A
    chargeback is always a fraud: one that says otherwise breaks the contract (ValueError)."""
    source = label_source(label)
    value = label.get("is_fraud")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ValueError("is_fraud: must be of type boolean")
    if not value and source is LabelSource.CHARGEBACK:
        raise ValueError("is_fraud: must be true (a chargeback is always a fraud)")
    return value


@dataclass(frozen=True)
class Verdict:
    """What a transaction's labels say so far."""

    is_fraud: bool
    final: bool  # a chargeback: no later verdict changes it


def next_verdict(current: Verdict | None, label: Mapping[str, Any]) -> Verdict:
    """The label rule: a transaction's verdict after ``label``, its verdicts taken in report order.

    The latest verdict decides, except that a chargeback, the bank's final word, is never
    overturned: once a transaction has one it is a fraud, whatever an analyst said before or
    says after. A transaction without any label is legitimate."""
    if current is not None and current.final:
        return current
    return Verdict(label_is_fraud(label), label_source(label) is LabelSource.CHARGEBACK)


def transaction_verdict(labels: Iterable[Mapping[str, Any]]) -> Verdict | None:
    """One transaction's verdict from all its labels (``next_verdict`` over them by
    ``reported_at``, ties in the given order); None without labels."""
    verdict = None
    for label in sorted(labels, key=lambda lab: parse_timestamp(lab["reported_at"])):
        verdict = next_verdict(verdict, label)
    return verdict


def label_key(label: Mapping[str, Any]) -> bytes:
    """The record key on the labels topic: the card id, as for transactions, so a card's
    labels stay in order on one partition."""
    return str(label["card_id"]).encode()


def analyst_label(
    transaction_id: str,
    card_id: str,
    terminal_id: str,
    transaction_timestamp: str | datetime,
    is_fraud: bool,
    analyst: str,
    reported_at: str | datetime,
) -> dict[str, Any]:
    """An analyst's verdict as a valid label record (``reported_at``: when it was submitted).
    The scenario is 0 (unknown): an analyst does not know it. Raises ValueError, naming the
    fields, on a record the contract refuses (an empty analyst name, a bad timestamp)."""

    def wire(ts: str | datetime) -> str:
        return format_timestamp(ts) if isinstance(ts, datetime) else ts

    label: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "transaction_id": transaction_id,
        "card_id": card_id,
        "terminal_id": terminal_id,
        "transaction_timestamp": wire(transaction_timestamp),
        "reported_at": wire(reported_at),
        "scenario": 0,
        "source": LabelSource.ANALYST.value,
        "is_fraud": is_fraud,
        "analyst": analyst,
    }
    problems = validate_object(EventKind.FRAUD_LABEL, label)
    if problems:
        raise ValueError("; ".join(map(str, problems)))
    return label
