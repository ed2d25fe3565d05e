"""Limits every HTTP server of the platform puts on its clients (the KServe servers and the
review console, all served by uvicorn).

* **Time to send a request.** A request's headers and body must arrive within
  ``read_timeout_s`` of its first byte (and a new connection must start one within that
  time); past it the connection is closed. uvicorn has no such deadline: its keep-alive
  timer stops at the first byte, so a client trickling a byte a second ("slow loris") would
  hold the connection, and its memory, for ever.
* **Size of a request.** A body over ``max_body_bytes`` is answered 413 before it is read
  (declared ``Content-Length``) or as soon as it passes the limit (chunked).
* **Connections.** At most ``max_connections`` at once (uvicorn's ``limit_concurrency``;
  more are answered 503), so a flood cannot take the process's memory or file descriptors.

Processing time is not limited here: a request that has arrived is the server's to answer.
"""

from __future__ import annotations

import asyncio
import json
import logging

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fraudcore.settings import HttpLimits

log = logging.getLogger(__name__)


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving each request (see above);
    ``read_timeout_s`` is set on the subclass ``deadline_protocol`` makes."""

    read_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.warning(
                "closing a connection from %s: no complete request within %.0f s",
                f"{self.client[0]}:{self.client[1]}" if self.client else "?",
                self.read_timeout_s,
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection must start a request, not sit open and silent

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()  # received: from here uvicorn's keep-alive timeout applies
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def deadline_protocol(read_timeout_s: float) -> type[DeadlineProtocol]:
    return type("DeadlineProtocol", (DeadlineProtocol,), {"read_timeout_s": read_timeout_s})


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body_bytes:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)  # uvicorn delivers no more than declared
            return
        # No length declared (chunked): read up to the limit, then hand the body on.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps({"error": f"request body: larger than {self.max_body_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def limit_server(config: uvicorn.Config, host: str, limits: HttpLimits) -> None:
    """Bind ``config`` to ``host`` with the connection limits above (before the server starts);
    the body limit is the app's ``BodyLimit`` middleware."""
    config.host = host
    config.limit_concurrency = limits.max_connections
    config.http = deadline_protocol(limits.read_timeout_s)
