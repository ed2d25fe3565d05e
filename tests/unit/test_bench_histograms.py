"""The benchmark's histogram quantiles, read from a real /metrics endpoint."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Histogram, start_http_server

from fraud_app.bench import histogram_buckets, histogram_quantiles, summarise


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
