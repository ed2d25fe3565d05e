from __future__ import annotations

import json
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudcore.events import (
    EventKind,
    Verdict,
    analyst_label,
    dumps,
    label_is_fraud,
    label_key,
    next_verdict,
    schema_text,
    transaction_verdict,
    validate,
)

VALID_TRANSACTION = {
    "schema_version": 1,
    "transaction_id": "tx-1",
    "card_id": "card-42",
    "terminal_id": "term-7",
    "amount": 12.5,
    "currency": "EUR",
    "timestamp": "2026-03-01T12:00:00+00:00",
}
VALID_LABEL = {
    "schema_version": 1,
    "transaction_id": "tx-1",
    "card_id": "card-42",
    "terminal_id": "term-7",
    "transaction_timestamp": "2026-03-01T12:00:00Z",
    "reported_at": "2026-03-08T12:00:00Z",
    "scenario": 2,
}
VALID_ANALYST_LABEL = {
    **VALID_LABEL,
    "reported_at": "2026-03-01T12:30:00Z",
    "scenario": 0,
    "source": "analyst",
    "is_fraud": False,
    "analyst": "ana.lyst",
}
VALID_DECISION = {
    "schema_version": 1,
    "decision_id": "d-1",
    "transaction_id": "tx-1",
    "card_id": "card-42",
    "score": 0.93,
    "decision": "decline",
    "model_version": "20260301-120000",
    "reasons": [{"feature": "terminal_risk_7d", "contribution": 0.4}],
    "features_fallback": False,
    "transaction_timestamp": "2026-03-01T12:00:00Z",
    "scored_at": "2026-03-01T12:00:00.004Z",
}


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        (EventKind.TRANSACTION, VALID_TRANSACTION),
        (EventKind.FRAUD_LABEL, VALID_LABEL),
        (EventKind.FRAUD_LABEL, VALID_ANALYST_LABEL),
        (EventKind.DECISION, VALID_DECISION),
    ],
)
def test_valid_events_pass_as_bytes_and_dicts(kind: EventKind, event: dict) -> None:
    assert validate(kind, dumps(event)).ok
    assert validate(kind, json.dumps(event)).event == event
    assert validate(kind, dict(event)).ok


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"amount": -3}, "amount: must be > 0"),
        ({"amount": 0}, "amount: must be > 0"),
        ({"amount": "12"}, "amount: must be of type number, got string"),
        ({"currency": "XX"}, "currency: 'XX' is not ISO-4217"),
        ({"currency": "eur"}, "currency: 'eur' is not ISO-4217"),
        ({"timestamp": "yesterday"}, "timestamp: 'yesterday' is not ISO-8601 with a UTC offset"),
        (
            {"timestamp": "2026-03-01T12:00:00"},
            "timestamp: '2026-03-01T12:00:00' is not ISO-8601 with a UTC offset",
        ),
        ({"card_id": ""}, "card_id: must not be empty"),
        ({"transaction_id": None}, "transaction_id: must be of type string, got null"),
        ({"schema_version": 2}, "schema_version: must be 1"),
        ({"is_fraud": 1}, "is_fraud: is not a field of this event"),
        ({"channel": "phone"}, "channel: 'phone' is not one of ['pos', 'ecom', 'atm']"),
    ],
)
def test_each_bad_field_is_named(change: dict, expected: str) -> None:
    result = validate(EventKind.TRANSACTION, dumps({**VALID_TRANSACTION, **change}))
    assert not result.ok
    assert result.event is None
    assert expected in [str(p) for p in result.problems]


def test_every_problem_is_reported_at_once() -> None:
    result = validate(EventKind.TRANSACTION, {"amount": -1, "currency": "XX", "timestamp": "no"})
    fields = {p.field for p in result.problems}
    assert {"amount", "currency", "timestamp", "card_id", "terminal_id", "transaction_id"} <= fields


def test_missing_field_is_named() -> None:
    event = dict(VALID_LABEL)
    del event["reported_at"]
    assert [str(p) for p in validate(EventKind.FRAUD_LABEL, event).problems] == ["reported_at: is required"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe\x00garbage", "payload: not valid UTF-8 JSON"),
        (b'{"transaction_id": "tx-1", "amou', "payload: not valid UTF-8 JSON"),
        (b"", "payload: is empty"),
        (b"[1, 2]", "payload: must be a JSON object, got array"),
        (b'"just a string"', "payload: must be a JSON object, got string"),
        (b'{"amount": NaN}', "payload: not valid UTF-8 JSON"),
        (b"x" * (10 * 1024 * 1024), "payload: 10485760 bytes exceeds the limit of 65536"),
    ],
)
def test_garbage_is_rejected_not_raised(raw: bytes, expected: str) -> None:
    result = validate(EventKind.TRANSACTION, raw)
    assert not result.ok
    assert result.reason.startswith(expected)


def test_infinite_amount_is_rejected() -> None:
    result = validate(EventKind.TRANSACTION, {**VALID_TRANSACTION, "amount": float("inf")})
    assert "amount: must be finite" in result.reason


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    result = validate(EventKind.TRANSACTION, raw)
    assert result.ok == (result.event is not None)
    assert all(p.field and p.message for p in result.problems)


@given(
    st.dictionaries(
        st.text(max_size=12), st.one_of(st.none(), st.integers(), st.floats(), st.text()), max_size=8
    )
)
@settings(max_examples=300, deadline=None)
def test_arbitrary_objects_never_crash(obj: dict) -> None:
    result = validate(EventKind.TRANSACTION, obj)
    assert not result.ok  # random objects never satisfy the contract
    assert all(p.field for p in result.problems)


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        (EventKind.TRANSACTION, VALID_TRANSACTION),
        (EventKind.FRAUD_LABEL, VALID_LABEL),
        (EventKind.FRAUD_LABEL, VALID_ANALYST_LABEL),
        (EventKind.DECISION, VALID_DECISION),
    ],
)
def test_avro_schema_matches_json_schema(kind: EventKind, event: dict) -> None:
    avro: dict[str, Any] = fastavro.parse_schema(json.loads(schema_text(kind, "avro")))  # type: ignore[assignment]
    json_schema = json.loads(schema_text(kind))
    assert {f["name"] for f in avro["fields"]} == set(json_schema["properties"])
    assert {f["name"] for f in avro["fields"] if "default" not in f} == set(json_schema["required"])
    # An absent optional field reads as its Avro default, as an Avro reader fills it in.
    record = {f["name"]: event.get(f["name"], f.get("default")) for f in avro["fields"]}
    assert fastavro.validation.validate(record, avro)


def test_avro_label_defaults_mean_a_chargeback_of_a_fraud() -> None:
    avro = json.loads(schema_text(EventKind.FRAUD_LABEL, "avro"))
    defaults = {f["name"]: f.get("default") for f in avro["fields"]}
    assert (defaults["source"], defaults["is_fraud"], defaults["analyst"]) == ("chargeback", True, None)


def test_labels_are_never_inside_a_transaction() -> None:
    properties = json.loads(schema_text(EventKind.TRANSACTION))["properties"]
    assert not {"is_fraud", "label", "fraud", "scenario"} & set(properties)


# The compiled contract (fastjsonschema) is the fast path; jsonschema is the reference. An
# event the fast path accepts must satisfy the reference too (the reverse only costs time:
# a fast-path rejection is re-checked by jsonschema).
_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
    st.sampled_from(["", "EUR", "decline", "2026-03-01T12:00:00Z", "x" * 200]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(["feature", "contribution", "x"]), st.floats(allow_nan=False), max_size=3
    ),
)


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        (EventKind.TRANSACTION, VALID_TRANSACTION),
        (EventKind.FRAUD_LABEL, VALID_LABEL),
        (EventKind.FRAUD_LABEL, VALID_ANALYST_LABEL),
        (EventKind.DECISION, VALID_DECISION),
    ],
)
@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_the_compiled_contract_accepts_nothing_the_reference_rejects(
    kind: EventKind, event: dict, data: st.DataObject
) -> None:
    from fraudcore.events import _conforms, _validator

    changed = dict(event)
    for name in data.draw(st.lists(st.sampled_from([*event, "extra"]), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            changed.pop(name, None)
        else:
            changed[name] = data.draw(_FIELD_VALUES)
    try:
        _conforms(kind)(changed)
    except Exception:
        return  # rejected by the fast path: jsonschema decides (and explains)
    assert not list(_validator(kind).iter_errors(changed)), changed


# --------------------------------------------------------------------------- fraud labels
def _problems(label: dict) -> list[str]:
    return [str(p) for p in validate(EventKind.FRAUD_LABEL, label).problems]


def test_an_old_label_without_the_verdict_fields_is_a_valid_chargeback_of_a_fraud() -> None:
    assert "source" not in VALID_LABEL
    assert "is_fraud" not in VALID_LABEL
    assert _problems(VALID_LABEL) == []
    assert label_is_fraud(VALID_LABEL) is True
    assert next_verdict(None, VALID_LABEL) == Verdict(is_fraud=True, final=True)


def test_an_analyst_legitimate_verdict_is_valid_and_not_a_fraud() -> None:
    assert _problems(VALID_ANALYST_LABEL) == []
    assert label_is_fraud(VALID_ANALYST_LABEL) is False
    assert label_is_fraud({**VALID_ANALYST_LABEL, "is_fraud": True}) is True


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"analyst": None}, "analyst: is required (an analyst's verdict names its analyst)"),
        ({"analyst": ""}, "analyst: must not be empty"),
        ({"analyst": "a" * 129}, "analyst: must be at most 128 characters"),
        ({"source": "bank"}, "source: 'bank' is not one of ['chargeback', 'analyst']"),
        ({"is_fraud": "no"}, "is_fraud: must be of type boolean, got string"),
        ({"scenario": -1}, "scenario: must be >= 0"),
    ],
)
def test_a_bad_analyst_verdict_is_refused_naming_the_field(change: dict, expected: str) -> None:
    label = {**VALID_ANALYST_LABEL, **change}
    if change.get("analyst", "") is None:
        del label["analyst"]
    assert expected in _problems(label)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"is_fraud": False}, "is_fraud: must be True (a chargeback is always a fraud)"),
        (
            {"source": "chargeback", "is_fraud": False},
            "is_fraud: must be True (a chargeback is always a fraud)",
        ),
        ({"analyst": "ana"}, "analyst: must be absent (only an analyst's verdict names an analyst)"),
    ],
)
def test_a_chargeback_is_always_a_fraud_and_names_no_analyst(change: dict, expected: str) -> None:
    assert _problems({**VALID_LABEL, **change}) == [expected]


def test_scenario_zero_means_unknown_and_is_valid_on_any_label() -> None:
    # An analyst does not know the scenario; a chargeback's scenario may be unknown too.
    assert _problems({**VALID_ANALYST_LABEL, "is_fraud": True, "scenario": 0}) == []
    assert _problems({**VALID_LABEL, "scenario": 0}) == []
    assert _problems({**VALID_LABEL, "scenario": 6}) == ["scenario: must be <= 5"]


def test_analyst_label_builds_a_valid_record_keyed_by_card() -> None:
    from datetime import UTC, datetime

    label = analyst_label(
        "tx-9",
        "card-3",
        "term-1",
        "2026-03-01T12:00:00+00:00",
        False,
        "ana.lyst",
        datetime(2026, 3, 1, 13, 5, tzinfo=UTC),
    )
    assert validate(EventKind.FRAUD_LABEL, dumps(label)).ok
    assert label["reported_at"] == "2026-03-01T13:05:00.000000+00:00"
    assert (label["source"], label["is_fraud"], label["analyst"], label["scenario"]) == (
        "analyst",
        False,
        "ana.lyst",
        0,
    )
    assert "note" not in label
    assert label_key(label) == b"card-3"


def test_analyst_label_refuses_what_the_contract_refuses() -> None:
    args = ("tx-9", "card-3", "term-1", "2026-03-01T12:00:00+00:00", True)
    with pytest.raises(ValueError, match="analyst: must not be empty"):
        analyst_label(*args, "", "2026-03-01T13:00:00+00:00")
    with pytest.raises(ValueError, match=r"reported_at: .* is not ISO-8601"):
        analyst_label(*args, "ana", "yesterday")


def test_a_verdict_that_breaks_the_contract_is_not_guessed() -> None:
    with pytest.raises(ValueError, match="is_fraud"):
        label_is_fraud({**VALID_LABEL, "is_fraud": False})
    with pytest.raises(ValueError, match="source"):
        label_is_fraud({**VALID_LABEL, "source": "bank", "is_fraud": True})


def _verdict(source: str, is_fraud: bool, reported_at: str) -> dict:
    label = {**VALID_LABEL, "source": source, "is_fraud": is_fraud, "reported_at": reported_at}
    if source == "analyst":
        label["analyst"] = "ana"
    return label


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], None),
        ([("analyst", True, "02")], Verdict(True, False)),
        ([("analyst", False, "02")], Verdict(False, False)),
        # The latest analyst verdict decides, whatever the order of the records.
        ([("analyst", True, "02"), ("analyst", False, "03")], Verdict(False, False)),
        ([("analyst", True, "04"), ("analyst", False, "03")], Verdict(True, False)),
        # A chargeback wins over an analyst's "legitimate", before or after it.
        ([("analyst", False, "02"), ("chargeback", True, "05")], Verdict(True, True)),
        ([("chargeback", True, "02"), ("analyst", False, "05")], Verdict(True, True)),
    ],
)
def test_the_latest_verdict_decides_and_a_chargeback_is_final(
    verdicts: list[tuple[str, bool, str]], expected: Verdict | None
) -> None:
    labels = [_verdict(source, fraud, f"2026-03-{day}T00:00:00Z") for source, fraud, day in verdicts]
    assert all(validate(EventKind.FRAUD_LABEL, label).ok for label in labels)
    assert transaction_verdict(labels) == expected
