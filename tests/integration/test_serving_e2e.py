"""Transformer and predictor as real servers against Kafka, Redis (Feast) and MinIO:
every request shape end to end, decisions on fraud-scores, fallbacks, bad input, fuzzing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_producers.encoding import TRANSACTION_COLUMNS
from fraud_transformer.scoring import decision_id
from fraudcore.events import EventKind, validate
from fraudcore.features import TERMINAL_FEATURES
from fraudcore.kafka import consumer, producer
from fraudcore.settings import Settings
from tests.helpers import read_topic
from tests.serving_helpers import (
    Server,
    expected_row,
    make_model,
    onnx_scores,
    predictor,
    seed_card,
    seed_terminal,
    serving_settings,
    transformer,
    upload_model,
)

pytestmark = pytest.mark.slow

VERSION = "v-e2e-1"
PREDICT = "/v1/models/fraud:predict"
INFER = "/v2/models/fraud/infer"
KAFKA_SOURCE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-source": "/apis/v1/namespaces/fraud/kafkasources/fraud-transactions#transactions",
    "ce-type": "dev.knative.kafka.event",
    "content-type": "application/json",
}


@dataclass
class Served:
    settings: Settings
    model: bytes
    card: dict[str, float]
    terminal: dict[str, float]
    predictor: Server
    transformer: Server
    client: httpx.Client
    now: datetime
    prefix: str  # the models bucket prefix of this module's model

    def txn(self, n: int, **overrides: Any) -> dict[str, Any]:
        event = {
            "schema_version": 1,
            "transaction_id": f"e2e-{uuid.uuid4().hex[:8]}-{n}",
            "card_id": "C-known",
            "terminal_id": "T-known",
            "amount": 12.5 + 17 * n,
            "currency": "EUR",
            "timestamp": (self.now - timedelta(seconds=n)).isoformat(),
        }
        return {**event, **overrides}

    def expected_score(self, txn: dict[str, Any]) -> float:
        card = self.card if txn["card_id"] == "C-known" else None
        terminal = self.terminal if txn["terminal_id"] == "T-known" else None
        return float(onnx_scores(self.model, expected_row(txn, card, terminal))[0])


@pytest.fixture(scope="module")
def served(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from fraud_features.store import apply

    unique = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("serving")
    settings = serving_settings(stack, unique, tmp, f"t{unique}")  # fraud-scores, model-events too
    model = make_model(VERSION, seed=5, baselines=[1.0] * 22)
    prefix = f"test-{unique}"
    upload_model(settings, prefix, VERSION, model)
    pred = predictor(settings, f"s3://models/{prefix}/champion", tmp / "predictor.log")  # starts meanwhile
    trans: Server | None = None
    try:
        apply(settings)  # this module's own Feast project
        now = datetime.now(UTC).replace(microsecond=0)
        card = seed_card(settings, "C-known", now - timedelta(minutes=20))
        terminal = {name: 0.05 * (i + 1) for i, name in enumerate(TERMINAL_FEATURES)}
        seed_terminal(settings, "T-known", now, terminal)
        trans = transformer(settings, pred.url, tmp / "transformer.log")
        pred.wait_ready()
        trans.wait_ready()
        with httpx.Client(base_url=trans.url, timeout=10) as client:
            yield Served(settings, model, card, terminal, pred, trans, client, now, prefix)
    finally:
        if trans is not None:
            trans.stop()
        pred.stop()


def published(
    settings: Settings, transaction_ids: list[str], timeout_s: float = 20, topic: str | None = None
) -> list[Any]:
    """The fraud-scores (or ``topic``) records of these transactions (read from the beginning)."""
    wanted = set(transaction_ids)
    cons = consumer(settings, None, topic or settings.topics.scores.name)
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and wanted - {r.key.decode() for r in found}:
            batch = cons.poll(timeout_ms=200)
            found += [r for rs in batch.values() for r in rs if r.key.decode() in wanted]
    finally:
        cons.close()
    return found


def _check_decision(served: Served, decision: dict[str, Any], txn: dict[str, Any], fallback: bool) -> None:
    assert validate(EventKind.DECISION, decision).ok, validate(EventKind.DECISION, decision).reason
    assert decision["transaction_id"] == txn["transaction_id"]
    assert decision["model_version"] == VERSION
    assert decision["decision_id"] == decision_id(txn["transaction_id"], VERSION)
    assert decision["features_fallback"] is fallback
    assert abs(decision["score"] - served.expected_score(txn)) < 1e-6
    assert len(decision["reasons"]) <= 3
    assert all(r["contribution"] > 0 for r in decision["reasons"])


def test_v1_batch_scores_equal_onnxruntime_and_decisions_are_published(served: Served) -> None:
    txns = [served.txn(i) for i in range(3)]
    response = served.client.post(PREDICT, json={"instances": txns})
    assert response.status_code == 200, response.text
    decisions = response.json()["predictions"]
    for decision, txn in zip(decisions, txns, strict=True):
        _check_decision(served, decision, txn, fallback=False)
    records = published(served.settings, [t["transaction_id"] for t in txns])
    assert {r.key.decode(): json.loads(r.value) for r in records} == {
        d["transaction_id"]: d for d in decisions
    }
    for record in records:
        assert validate(EventKind.DECISION, record.value).ok
        assert record.key.decode() == json.loads(record.value)["transaction_id"]


def test_over_grpc_the_rows_travel_as_raw_tensors_and_score_the_same(served: Served, tmp_path: Path) -> None:
    """The platform's own wiring: transformer to predictor over gRPC (raw tensor bytes both
    ways), next to this module's REST transformer; same scores, same decisions."""
    grpc = transformer(
        served.settings,
        f"127.0.0.1:{served.predictor.grpc_port}",
        tmp_path / "transformer-grpc.log",
        ["--predictor_protocol", "grpc-v2"],
    )
    try:
        grpc.wait_ready()
        txns = [served.txn(i) for i in range(4)] + [served.txn(9, card_id="C-unknown")]
        response = httpx.post(f"{grpc.url}{PREDICT}", json={"instances": txns}, timeout=10)
        assert response.status_code == 200, response.text
        decisions = response.json()["predictions"]
        for decision, txn in zip(decisions, txns, strict=True):
            _check_decision(served, decision, txn, fallback=txn["card_id"] == "C-unknown")
        over_rest = served.client.post(PREDICT, json={"instances": txns}).json()["predictions"]
        assert [d["score"] for d in decisions] == pytest.approx([d["score"] for d in over_rest], abs=1e-6)
        assert [d["reasons"] for d in decisions] == [d["reasons"] for d in over_rest]
    finally:
        grpc.stop()


def test_v2_bytes_tensor(served: Served) -> None:
    txns = [served.txn(i) for i in range(2)]
    body = {
        "inputs": [
            {"name": "transactions", "shape": [2], "datatype": "BYTES", "data": [json.dumps(t) for t in txns]}
        ]
    }
    response = served.client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model_version"] == VERSION
    outputs = {o["name"]: o for o in result["outputs"]}
    decisions = [json.loads(d) for d in outputs["decisions"]["data"]]
    for decision, txn in zip(decisions, txns, strict=True):
        _check_decision(served, decision, txn, fallback=False)
    assert np.allclose(outputs["score"]["data"], [d["score"] for d in decisions], atol=1e-6)


def test_cloudevent_binary_mode_as_kafkasource_sends_it_and_redelivery(served: Served) -> None:
    txn = served.txn(1)
    headers = {
        **KAFKA_SOURCE_HEADERS,
        "ce-id": "partition:3/offset:1234",
        "ce-subject": "partition:3#1234",
        "ce-key": txn["card_id"],
    }
    body = json.dumps(txn).encode()
    first = served.client.post(PREDICT, content=body, headers=headers)
    again = served.client.post(PREDICT, content=body, headers=headers)  # KafkaSource redelivers
    assert first.status_code == again.status_code == 200, first.text
    assert first.headers["ce-type"] == "io.kserve.inference.response"
    (decision,) = first.json()["predictions"]
    _check_decision(served, decision, txn, fallback=False)
    assert again.json()["predictions"][0]["decision_id"] == decision["decision_id"]
    records = published(served.settings, [txn["transaction_id"]])
    deadline = time.monotonic() + 10
    while len(records) < 2 and time.monotonic() < deadline:
        records = published(served.settings, [txn["transaction_id"]])
    assert {json.loads(r.value)["decision_id"] for r in records} == {decision["decision_id"]}


@pytest.mark.parametrize("with_time", [True, False])
def test_cloudevent_structured_mode(served: Served, with_time: bool) -> None:
    txn = served.txn(2)
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "partition:1/offset:77",
        "source": KAFKA_SOURCE_HEADERS["ce-source"],
        "type": "dev.knative.kafka.event",
        "subject": "partition:1#77",
        "datacontenttype": "application/json",
        "data": txn,
    }
    if with_time:
        event["time"] = served.now.isoformat()
    response = served.client.post(
        PREDICT, content=json.dumps(event), headers={"content-type": "application/cloudevents+json"}
    )
    assert response.status_code == 200, response.text
    (decision,) = response.json()["data"]["predictions"]
    _check_decision(served, decision, txn, fallback=False)


def test_unknown_card_or_terminal_falls_back(served: Served) -> None:
    txns = [
        served.txn(3, card_id=f"C-new-{uuid.uuid4().hex[:6]}"),
        served.txn(4, terminal_id=f"T-new-{uuid.uuid4().hex[:6]}"),
    ]
    response = served.client.post(PREDICT, json={"instances": txns})
    assert response.status_code == 200, response.text
    for decision, txn in zip(response.json()["predictions"], txns, strict=True):
        _check_decision(served, decision, txn, fallback=True)
    records = published(served.settings, [t["transaction_id"] for t in txns])
    assert all(json.loads(r.value)["features_fallback"] for r in records)
    assert len(records) == 2


def test_metrics(served: Served) -> None:
    served.client.post(PREDICT, json={"instances": [served.txn(5)]}).raise_for_status()
    text = served.client.get("/metrics").text
    for name in (
        "fraud_decisions_total{",
        'fraud_e2e_latency_seconds_bucket{le="0.001"}',
        'fraud_e2e_latency_seconds_bucket{le="10.0"}',
        "transformer_feature_lookup_seconds_count",
        'transformer_errors_total{kind="invalid_input"}',
        "request_predict_seconds",
    ):
        assert name in text, name
    assert served.predictor.metric("predictor_model_info", model="fraud", version="v-e2e-1") == 1.0


BAD = [
    ({"instances": [{"amount": -5}]}, {}, "amount: must be > 0"),
    ({"instances": "nope"}, {}, "instances: must be an array"),
    ("{not json", {"content-type": "application/json"}, "Unrecognized request format"),
    (
        {"schema_version": 1},
        {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"},
        "card_id: is required",
    ),
    (
        {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"amount": "1"}},
        {"content-type": "application/cloudevents+json"},
        "amount: must be of type number",
    ),
]


@pytest.mark.parametrize(("body", "headers", "message"), BAD)
def test_bad_requests_get_4xx_naming_the_field(
    served: Served, body: Any, headers: dict[str, str], message: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = served.client.post(
        PREDICT, content=content, headers={"content-type": "application/json", **headers}
    )
    assert 400 <= response.status_code < 500, response.text
    assert message in response.text


def test_bad_v2_requests_get_4xx(served: Served) -> None:
    bad_txn = json.dumps(served.txn(0, currency="ZZZ"))
    for body in (
        {"inputs": [{"name": "transactions", "shape": [1], "datatype": "BYTES", "data": [bad_txn]}]},
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        {"inputs": "nope"},
    ):
        response = served.client.post(INFER, json=body)
        assert 400 <= response.status_code < 500, response.text
    assert (
        "currency"
        in served.client.post(
            INFER,
            json={"inputs": [{"name": "transactions", "shape": [1], "datatype": "BYTES", "data": [bad_txn]}]},
        ).text
    )


# --------------------------------------------------------------------------- fuzzing
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=10,
)
field_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.just(""),
)
mutated_transactions = st.builds(
    lambda base, changes, drop: {k: v for k, v in {**base, **changes}.items() if k not in drop},
    st.just(
        {
            "schema_version": 1,
            "transaction_id": "fz",
            "card_id": "C-known",
            "terminal_id": "T-known",
            "amount": 10.0,
            "currency": "EUR",
            "timestamp": "2026-03-01T12:00:00+00:00",
        }
    ),
    st.dictionaries(
        st.sampled_from([*TRANSACTION_COLUMNS, "extra"]),
        field_values | st.floats(min_value=1e-300, max_value=1e300),
        max_size=3,
    ),
    st.sets(st.sampled_from(["transaction_id", "amount", "timestamp", "currency"]), max_size=2),
)
# Printable ASCII without surrounding blanks: anything else is refused by the HTTP client itself.
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(str.strip)
random_headers = st.dictionaries(
    st.sampled_from(
        [
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-time",
            "ce-key",
            "ce-datacontenttype",
            "content-type",
            "inference-header-content-length",
        ]
    ),
    header_values
    | st.sampled_from(["1.0", "0.3", "application/json", "application/cloudevents+json", "12", "-1"]),
    max_size=5,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from([PREDICT, INFER]))
    kind = draw(st.sampled_from(["json", "instances", "v2", "ce", "bytes"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "instances":
        body = json.dumps(
            {"instances": draw(st.lists(mutated_transactions | json_values, max_size=3))}
        ).encode()
    elif kind == "v2":
        items = draw(st.lists(mutated_transactions.map(json.dumps) | st.text(max_size=10), max_size=3))
        shape = draw(st.sampled_from([[len(items)], [1], [len(items), 1], []]))
        datatype = draw(st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", "XYZ"]))
        body = json.dumps(
            {"inputs": [{"name": "transactions", "shape": shape, "datatype": datatype, "data": items}]}
        ).encode()
    elif kind == "ce":
        data = draw(mutated_transactions | json_values)
        envelope = {
            "specversion": draw(st.sampled_from(["1.0", "0.3", "2"])),
            "id": "1",
            "source": "s",
            "type": "t",
        }
        if draw(st.booleans()):
            envelope["time"] = "2026-03-01T12:00:00Z"
        body = json.dumps({**envelope, "data": data}).encode()
    else:
        body = draw(st.binary(max_size=60))
    headers = draw(random_headers)
    if kind != "bytes" and draw(st.integers(0, 3)):  # mostly declared JSON, as real clients do
        headers = {"content-type": "application/json", **headers}
    return path, body, headers


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_fuzzed_requests_never_get_a_5xx(served: Served, request: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = request
    response = served.client.post(path, content=body, headers=headers)
    assert response.status_code < 500, (path, body[:300], headers, response.status_code, response.text[:300])


v2_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]),
        "shape": st.lists(st.integers(-2, 30), max_size=3),
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "XYZ"]),
        "data": st.lists(st.floats(allow_nan=True) | st.integers() | st.text(max_size=4), max_size=50)
        | json_values,
    }
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tensors=st.lists(v2_tensors, max_size=2), outputs=st.none() | st.lists(st.text(max_size=8), max_size=2)
)
def test_fuzzed_predictor_requests_never_get_a_5xx(
    served: Served, tensors: list[dict[str, Any]], outputs: list[str] | None
) -> None:
    body: dict[str, Any] = {"inputs": tensors}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    content = json.dumps(body)  # NaN and Infinity written as such: JSON that a strict decoder refuses
    response = httpx.post(
        f"{served.predictor.url}{INFER}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code < 500, (content[:300], response.status_code, response.text[:300])


GRPC_DATATYPES = ["FP32", "FP64", "INT64", "INT8", "BYTES", "BOOL", "XYZ", ""]


@st.composite
def grpc_requests(draw: st.DrawFn) -> Any:
    """A V2 ModelInferRequest whose tensors disagree with themselves: shapes that do not match
    the bytes, unknown datatypes, raw bytes of any length, typed contents of the wrong kind."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["fraud", "fraud-shadow", "nope"])))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add()
        tensor.name = draw(st.sampled_from(["input", "transactions", "x"]))
        tensor.datatype = draw(st.sampled_from(GRPC_DATATYPES))
        tensor.shape.extend(draw(st.lists(st.integers(-1, 40), max_size=3)))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=400)))
        else:
            contents = draw(
                st.sampled_from(["fp32_contents", "int64_contents", "bytes_contents", "bool_contents"])
            )
            values: Any = {
                "fp32_contents": st.lists(st.floats(width=32), max_size=60),
                "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=10),
                "bytes_contents": st.lists(st.binary(max_size=40), max_size=4),
                "bool_contents": st.lists(st.booleans(), max_size=10),
            }[contents]
            getattr(tensor.contents, contents).extend(draw(values))
    return request


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=grpc_requests(), to_transformer=st.booleans())
def test_fuzzed_grpc_tensors_get_a_client_error_never_a_server_error(
    served: Served, request: Any, to_transformer: bool
) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    server = served.transformer if to_transformer else served.predictor
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            return
        except grpc.RpcError as error:
            failure: Any = error
    code, details = failure.code(), str(failure.details())
    refused = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    if "not ready" in details:  # an empty shadow slot
        refused.add(grpc.StatusCode.UNAVAILABLE)
    assert code in refused, (server.name, request, code, details)


def test_the_servers_listen_on_this_machine_only_and_cap_request_bodies(served: Served) -> None:
    import psutil

    too_big = b"{" + b" " * served.settings.http.max_body_bytes + b"}"
    for server in (served.predictor, served.transformer):
        assert server.proc is not None
        process = psutil.Process(server.proc.pid)
        listening = {c.laddr for c in process.connections("inet") if c.status == psutil.CONN_LISTEN}
        # gRPC listens on a dual-stack socket: 127.0.0.1 shows as ::ffff:127.0.0.1.
        ips = {ip_address(address.ip) for address in listening}
        ipv4 = {ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip for ip in ips}
        assert ipv4 == {ip_address("127.0.0.1")}, (server.name, listening)
        assert {server.http_port, server.grpc_port} <= {address.port for address in listening}
        response = httpx.post(
            f"{server.url}{INFER}", content=too_big, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 413, (server.name, response.status_code, response.text[:200])
        assert server.proc.poll() is None


# --------------------------------------------------------------------------- model swap (last: it changes the model)
def test_a_shadow_challenger_scores_beside_the_champion_on_its_own_topic(served: Served) -> None:
    """A shadow-changed event fills the predictor's shadow slot; the transformer then scores
    every event with it too, after answering, onto fraud-scores-shadow."""
    shadow_version = "v-e2e-shadow"
    challenger = make_model(shadow_version, seed=23, baselines=[0.5] * 22)
    uri = upload_model(served.settings, served.prefix, shadow_version, challenger, champion=False)
    prod = producer(served.settings)
    event = {"type": "shadow-changed", "model": "fraud", "version": shadow_version, "uri": uri}
    prod.send(served.settings.topics.model_events.name, key=b"fraud", value=json.dumps(event).encode()).get(
        10
    )
    prod.close()
    deadline = time.monotonic() + 30
    while httpx.get(f"{served.predictor.url}/v2/models/fraud-shadow/ready").status_code != 200:
        assert time.monotonic() < deadline, served.predictor.tail()
        time.sleep(0.2)
    # The transformer looks at an empty slot again every 30 s: keep scoring until it does.
    txns: list[dict[str, Any]] = []
    shadowed: list[Any] = []
    deadline = time.monotonic() + 60
    while not shadowed and time.monotonic() < deadline:
        txns.append(served.txn(900 + len(txns)))
        answer = served.client.post(PREDICT, json={"instances": [txns[-1]]})
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["model_version"] == VERSION  # the caller sees the champion
        shadowed = published(
            served.settings, [txns[-1]["transaction_id"]], 2, served.settings.topics.shadow_scores.name
        )
    assert shadowed, served.transformer.tail()
    decision = json.loads(shadowed[0].value)
    assert validate(EventKind.DECISION, decision).ok
    assert decision["model_version"] == shadow_version
    expected = float(onnx_scores(challenger, expected_row(txns[-1], served.card, served.terminal))[0])
    assert abs(decision["score"] - expected) < 1e-6


# What a broken or hostile publisher can put on model-events: (key, value).
MODEL_EVENT_POISON = [
    (b"fraud", b"\x00\xff garbage"),
    (b"fraud", b""),
    (b"fraud", b"[1, 2]"),
    (b"fraud", b'{"model": "fraud", "uri": "s3://models/x"}'),
    (b"fraud", b'{"type": "champion-changed", "model": "fraud", "version": "v-no-uri"}'),
    (None, b'{"type": "champion-changed", "uri": "s3://models/no-model"}'),
    (b"fraud", b'{"type": "champion-changed", "pad": "' + b"x" * 1_000_000 + b'"}'),
]


def test_model_swap_under_load_fails_no_request(served: Served) -> None:
    new_version = "v-e2e-2"
    new_model = make_model(new_version, seed=11, baselines=[0.5] * 22)
    uri = upload_model(served.settings, served.prefix, new_version, new_model)
    assert served.predictor.metric("predictor_model_events_ready", model="fraud") == 1.0
    txn = served.txn(6)
    results: list[tuple[int | None, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=served.transformer.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post(PREDICT, json={"instances": [txn]})
                    version = (
                        response.json()["predictions"][0]["model_version"]
                        if response.status_code == 200
                        else response.text
                    )
                    results.append((response.status_code, version))
                except Exception as exc:  # a failed request is what this test looks for
                    results.append((None, repr(exc)))

    def publish(event: dict[str, Any]) -> None:
        prod = producer(served.settings)
        prod.send(
            served.settings.topics.model_events.name, key=b"fraud", value=json.dumps(event).encode()
        ).get(10)
        prod.close()

    def wait_for(condition: Any, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert condition(), served.predictor.tail()

    client = threading.Thread(target=load)
    client.start()
    try:
        wait_for(lambda: len(results) >= 20)
        # Records no reader could use, then a champion that cannot be loaded: each is
        # dead-lettered, the current version keeps serving, and the next event is taken.
        prod = producer(served.settings, max_request_size=2 * 1024 * 1024)
        for key, value in MODEL_EVENT_POISON:
            prod.send(served.settings.topics.model_events.name, key=key, value=value)
        prod.flush()
        prod.close()
        publish(
            {"type": "champion-changed", "model": "fraud", "version": "v-missing", "uri": uri + "-missing"}
        )
        wait_for(lambda: served.predictor.metric("predictor_model_load_failures_total", model="fraud") == 1.0)
        dead = [
            r
            for r in read_topic(
                served.settings, served.settings.topics.dead_letter.name, len(MODEL_EVENT_POISON) + 1
            )
            if dict(r.headers).get("dlq-component") == b"predictor"
        ]
        reasons = {r.value: dict(r.headers)["dlq-reason"].decode() for r in dead}
        assert len(dead) == len(MODEL_EVENT_POISON) + 1, reasons  # once each, though two slots read them
        assert {value for _, value in MODEL_EVENT_POISON} <= set(reasons)
        for value, reason in reasons.items():
            field, _, problem = reason.partition(": ")
            assert field in {"payload", "type", "model", "uri"}, (value[:60], reason)
            assert problem, (value[:60], reason)
        [missing] = [r for v, r in reasons.items() if b"v-missing" in v]
        assert missing.startswith("uri: could not load fraud version v-missing"), missing
        publish({"type": "champion-changed", "model": "fraud", "version": new_version, "uri": uri, "ap": 0.7})
        wait_for(lambda: any(v == new_version for _, v in results))
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 20)
    finally:
        stop.set()
        client.join(timeout=30)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in results]
    first_new = versions.index(new_version)
    assert set(versions[:first_new]) == {VERSION}
    assert set(versions[first_new:]) == {new_version}
    response = served.client.post(PREDICT, json={"instances": [txn]}).json()["predictions"][0]
    expected = float(onnx_scores(new_model, expected_row(txn, served.card, served.terminal))[0])
    assert response["decision_id"] == decision_id(txn["transaction_id"], new_version)
    assert abs(response["score"] - expected) < 1e-6


# --------------------------------------------------------------------------- kill -9 (last: it kills the transformer)
def test_sigkill_loses_no_acknowledged_decision(served: Served) -> None:
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=served.transformer.url, timeout=5) as client:
            for n in range(100_000):
                if stop.is_set():
                    return
                txn = served.txn(n, transaction_id=f"kill-{worker}-{n}-{uuid.uuid4().hex[:6]}")
                try:
                    response = client.post(PREDICT, json={"instances": [txn]})
                except httpx.HTTPError:
                    return  # the server died under this request: it was never acknowledged
                if response.status_code == 200:
                    acknowledged.append(txn["transaction_id"])

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.transformer.proc is not None
    os.kill(served.transformer.proc.pid, signal.SIGKILL)
    stop.set()
    for w in workers:
        w.join(timeout=10)
    assert len(acknowledged) >= 40
    found = {r.key.decode() for r in published(served.settings, acknowledged)}
    assert not set(acknowledged) - found
