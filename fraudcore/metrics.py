"""Prometheus helpers: metrics endpoints for components and the local scrape config."""

from __future__ import annotations

import yaml
from prometheus_client import Counter, Gauge, start_http_server

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
