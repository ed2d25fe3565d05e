"""Start-up shared by the predictor and the transformer: KServe's command line and server,
with the few things this platform changes about them.

* Per-request log lines (REST and gRPC) are off unless asked for (``--access_log true``,
  ``--enable_latency_logging true``; KServe has both on): on this path they cost more CPU
  than the model, and /metrics has the request latencies. Without the latency log, its
  timing middleware goes too.
* A request KServe cannot decode is a 400 (its decoders raise KeyError/ValueError on some
  malformed input, which its generic handler would turn into a 500), and an invalid input
  is logged as one warning line instead of an ERROR with a traceback.
* The garbage collector: the start-up heap is frozen and collections are rarer.
* ``--event-loop auto`` (the default) or ``uvloop`` really runs the servers on uvloop:
  KServe passes the choice to uvicorn only, while its own ``asyncio.run`` would start the
  standard loop.
* ``POST /v1/models/<name>:predict`` (where KafkaSource delivers its CloudEvents) takes a
  lean lane: a plain ASGI handler in front of FastAPI's router runs the same steps as
  KServe's V1 endpoint (model ready, decode, infer, encode) on the same data plane, with the
  same exception handlers, without the router, dependency solving and per-request
  middleware around it. A binary-mode CloudEvent as KafkaSource sends it is read and
  answered without the CloudEvents SDK (same data, same response event; about a tenth of
  the transformer's CPU went to that SDK). Every other route is KServe's, unchanged.
* Both servers listen on ``serving.bind_host`` (this machine unless told otherwise; KServe
  itself binds every interface) with the platform's request limits (``fraudcore.http_limits``):
  a deadline on receiving each request, a body size cap and a connection cap on REST, the
  same size cap on gRPC messages.
* ``kill -USR1 <pid>`` prints every thread's stack.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import logging
import os
import re
import signal
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from datetime import UTC, datetime
from typing import Any

import orjson
from grpc import aio
from kserve import ModelServer, model_server
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_server import app
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from kserve.utils.utils import strtobool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fraudcore.http_limits import BodyLimit, limit_server
from fraudcore.settings import HttpLimits, Settings

log = logging.getLogger(__name__)


def parse_args(
    argv: Sequence[str] | None,
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    **defaults: Any,
) -> argparse.Namespace:
    """KServe's arguments (``--model_name``, ``--http_port``, ``--predictor_host``...), ``--access_log``
    and ``extra``."""
    parser = argparse.ArgumentParser(description=description, parents=[model_server.parser])
    parser.add_argument(
        "--access_log",
        default=False,
        type=lambda v: bool(strtobool(v)),
        help="log one line per HTTP request (uvicorn's access log)",
    )
    parser.add_argument(
        "--bind_host",
        default=None,
        help="the address both servers listen on (default FRAUD_SERVING__BIND_HOST, 127.0.0.1)",
    )
    parser.set_defaults(enable_latency_logging=False, **defaults)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


class SlotNotReady(ModelNotReady):
    """KServe's ModelNotReady with the ``reason`` that its gRPC interceptor reads (0.21's
    class lacks it, so the interceptor itself failed and the client saw UNKNOWN)."""

    def __init__(self, model_name: str) -> None:
        super().__init__(model_name)
        self.reason = self.error_msg


class GuardedDataPlane(DataPlane):
    """KServe's data plane, except that a request it cannot decode is a 400, never a 500, and
    a request for a model that is not ready is answered "not ready" (503, gRPC UNAVAILABLE):
    KServe would call the model's ``load()`` on the request's own path, blocking the event
    loop on a model download and answering 500 if the slot is empty."""

    async def get_model(self, name: str) -> Any:
        model = self.model_registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        if not await self.model_registry.is_model_ready(name):
            raise SlotNotReady(name)
        return model

    def decode(
        self, body: Any, headers: Any, protocol_version: str = "v1", model_name: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput:
            raise
        except Exception as exc:  # anything raised while decoding is about the request
            raise InvalidInput(f"malformed request: {type(exc).__name__}: {exc}") from None


class _ClientErrorsAsWarnings(logging.Filter):
    """A request's own fault (bad input, an unknown or unready model) is one warning line, not
    an ERROR with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, InvalidInput | ModelNotFound | ModelNotReady):
            record.msg, record.args = "refused: %s", (error,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def tune_gc() -> None:
    """Everything alive now moves to the permanent generation (never scanned again) and the
    young-generation threshold goes up: a request rarely triggers a collection, and never a
    ~100 ms full one over the start-up heap."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


def _drop_latency_log_middleware() -> None:
    """KServe's TimingMiddleware only feeds its latency log, and formats two log lines per
    request even when that log is off. Starlette builds the middleware stack on its first
    call (the lifespan startup), so the stack is rebuilt without it on the next one."""
    from timing_asgi import TimingMiddleware

    kept = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
    if len(kept) != len(app.user_middleware):
        app.user_middleware[:] = kept
        app.middleware_stack = None


V1_PREDICT = re.compile(r"/v1/models/([^/:]+):predict")


class V1PredictLane:
    """``POST /v1/models/<name>:predict`` handled as KServe's ``V1Endpoints.predict`` does it,
    as plain ASGI (see the module's docstring); anything else goes on to the app."""

    def __init__(self, app: ASGIApp, dataplane: DataPlane) -> None:
        self.app = app
        self.dataplane = dataplane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = V1_PREDICT.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            response = await self._predict(match.group(1), scope, receive)
        except Exception as exc:
            response = await self._handled(exc, scope, receive)
        await response(scope, receive, send)

    async def _predict(self, model_name: str, scope: Scope, receive: Receive) -> Response:
        from fastapi.responses import ORJSONResponse  # what KServe's endpoint answers with
        from kserve.errors import ModelNotReady

        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = await Request(scope, receive).body()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        event = decode_kafkasource_event(body, headers)
        if event is not None:
            request, attributes = event, {}
        else:
            request, attributes = self.dataplane.decode(body=body, headers=headers)
        result, response_headers = await self.dataplane.infer(
            model_name=model_name, request=request, headers=headers
        )
        if event is not None and isinstance(result, dict):
            result, encoded_headers = encode_binary_cloudevent(model_name, result)
        else:
            result, encoded_headers = self.dataplane.encode(
                model_name=model_name, response=result, headers=headers, req_attributes=attributes
            )
        response_headers.update(encoded_headers)
        response_headers.pop("content-length", None)
        if isinstance(result, bytes | str):
            return Response(content=result, headers=response_headers)
        return ORJSONResponse(content=result, headers=response_headers)

    @staticmethod
    async def _handled(exc: Exception, scope: Scope, receive: Receive) -> Response:
        """The answer KServe's exception handlers give (most specific class first)."""
        for cls in type(exc).__mro__:
            handler = app.exception_handlers.get(cls)
            if handler is not None:
                answer = await handler(Request(scope, receive), exc)
                assert isinstance(answer, Response)
                return answer
        raise exc


CLOUDEVENT_REQUIRED = ("ce-id", "ce-source", "ce-type")


def decode_kafkasource_event(body: bytes, headers: dict[str, str]) -> Any | None:
    """The JSON data of a binary-mode CloudEvent as KafkaSource sends it (spec version 1.0,
    the required attributes, ``content-type: application/json``, no other data content type),
    read without the CloudEvents SDK: the same value KServe's decoding gives, at a fraction of
    its cost. None for anything else (other modes, missing attributes, undecodable data), which
    then takes KServe's own decoding, errors and all. The model reads the event's attributes
    from the headers."""
    if (
        os.getenv("CE_MERGE", "false").lower() == "true"  # KServe's attribute merge: its own path
        or headers.get("ce-specversion") != "1.0"
        or headers.get("content-type") != "application/json"
        or "ce-datacontenttype" in headers
        or "ce-contenttype" in headers
        or not all(headers.get(name) for name in CLOUDEVENT_REQUIRED)
    ):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def encode_binary_cloudevent(model_name: str, response: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """KServe's binary-mode response event (``create_response_cloudevent``: its type and
    source, or ``CE_TYPE`` / ``CE_SOURCE``; a fresh id and time), encoded with orjson. With
    ``CE_MERGE`` on, KServe's own encoding runs instead (see ``V1PredictLane``)."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": os.getenv("CE_SOURCE", f"io.kserve.inference.{model_name}"),
        "ce-type": os.getenv("CE_TYPE", "io.kserve.inference.response"),
        "ce-time": datetime.now(UTC).isoformat(),
        "content-type": "application/json",
    }
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), headers


def _add_v1_predict_lane(dataplane: DataPlane) -> Callable[[], None]:
    def install() -> None:
        if not any(m.cls is V1PredictLane for m in app.user_middleware):
            app.user_middleware.insert(0, Middleware(V1PredictLane, dataplane=dataplane))
            app.middleware_stack = None  # rebuilt on the next call, as for the timing middleware

    return install


def _add_body_limit(max_body_bytes: int) -> Callable[[], None]:
    def install() -> None:
        if not any(m.cls is BodyLimit for m in app.user_middleware):
            # Outermost, ahead of the V1 lane: nothing reads a body over the limit.
            app.user_middleware.insert(0, Middleware(BodyLimit, max_body_bytes=max_body_bytes))
            app.middleware_stack = None

    return install


def grpc_interceptors(access_log: bool) -> tuple[Any, ...]:
    """KServe's gRPC interceptors; its logging one writes a line per call, so it runs only
    with the access log on."""
    if access_log:
        return (LoggingInterceptor(), ExceptionToStatusInterceptor())
    return (ExceptionToStatusInterceptor(),)


def _bind_servers(host: str, limits: HttpLimits, access_log: bool = False) -> None:
    """KServe 0.21 builds its REST server with ``host="0.0.0.0"`` and its gRPC server on
    ``[::]`` inside ``ModelServer.start``: the two classes it builds them from are replaced by
    ones that listen on ``host`` with the platform's limits."""

    class BoundRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            limit_server(self.config, host, limits)

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:  # KServe's, on ``host``
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=grpc_interceptors(access_log),
                options=[
                    ("grpc.max_send_message_length", limits.max_body_bytes),
                    ("grpc.max_receive_message_length", limits.max_body_bytes),
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server
            )
            self._server.add_insecure_port(
                f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            )
            log.info("gRPC server on %s:%d", host, self._port)
            await self._server.start()
            await self._server.wait_for_termination()

    setattr(model_server, "RESTServer", BoundRESTServer)  # noqa: B010 (module attribute)
    setattr(model_server, "GRPCServer", BoundGRPCServer)  # noqa: B010


async def _request_validation_error(_: Request, exc: Exception) -> Response:
    """A request body that fails FastAPI's validation: 422 naming each field and its problem.
    FastAPI's own answer echoes the offending values, and a NaN or Infinity among them (which
    its JSON decoder accepts) made encoding that answer fail with a 500."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    named = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in errors[:20]
    ]
    return JSONResponse(status_code=422, content={"error": "invalid request body", "detail": named})


def _freeze_after_startup() -> None:
    tune_gc()
    log.info("gc frozen: %d objects in the permanent generation", gc.get_freeze_count())


def use_event_loop(choice: str) -> str:
    """Install uvloop's policy for ``auto`` (when installed) and ``uvloop``; return the loop used."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--event-loop uvloop: uvloop is not installed") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe asks for the current loop first
    return "uvloop"


def model_server_for(args: argparse.Namespace, settings: Settings) -> ModelServer:
    """A KServe ModelServer configured from the command line, with the changes above; a
    transformer (``--predictor_host``) gets its predictor connection from it too."""
    predictor = (
        PredictorConfig(
            predictor_host=args.predictor_host,
            predictor_protocol=args.predictor_protocol,
            predictor_use_ssl=args.predictor_use_ssl,
            predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
            predictor_request_retries=args.predictor_request_retries,
            predictor_health_check=args.enable_predictor_health_check,
        )
        if args.predictor_host
        else None
    )
    log.info("event loop: %s", use_event_loop(args.event_loop))
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        predictor_config=predictor,
    )
    # After ModelServer(), which configures KServe's and uvicorn's loggers.
    server.dataplane = GuardedDataPlane(model_registry=server.registered_models)
    logging.getLogger("kserve").addFilter(_ClientErrorsAsWarnings())
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if args.access_log else logging.WARNING)
    if not args.enable_latency_logging:
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per predictor call otherwise
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _bind_servers(args.bind_host or settings.serving.bind_host, settings.http, args.access_log)
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, _request_validation_error)
    if not args.enable_latency_logging:
        app.router.on_startup.append(_drop_latency_log_middleware)
    app.router.on_startup.append(_add_v1_predict_lane(server.dataplane))
    app.router.on_startup.append(_add_body_limit(settings.http.max_body_bytes))
    app.router.on_startup.append(_freeze_after_startup)  # again, once routes and server exist
    tune_gc()
    return server
