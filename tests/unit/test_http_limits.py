"""The request limits of every HTTP server (``fraudcore.http_limits``), on a real uvicorn
server over real sockets: a slow or silent client is cut off at the deadline while others are
served, a body over the cap is a 413 whether declared or chunked, and the server listens
where it is told."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from fraudcore.http_limits import BodyLimit, limit_server
from fraudcore.settings import HttpLimits

LIMITS = HttpLimits(max_body_bytes=2048, read_timeout_s=0.5, max_connections=50)


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the number of body bytes it read."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(BodyLimit(echo_length, LIMITS.max_body_bytes), port=port, log_level="warning")
    limit_server(config, "127.0.0.1", LIMITS)
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not served.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield "127.0.0.1", port
    served.should_exit = True
    thread.join(timeout=5)


def _closed_after(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the server closes ``sock`` (fails if it is still open after ``limit_s``)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    while True:
        data = sock.recv(4096)
        if not data:
            return time.monotonic() - started


def test_a_small_body_is_served(server: tuple[str, int]) -> None:
    host, port = server
    answer = httpx.post(f"http://{host}:{port}/", content=b"x" * 100)
    assert (answer.status_code, answer.text) == (200, "100")


def test_a_declared_body_over_the_cap_is_refused_unread(server: tuple[str, int]) -> None:
    host, port = server
    answer = httpx.post(f"http://{host}:{port}/", content=b"x" * (LIMITS.max_body_bytes + 1))
    assert answer.status_code == 413
    assert "request body" in answer.json()["error"]


def test_a_chunked_body_is_counted_as_it_arrives(server: tuple[str, int]) -> None:
    host, port = server

    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total // 512):
            yield b"y" * 512

    small = httpx.post(f"http://{host}:{port}/", content=chunks(1024))
    assert (small.status_code, small.text) == (200, "1024")
    large = httpx.post(f"http://{host}:{port}/", content=chunks(LIMITS.max_body_bytes * 4))
    assert large.status_code == 413


def test_a_slow_loris_is_cut_off_and_others_are_served_meanwhile(server: tuple[str, int]) -> None:
    host, port = server
    slow = socket.create_connection((host, port))
    started = time.monotonic()
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    # Trickling header bytes, for three times the deadline, does not extend it.
    closed_at = None
    while time.monotonic() - started < 3 * LIMITS.read_timeout_s:
        time.sleep(0.05)
        try:
            slow.sendall(b"X-Slow: 1\r\n")
        except OSError:  # closed by the server
            closed_at = time.monotonic() - started
            break
        assert httpx.get(f"http://{host}:{port}/").status_code == 200
    if closed_at is None:
        closed_at = time.monotonic() - started + _closed_after(slow, 3.0)
    slow.close()
    assert closed_at < 2 * LIMITS.read_timeout_s, closed_at


def test_a_body_that_stops_arriving_is_cut_off(server: tuple[str, int]) -> None:
    host, port = server
    with socket.create_connection((host, port)) as stalled:
        stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10)
        assert _closed_after(stalled, 3.0) < 3.0


def test_a_silent_connection_is_closed(server: tuple[str, int]) -> None:
    host, port = server
    with socket.create_connection((host, port)) as silent:
        waited = _closed_after(silent, 3.0)
    assert LIMITS.read_timeout_s * 0.8 < waited < 3.0


def test_the_server_listens_on_the_given_host_only(server: tuple[str, int]) -> None:
    _, port = server
    # Another loopback address would reach a 0.0.0.0 bind, but not one on 127.0.0.1.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=1):
        pass
