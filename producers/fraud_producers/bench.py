"""`make bench-ingest`: producer throughput, rate accuracy, ack latency and archive throughput.

Prints one JSON object. Runs against the local stack on throw-away topics and an archive
prefix that are removed afterwards.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import numpy as np

from fraud_producers.archive import Archiver
from fraud_producers.encoding import to_event_bytes
from fraud_producers.producer import EventProducer, send_paced
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Simulator
from fraudcore.kafka import admin, ensure_topics
from fraudcore.settings import Settings, TopicSettings, TopicSpec, get_settings
from fraudcore.storage import s3_client


def _messages(n: int) -> list[tuple[bytes, bytes]]:
    frame = (
        Simulator(SimulatorConfig(seed=1, n_customers=2_000, n_terminals=4_000))
        .generate(datetime(2026, 1, 1, tzinfo=UTC), 30)
        .transactions
    )
    frame = frame.iloc[np.arange(n) % len(frame)]
    return list(zip((c.encode() for c in frame["card_id"]), to_event_bytes(frame), strict=True))


def _rate_error(
    settings: Settings, topic: str, messages: list[tuple[bytes, bytes]], rate: float, seconds: float
) -> tuple[float, EventProducer]:
    producer = EventProducer(settings, keep_latencies=True)
    stats = send_paced(producer, topic, iter(messages * 10), rate, duration_s=seconds)
    achieved = stats.sent / seconds
    producer.close()
    return abs(achieved - rate) / rate * 100, producer


def run(repeats: int = 3) -> dict[str, object]:
    base = get_settings()
    run_id = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        transactions=TopicSpec(name=f"bench-tx-{run_id}", partitions=6),
        labels=TopicSpec(name=f"bench-labels-{run_id}", partitions=6),
    )
    settings = base.model_copy(update={"topics": topics})
    ensure_topics(settings, [topics.transactions, topics.labels])
    topic = topics.transactions.name
    messages = _messages(100_000)
    results: dict[str, object] = {"run_id": run_id}
    try:
        rates = []
        for _ in range(repeats):
            producer = EventProducer(settings)
            t0 = time.perf_counter()
            send_paced(producer, topic, iter(messages), None)
            producer.close()
            rates.append(len(messages) / (time.perf_counter() - t0))
        results["producer_max_msgs_per_s"] = round(statistics.median(rates))
        results["producer_max_msgs_per_s_runs"] = [round(r) for r in rates]

        for target in (500, 5000):
            errors = [_rate_error(settings, topic, messages, target, 10.0)[0] for _ in range(repeats)]
            results[f"rate_error_pct_at_{target}"] = round(statistics.median(errors), 3)

        _, producer = _rate_error(settings, topic, messages, 1000, 15.0)
        lat = np.array(producer.stats.ack_latencies) * 1000
        for p in (50, 95, 99):
            results[f"ack_latency_ms_p{p}_at_1000"] = round(float(np.percentile(lat, p)), 3)

        # Archive throughput: everything in the topic so far, from the beginning.
        archiver = Archiver(
            settings,
            group=f"bench-arch-{run_id}",
            block_size=50_000,
            flush_interval_s=3600,
            prefix=f"bench/{run_id}",
        )
        t0 = time.perf_counter()
        archiver.run(threading.Event(), idle_exit_s=2.0)
        elapsed = time.perf_counter() - t0 - 2.0
        results["archive_msgs_per_s"] = round(archiver.written / elapsed)
        results["archived_records"] = archiver.written
    finally:
        admin(settings).delete_topics([topics.transactions.name, topics.labels.name])
        client = s3_client(settings)
        for obj in client.list_objects(settings.s3.raw_bucket, prefix=f"bench/{run_id}/", recursive=True):
            client.remove_object(settings.s3.raw_bucket, obj.object_name)
    return results


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
