"""The benchmark's histogram quantiles, read from a real /metrics endpoint."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Histogram, start_http_server

from fraud_app.bench import histogram_buckets, histogram_quantiles


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
