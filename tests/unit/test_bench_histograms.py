"""The benchmark: histogram quantiles read from a real /metrics endpoint, and direct requests
of several transactions each against a real HTTP server."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from fraud_app.bench import (
    _paced_requests,
    _request_size_cost,
    gate_hop_figures,
    histogram_buckets,
    histogram_quantiles,
    summarise,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_quantiles_interpolate_within_buckets_and_can_skip_what_came_before() -> None:
    registry = CollectorRegistry()
    latency = Histogram("hop_seconds", "test", buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        for _ in range(100):
            latency.observe(0.5)  # a slow burst first
        before = histogram_buckets([port], "hop_seconds")
        for _ in range(100):
            latency.observe(0.005)
        everything = histogram_quantiles([port], "hop_seconds")
        after = histogram_quantiles([port], "hop_seconds", since=before)
        missing = histogram_quantiles([port], "no_such_histogram")
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert 1.0 <= everything["p50"] <= 10.0  # half the observations are in (1, 10] ms
    assert 100.0 <= everything["p95"] <= 1000.0
    assert 1.0 <= after["p99"] <= 10.0  # the burst before the snapshot is left out
    assert missing == {}


def _step(rate: float, p95: float, p99: float, lost: int = 0) -> dict[str, object]:
    return {
        "rate": rate,
        "lost": lost,
        "errors": 0,
        "ms_p50": p95 / 2,
        "ms_p95": p95,
        "ms_p99": p99,
        "cpu_ms_per_event": {"broker": rate / 1000},
        "platform_cpu_ms_per_event": rate / 1000,
        "load_generator_cpu_ms_per_event": 0.1,
    }


def test_the_ladder_summary_names_the_fastest_passing_and_sustained_rates() -> None:
    steps = [_step(250, 8, 20), _step(500, 9, 24), _step(1000, 40, 300), _step(2000, 900, 4000, lost=5)]
    summary = summarise(steps)
    assert summary["e2e_max_events_per_s"] == 500
    assert (summary["e2e_ms_p95"], summary["e2e_ms_p99"]) == (9, 24)
    assert summary["e2e_sustained_events_per_s"] == 1000  # 2000/s lost events
    assert summary["cpu_reference_rate"] == 1000
    assert summary["platform_cpu_ms_per_event"] == 1.0
    assert summary["lost"] == 5


def test_no_passing_rate_reports_zero_with_the_lowest_rates_latency() -> None:
    summary = summarise([_step(250, 30, 60), _step(500, 80, 200)])
    assert summary["e2e_max_events_per_s"] == 0
    assert summary["e2e_ms_p95"] == 30


class PredictServer:
    """A real HTTP server in a thread that records every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _predict(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({"predictions": []})

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/predict", self._predict)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    def __enter__(self) -> PredictServer:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"


def test_paced_requests_carry_the_requested_number_of_transactions() -> None:
    with PredictServer() as server:
        latency = asyncio.run(_paced_requests(server.url, 20.0, 1.0, ["C1", "C2"], ["T1"], batch=5))
    bodies = server.bodies
    assert len(bodies) == 20
    instances = [txn for body in bodies for txn in body["instances"]]
    assert all(len(body["instances"]) == 5 for body in bodies)
    assert len({txn["transaction_id"] for txn in instances}) == 100
    assert latency["p50"] > 0
    assert latency["achieved"] > 0


def test_request_size_cost_sends_the_same_transactions_per_second_in_larger_requests() -> None:
    # This process serves the requests, so it stands in for the transformer being measured.
    pids = {"transformer-0": os.getpid(), "kafka": os.getpid(), "gone": 2**22 + 1}
    with PredictServer() as server:
        out = _request_size_cost(
            server.url, pids, ["C1"], ["T1"], sizes=(1, 4), events_per_s=40.0, seconds=1.0
        )
    sizes = [len(body["instances"]) for body in server.bodies]
    assert sizes.count(1) == 40
    assert sizes.count(4) == 10
    assert (out["events_per_s"], out["seconds"]) == (40.0, 1.0)
    for size in ("1", "4"):
        figures = out[size]
        assert figures["transformer_cpu_ms_per_event"] > 0
        assert figures["request_path_cpu_ms_per_event"] == figures["transformer_cpu_ms_per_event"]
        assert figures["broker_cpu_ms_per_event"] == figures["cpu_ms_per_event"]["kafka"]
        assert set(figures["cpu_ms_per_event"]) == {"transformer-0", "kafka"}  # a gone pid is left out
        assert figures["request_ms_p50"] > 0


def test_gate_hop_is_the_difference_between_the_two_steps() -> None:
    def step(platform: float, gate: float, broker: float, p50: float) -> dict[str, Any]:
        return {
            "rate": 300.0,
            "achieved_per_s": 299.9,
            "lost": 0,
            "errors": 0,
            "ms_p50": p50,
            "ms_p95": p50 * 3,
            "ms_p99": p50 * 5,
            "platform_cpu_ms_per_event": platform,
            "cpu_ms_per_event": {"quality-gate": gate, "kafka": broker, "transformer-0": 1.2},
        }

    out = gate_hop_figures(step(4.4, 0.19, 0.97, 14.2), step(3.9, 0.01, 0.71, 11.0))
    assert out["rate"] == 300.0
    assert out["hop_cpu_ms_per_event"] == 0.5
    assert out["hop_broker_cpu_ms_per_event"] == 0.26
    assert out["hop_ms_p50"] == 3.2
    assert out["through_gate"]["quality_gate_cpu_ms_per_event"] == 0.19
    assert out["straight_to_transactions"]["broker_cpu_ms_per_event"] == 0.71
    assert out["straight_to_transactions"]["ms_p99"] == 55.0
