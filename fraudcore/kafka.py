"""Kafka helpers every component uses: topics, producers and consumers with the project's defaults."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from fraudcore.settings import Settings, TopicSpec

log = logging.getLogger(__name__)


def admin(settings: Settings, timeout_s: float = 10.0) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )


def broker_ready(settings: Settings, timeout_s: float = 2.0) -> bool:
    try:
        client = admin(settings, timeout_s)
    except KafkaError:
        return False
    try:
        client.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        client.close()


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics (and grow partition counts); return the names created."""
    specs = specs or settings.topics.all()
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        new = [
            NewTopic(
                s.name,
                s.partitions,
                settings.kafka.replication_factor,
                topic_configs={"retention.ms": str(s.retention_ms)} if s.retention_ms else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                client.create_topics(new, timeout_ms=30_000)
        return [t.name for t in new]
    finally:
        client.close()


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A durable producer: acks=all, idempotent, retries, batching tuned for throughput."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "client_id": settings.kafka.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 2_147_483_647,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        "request_timeout_ms": 30_000,
        "delivery_timeout_ms": 120_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def consumer(settings: Settings, group_id: str | None, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that commits only when told: at-least-once by default."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "client_id": settings.kafka.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
    }
    config.update(overrides)
    return KafkaConsumer(*topics, **config)
