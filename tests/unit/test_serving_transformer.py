"""The transformer's pure parts: request shapes, validation, rows, reasons, decisions."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from fraud_transformer.inputs import CLOUDEVENT, V1, V2, extract, validate_batch
from fraud_transformer.online import Features
from fraud_transformer.publish import DecisionPublisher, PublishError
from fraud_transformer.scoring import (
    APPROVE,
    DECLINE,
    REVIEW,
    contributions,
    decide,
    decision_event,
    decision_id,
    event_time_us,
    model_rows,
    occluded,
    top_reasons,
)
from fraudcore.events import EventKind, validate
from fraudcore.features import CARD_FEATURES, MODEL_FEATURES, NO_PREVIOUS_S, TERMINAL_FEATURES, to_us
from fraudcore.settings import Settings
from tests.serving_helpers import FakeProducer

TXN: dict[str, Any] = {
    "schema_version": 1,
    "transaction_id": "tx-1",
    "card_id": "C1",
    "terminal_id": "T1",
    "amount": 42.5,
    "currency": "EUR",
    "timestamp": "2026-03-07T02:30:00.123456+01:00",
}
CE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "3:1234",
    "ce-source": "/apis/v1/namespaces/fraud/kafkasources/fraud-transactions#transactions",
    "ce-type": "dev.knative.kafka.event",
    "ce-subject": "partition:3#1234",
    "ce-key": "C1",
    "content-type": "application/json",
}


def _v2(*items: Any, name: str = "transactions", datatype: str = "BYTES") -> InferRequest:
    tensor = InferInput(name=name, shape=[len(items)], datatype=datatype, data=list(items))
    return InferRequest(model_name="fraud", infer_inputs=[tensor], request_id="r1")


# --------------------------------------------------------------------------- request shapes
def test_v1_instances_are_the_transactions() -> None:
    batch = extract({"instances": [TXN, TXN]}, {"content-type": "application/json"})
    assert (batch.protocol, batch.where, len(batch.raws)) == (V1, "instances", 2)


def test_v2_bytes_tensor_elements_are_json_transactions() -> None:
    batch = extract(_v2(orjson.dumps(TXN).decode(), orjson.dumps(TXN)), None)
    assert batch.protocol == V2
    assert [e["transaction_id"] for e in validate_batch(batch, 10, 65536)] == ["tx-1", "tx-1"]


def test_binary_cloudevent_body_is_one_transaction() -> None:
    batch = extract(TXN, CE_HEADERS)
    assert (batch.protocol, batch.raws, batch.request_id) == (CLOUDEVENT, [TXN], "3:1234")
    assert batch.ingested_at is None


@pytest.mark.parametrize(
    ("time", "ingested_at"),
    [
        ("2026-12-05T03:44:22.123Z", "2026-12-05T03:44:22.123000+00:00"),  # Knative's RFC 3339
        ("2026-12-05T04:44:22.5+01:00", "2026-12-05T03:44:22.500000+00:00"),
        ("yesterday", None),  # unreadable: no latency from it, and no failed request either
    ],
)
def test_the_cloudevent_time_is_when_the_transaction_was_ingested(time: str, ingested_at: str | None) -> None:
    """The KafkaSource's ``time`` is the Kafka record's: latency runs from there, since event
    times may be late, replayed or simulated."""
    assert extract(TXN, {**CE_HEADERS, "ce-time": time}).ingested_at == ingested_at
    envelope = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": time, "data": TXN}
    assert extract(envelope, {"content-type": "application/cloudevents+json"}).ingested_at == ingested_at


@pytest.mark.parametrize(
    "envelope",
    [
        {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": TXN},
        {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": orjson.dumps(TXN).decode()},
        {
            "specversion": "1.0",
            "id": "1",
            "source": "s",
            "type": "t",
            "data_base64": base64.b64encode(orjson.dumps(TXN)).decode(),
        },
    ],
)
def test_structured_cloudevent_without_time_is_unwrapped_here(envelope: dict[str, Any]) -> None:
    batch = extract(envelope, {"content-type": "application/cloudevents+json"})
    assert batch.protocol == CLOUDEVENT
    assert validate_batch(batch, 10, 65536)[0]["transaction_id"] == "tx-1"


def test_structured_cloudevent_already_unwrapped_by_kserve() -> None:
    batch = extract(TXN, {"content-type": "application/cloudevents+json"})
    assert (batch.protocol, batch.raws) == (CLOUDEVENT, [TXN])


@pytest.mark.parametrize(
    ("payload", "headers", "message"),
    [
        ({"instances": {"a": 1}}, None, "instances: must be an array"),
        ({"instances": []}, None, "instances: must not be empty"),
        ([1, 2], None, "payload: expected"),
        ({"instances": [dict(TXN, amount=-3)]}, None, "instances[0]: amount: must be > 0"),
        ({"instances": [TXN, 7]}, None, "instances[1]: payload: must be a JSON object"),
        (dict(TXN, amount=0), CE_HEADERS, "amount: must be > 0"),
        (b"\xff not json", CE_HEADERS, "payload: not valid UTF-8 JSON"),
        ({k: v for k, v in TXN.items() if k != "card_id"}, None, "card_id: is required"),
        (dict(TXN, currency="XXZ"), None, "currency: 'XXZ' is not ISO-4217"),
        (dict(TXN, timestamp="yesterday"), None, "timestamp: 'yesterday' is not ISO-8601"),
        ({"specversion": "1.0", "data_base64": "@@"}, None, "data_base64: not valid base64"),
    ],
)
def test_bad_input_names_the_field(payload: Any, headers: dict[str, str] | None, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_batch(extract(payload, headers), 10, 65536)
    assert message in str(raised.value)


def test_v2_needs_a_bytes_tensor() -> None:
    with pytest.raises(InvalidInput, match="datatype must be BYTES"):
        extract(_v2(1.0, name="transactions", datatype="FP32"), None)
    with pytest.raises(InvalidInput, match="one BYTES tensor"):
        extract(_v2(1.0, name="x", datatype="FP32"), None)


def test_batches_are_bounded() -> None:
    with pytest.raises(InvalidInput, match="exceed the limit of 2"):
        validate_batch(extract({"instances": [TXN] * 3}, None), 2, 65536)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    payload=json_values | st.fixed_dictionaries({"instances": json_values}) | st.binary(max_size=40),
    binary_ce=st.booleans(),
)
def test_any_payload_is_accepted_or_rejected_as_invalid_input(payload: Any, binary_ce: bool) -> None:
    message = ""
    try:
        validate_batch(extract(payload, CE_HEADERS if binary_ce else None), 10, 65536)
        message = "accepted"
    except InvalidInput as exc:  # anything else (a crash) fails the test
        message = str(exc)
    assert message


# --------------------------------------------------------------------------- rows and reasons
@pytest.mark.parametrize(
    "stamp", ["2026-03-07T02:30:00.123456+01:00", "2026-03-01T00:00:00Z", "1999-12-31T23:59:59.5-08:00"]
)
def test_event_time_matches_the_training_conversion(stamp: str) -> None:
    assert event_time_us(stamp) == int(to_us(pd.Series([stamp]))[0])


def test_model_rows_use_the_shared_request_features() -> None:
    known = Features.defaults(2)
    known.values["card_mean_amount_30d"] = np.array([20.0, 0.0])
    known.values["card_last_tx_time"] = np.array([event_time_us(TXN["timestamp"]) / 1e6 - 90, np.nan])
    x = model_rows([40.0, 5.0], [event_time_us(TXN["timestamp"])] * 2, known.values)
    column = {name: x[:, i] for i, name in enumerate(MODEL_FEATURES)}
    assert x.dtype == np.float64  # exact in the decisions; the model gets float32
    assert x.shape == (2, len(MODEL_FEATURES))
    assert column["amount_over_card_mean_30d"].tolist() == [2.0, 1.0]
    assert column["seconds_since_card_last_tx"].tolist() == [90.0, NO_PREVIOUS_S]
    assert column["is_night"].tolist() == [1.0, 1.0]  # 01:30 UTC
    assert column["is_weekend"].tolist() == [1.0, 1.0]  # Saturday


def test_occluded_rows_replace_one_feature_each() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    rows = occluded(x, [-1.0, -2.0, -3.0])
    assert rows.tolist() == [
        [-1, 2, 3],
        [1, -2, 3],
        [1, 2, -3],
        [-1, 5, 6],
        [4, -2, 6],
        [4, 5, -3],
    ]


def test_reasons_are_the_largest_positive_contributions() -> None:
    scores = np.array([0.9, 0.2])
    occluded_scores = np.array([0.5, 0.95, 0.8, 0.2, 0.2, 0.2])
    contrib = contributions(scores, occluded_scores, 3)
    assert np.allclose(contrib, [[0.4, -0.05, 0.1], [0.0, 0.0, 0.0]])
    assert top_reasons(contrib[0], ["a", "b", "c"], 3) == [
        {"feature": "a", "contribution": 0.4},
        {"feature": "c", "contribution": 0.1},
    ]
    assert top_reasons(contrib[1], ["a", "b", "c"], 3) == []


@pytest.mark.parametrize(
    ("score", "decision"),
    [(0.0, APPROVE), (0.499, APPROVE), (0.5, REVIEW), (0.79, REVIEW), (0.8, DECLINE), (1.0, DECLINE)],
)
def test_thresholds(score: float, decision: str) -> None:
    assert decide(score, 0.5, 0.8) == decision


def test_decision_event_follows_the_contract_and_its_id_is_deterministic() -> None:
    now = datetime(2026, 3, 7, 1, 30, 1, tzinfo=UTC)
    reasons = [{"feature": "amount", "contribution": 0.25}]
    event = decision_event(TXN, 0.91, DECLINE, "v7", reasons, True, now)
    assert validate(EventKind.DECISION, event).ok, validate(EventKind.DECISION, event).reason
    assert (
        event["decision_id"]
        == decision_event(TXN, 0.1, APPROVE, "v7", [], False, now + timedelta(1))["decision_id"]
    )
    assert event["decision_id"] == decision_id("tx-1", "v7") != decision_id("tx-1", "v8")
    assert event["transaction_timestamp"] == "2026-03-07T01:30:00.123456+00:00"
    assert "ingested_at" not in event  # a direct call: no record time
    ingested = decision_event(
        TXN, 0.91, DECLINE, "v7", reasons, True, now, "2026-03-07T01:30:00.500000+00:00"
    )
    assert validate(EventKind.DECISION, ingested).ok, validate(EventKind.DECISION, ingested).reason
    assert ingested["ingested_at"] == "2026-03-07T01:30:00.500000+00:00"


# --------------------------------------------------------------------------- features
def test_unknown_cards_and_terminals_fall_back() -> None:
    columns: dict[str, list[Any]] = {name: [1.0, None, 2.0] for name in CARD_FEATURES}
    columns["card_last_tx_time"] = [datetime(2026, 3, 1, tzinfo=UTC), None, None]
    columns |= {name: [0.5, 0.5, None] for name in TERMINAL_FEATURES}
    served = Features.from_columns(columns, 3)
    assert served.card_known.tolist() == [True, False, True]
    assert served.terminal_known.tolist() == [True, True, False]
    assert served.fallback.tolist() == [False, True, True]
    assert served.values["card_tx_count_1h"].tolist() == [1.0, 0.0, 2.0]
    last = served.values["card_last_tx_time"]
    assert last[0] == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert np.isnan(last[1:]).all()


# --------------------------------------------------------------------------- settings
def test_thresholds_come_from_the_serving_settings_and_must_be_ordered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUD_SERVING__REVIEW_THRESHOLD", "0.4")
    monkeypatch.setenv("FRAUD_SERVING__DECLINE_THRESHOLD", "0.6")
    serving = Settings().serving
    assert (serving.review_threshold, serving.decline_threshold) == (0.4, 0.6)
    monkeypatch.setenv("FRAUD_SERVING__REVIEW_THRESHOLD", "0.9")
    with pytest.raises(ValueError, match="review_threshold must not exceed"):
        Settings()


# --------------------------------------------------------------------------- publishing
def test_publish_waits_for_every_ack_without_blocking_the_loop() -> None:
    fake = FakeProducer()
    publisher = DecisionPublisher(cast(Any, fake), "scores", timeout_s=2)

    async def run() -> tuple[list[Any], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        acks = await publisher.publish([(b"k1", b"v1"), (b"k2", b"v2")])
        task.cancel()
        return acks, ticks

    acks, ticks = asyncio.run(run())
    assert acks == [(0, 0), (0, 1)]
    assert ticks > 1  # the loop kept running while the acks were pending
    assert [k for _, k, _ in fake.sent] == [b"k1", b"k2"]


def test_publish_fails_on_a_broker_error_or_a_missing_ack() -> None:
    failing = DecisionPublisher(cast(Any, FakeProducer(fail=True)), "scores", timeout_s=2)
    with pytest.raises(PublishError, match="broker said no"):
        asyncio.run(failing.publish([(b"k", b"v")]))
    silent = DecisionPublisher(cast(Any, FakeProducer(never=True)), "scores", timeout_s=0.05)
    with pytest.raises(TimeoutError):
        asyncio.run(silent.publish([(b"k", b"v")]))
