"""Prometheus helpers: metrics endpoints for components and the local scrape config."""

from __future__ import annotations

from typing import Any

import httpx
import yaml
from prometheus_client import Counter, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from fraudcore.settings import Settings

# Shared by every Kafka consumer in the platform, so dashboards and alerts use one name.
CONSUMER_LAG = Gauge("consumer_lag_messages", "Messages behind the high watermark", ["group", "topic"])
DEAD_LETTERS = Counter(
    "dead_letter_messages", "Messages routed to the dead-letter topic", ["component", "reason"]
)


def serve_metrics(settings: Settings, component: str) -> int:
    """Expose this process's metrics on the component's registered port; return the port."""
    port = int(getattr(settings.metrics_ports, component))
    start_http_server(port, addr=settings.metrics_host)
    return port


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
