"""What ``fraudcore.model_server`` changes in KServe, pinned against the installed KServe: each
change leans on a KServe internal, so an upgrade that moves one fails here, loudly, and not
in production."""

from __future__ import annotations

import inspect

import kserve.model_server as kserve_model_server
import kserve.protocol.grpc.server as kserve_grpc_server
import kserve.protocol.rest.server as kserve_rest_server
import pytest
from kserve import ModelServer
from kserve.errors import InvalidInput
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane

from fraudcore.model_server import (
    GuardedDataPlane,
    _add_body_limit,
    _drop_latency_log_middleware,
    _freeze_after_startup,
    decode_kafkasource_event,
    encode_binary_cloudevent,
    grpc_interceptors,
    model_server_for,
    parse_args,
)
from fraudcore.settings import Settings


def _server(*argv: str) -> ModelServer:
    args = parse_args(["--http_port", "0", "--enable_grpc", "false", *argv], "test")
    return model_server_for(args, Settings(_env_file=None))


def test_kserve_still_has_what_the_changes_replace() -> None:
    # The data plane is replaced after ModelServer() builds its own from the model registry.
    assert list(inspect.signature(DataPlane.decode).parameters)[:5] == [
        "self",
        "body",
        "headers",
        "protocol_version",
        "model_name",
    ]
    assert "model_registry" in inspect.signature(DataPlane.__init__).parameters
    # The latency-log middleware is found by class on the module-level FastAPI app.
    assert "TimingMiddleware" in inspect.getsource(kserve_rest_server)
    assert 'import_from_string("kserve.model_server:app")' in inspect.getsource(kserve_rest_server)
    assert hasattr(kserve_model_server.app, "user_middleware")
    assert hasattr(kserve_model_server.app.router, "on_startup")
    # Every argument the platform passes is still accepted.
    accepted = inspect.signature(ModelServer.__init__).parameters
    for name in (
        "http_port",
        "grpc_port",
        "enable_grpc",
        "max_threads",
        "max_asyncio_workers",
        "enable_docs_url",
        "enable_latency_logging",
        "access_log_format",
        "event_loop",
        "timeout_keep_alive",
        "predictor_config",
    ):
        assert name in accepted, name
    assert "predictor_request_timeout_seconds" in inspect.signature(PredictorConfig.__init__).parameters


def test_the_server_gets_the_guarded_data_plane_and_the_start_up_hooks() -> None:
    server = _server()
    assert isinstance(server.dataplane, GuardedDataPlane)
    assert server.dataplane.model_registry is server.registered_models
    hooks = kserve_model_server.app.router.on_startup
    assert _drop_latency_log_middleware in hooks
    assert _freeze_after_startup in hooks
    assert any(getattr(h, "__qualname__", "").startswith(_add_body_limit.__name__) for h in hooks)
    # Both servers KServe builds in start() are the platform's bound ones, on 127.0.0.1.
    rest = kserve_model_server.RESTServer
    assert rest.__name__ == "BoundRESTServer"
    assert issubclass(kserve_model_server.GRPCServer, kserve_grpc_server.GRPCServer)
    built = rest("kserve.model_server:app", server.dataplane, server.model_repository_extension, 0)
    assert built.config.host == "127.0.0.1"
    assert built.config.limit_concurrency == Settings.model_fields["http"].default.max_connections


def test_kserve_still_builds_its_servers_from_the_names_the_platform_replaces() -> None:
    source = inspect.getsource(kserve_model_server.ModelServer.start)
    assert "RESTServer(" in source
    assert "GRPCServer(" in source
    grpc_source = inspect.getsource(kserve_grpc_server.GRPCServer.start)
    assert 'listen_addr = f"[::]:{self._port}"' in grpc_source  # the bind the platform replaces
    assert "InferenceServicer(" in grpc_source


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\x00 not json", {"content-type": "application/json"}),
        (b'{"inputs": [{"name": "x"}]}', {"content-type": "application/json"}),
    ],
)
def test_a_request_kserve_cannot_decode_is_a_client_error(body: bytes, headers: dict[str, str]) -> None:
    plane = _server().dataplane
    with pytest.raises(InvalidInput):
        plane.decode(body, headers, "v2", "fraud")


KAFKASOURCE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "partition:3/offset:1234",
    "ce-source": "/apis/v1/namespaces/fraud/kafkasources/fraud-scoring#transactions",
    "ce-type": "dev.knative.kafka.event",
    "ce-subject": "partition:3#1234",
    "ce-time": "2026-12-06T05:00:00.123Z",
    "ce-key": "C00042",
    "content-type": "application/json",
}


@pytest.mark.parametrize(
    "body", [b'{"card_id": "C00042", "amount": 12.5}', b"[1, 2]", b'"text"', b"{}", b"null"]
)
def test_a_kafkasource_event_decodes_as_kserve_decodes_it(body: bytes) -> None:
    fast = decode_kafkasource_event(body, dict(KAFKASOURCE_HEADERS))
    slow, _attributes = DataPlane.decode(DataPlane.__new__(DataPlane), body, dict(KAFKASOURCE_HEADERS))
    assert fast == slow


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"ce-specversion": "0.3"}, "another spec version"),
        ({"ce-id": ""}, "a required attribute empty"),
        ({"content-type": "text/plain"}, "not JSON data"),
        ({"ce-datacontenttype": "application/json"}, "its own data content type"),
    ],
)
def test_anything_else_takes_kserves_own_decoding(change: dict[str, str], why: str) -> None:
    headers = {**KAFKASOURCE_HEADERS, **change}
    assert decode_kafkasource_event(b"{}", headers) is None, why
    assert decode_kafkasource_event(b"{not json", dict(KAFKASOURCE_HEADERS)) is None
    without_source = {k: v for k, v in KAFKASOURCE_HEADERS.items() if k != "ce-source"}
    assert decode_kafkasource_event(b"{}", without_source) is None


def test_the_response_event_is_the_one_kserve_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson
    from kserve.utils.utils import create_response_cloudevent

    response = {"predictions": [{"score": 0.25, "decision": "approve"}]}
    body, headers = encode_binary_cloudevent("fraud", response)
    kserve_headers, kserve_body = create_response_cloudevent("fraud", response, {}, binary_event=True)
    assert orjson.loads(body) == orjson.loads(kserve_body)
    for name in ("ce-specversion", "ce-source", "ce-type"):
        assert headers[name] == kserve_headers[name], name
    assert headers["ce-id"] != kserve_headers["ce-id"]  # fresh ids
    assert headers["ce-time"][:10] == kserve_headers["ce-time"][:10]
    assert headers["content-type"] == "application/json"
    monkeypatch.setenv("CE_TYPE", "com.example.decision")
    assert encode_binary_cloudevent("fraud", response)[1]["ce-type"] == "com.example.decision"
    monkeypatch.setenv("CE_MERGE", "true")  # KServe's attribute merge: its own path
    assert decode_kafkasource_event(b"{}", dict(KAFKASOURCE_HEADERS)) is None


def test_grpc_calls_are_logged_only_with_the_access_log() -> None:
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor

    quiet, logged = grpc_interceptors(access_log=False), grpc_interceptors(access_log=True)
    assert [type(i) for i in quiet] == [ExceptionToStatusInterceptor]
    assert [type(i) for i in logged] == [LoggingInterceptor, ExceptionToStatusInterceptor]
