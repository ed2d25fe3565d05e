"""Prometheus helpers: metrics endpoints for components and the local scrape config."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import httpx
import yaml
from prometheus_client import Counter, Gauge, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

from fraudcore.health import LIVENESS, Liveness
from fraudcore.settings import Settings

# Shared by every Kafka consumer in the platform, so dashboards and alerts use one name.
CONSUMER_LAG = Gauge("consumer_lag_messages", "Messages behind the high watermark", ["group", "topic"])
DEAD_LETTERS = Counter(
    "dead_letter_messages", "Messages routed to the dead-letter topic", ["component", "reason"]
)


HEALTH_PATH = "/healthz"


def serve_metrics(settings: Settings, component: str) -> int:
    """Expose this process's metrics (and its liveness, ``/healthz``) on the component's
    registered port; return the port."""
    port = int(getattr(settings.metrics_ports, component))
    LIVENESS.stall_after_s = settings.consumer_stall_after_s
    start_metrics_server(port, settings.metrics_host)
    return port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape or probe."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung client never holds the process at exit


def metrics_app(liveness: Liveness = LIVENESS) -> WSGIApplication:
    """The WSGI app: ``/healthz`` answers 200 ``ok``, or 503 with one line per stuck consume
    loop; every other path is Prometheus's exposition."""
    exposition = make_wsgi_app()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return exposition(environ, start_response)
        problems = liveness.problems()
        body = ("\n".join(problems) if problems else "ok").encode() + b"\n"
        status = "503 Service Unavailable" if problems else "200 OK"
        start_response(
            status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def start_metrics_server(port: int, host: str, liveness: Liveness = LIVENESS) -> WSGIServer:
    """Serve ``metrics_app`` on a daemon thread (port 0: any free port, see ``server_port``)."""
    family, *_rest, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
    server: WSGIServer = make_server(
        str(address[0]), port, metrics_app(liveness), server_class, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return server


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 3.0) -> dict[str, Any]:
    """The metric families on a component's /metrics page, by name (empty if it does not answer)."""
    try:
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return {}
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_sum(families: dict[str, Any], sample: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 if none)."""
    return sum(
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


def prometheus_config(settings: Settings) -> str:
    """The local Prometheus configuration: itself, MinIO, and every registered component."""
    jobs = [
        {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{settings.prometheus.port}"]}],
        },
        {
            "job_name": "minio",
            "metrics_path": "/minio/v2/metrics/cluster",
            "static_configs": [{"targets": [settings.s3.endpoint]}],
        },
    ]
    jobs += [
        {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for name, port in settings.metrics_ports.items()
    ]
    config = {
        "global": {
            "scrape_interval": f"{settings.prometheus.scrape_interval_s}s",
            "evaluation_interval": f"{settings.prometheus.scrape_interval_s}s",
        },
        "rule_files": ["alerts.yml"],
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)
