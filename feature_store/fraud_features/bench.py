"""`make bench-features`: streaming throughput and CPU per event, online read latency, backfill
time (one JSON object).

Runs against the local stack on throw-away topics, a throw-away Feast project and Redis
namespace, removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fraud_features.store import apply, feature_store
from fraud_features.stream import FeatureJob
from fraud_producers.encoding import label_events, labels, to_event_bytes
from fraud_producers.producer import EventProducer, send_paced
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Simulator
from fraudcore import features as F
from fraudcore.kafka import admin, ensure_topics
from fraudcore.settings import Settings, TopicSettings, TopicSpec, get_settings


def _isolated(run_id: str, root: Path) -> Settings:
    base = get_settings()
    topics = TopicSettings(
        transactions=TopicSpec(name=f"bench-ftx-{run_id}", partitions=6),
        labels=TopicSpec(name=f"bench-flabels-{run_id}", partitions=6),
        dead_letter=TopicSpec(name=f"bench-fdlq-{run_id}", partitions=1),
    )
    features = base.features.model_copy(
        update={
            "namespace": f"bench{run_id}",
            "project": f"bench{run_id}",
            "offline_root": str(root / "offline"),
            "registry": str(root / "registry.db"),
        }
    )
    return base.model_copy(update={"topics": topics, "features": features})


def stream_throughput(settings: Settings, days: int = 20) -> dict[str, float]:
    sim = Simulator(SimulatorConfig(seed=5, n_customers=5_000, n_terminals=10_000))
    batch = sim.generate(datetime(2026, 1, 1, tzinfo=UTC), days)
    chargebacks = labels(batch, delay=timedelta(days=7))
    producer = EventProducer(settings)
    for event in label_events(chargebacks.sort_values("reported_at")):
        producer.send(settings.topics.labels.name, event["card_id"].encode(), orjson.dumps(event))
    tx = batch.transactions
    send_paced(
        producer,
        settings.topics.transactions.name,
        zip((c.encode() for c in tx["card_id"]), to_event_bytes(tx), strict=True),
        None,
    )
    producer.close()
    job = FeatureJob(settings, group=f"bench-{settings.features.namespace}")
    redis0 = _redis_cpu_s(job.redis)
    t0, cpu0 = time.perf_counter(), time.process_time()
    idle = 2.0
    job.run(threading.Event(), idle_exit_s=idle)
    elapsed = time.perf_counter() - t0 - idle
    cpu = time.process_time() - cpu0  # every thread of this process: the job and its Kafka client
    # Redis's own CPU meanwhile (its Lua scripts: counters, online writes), whoever else used it.
    redis_cpu = _redis_cpu_s(job.redis) - redis0
    return {
        "stream_events_per_s": round(job.processed / elapsed),
        "stream_transactions": job.processed,
        "stream_cpu_ms_per_event": round(cpu * 1000 / max(1, job.processed), 4),
        "stream_redis_cpu_ms_per_event": round(redis_cpu * 1000 / max(1, job.processed), 4),
    }


def _redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def online_reads(settings: Settings, calls: int = 2_000) -> dict[str, float]:
    store = feature_store(settings)
    features = [f"card_features:{n}" for n in F.CARD_STATE] + [
        f"terminal_features:{n}" for n in F.TERMINAL_FEATURES
    ]
    rng = np.random.default_rng(0)
    latencies = []
    for i in range(calls):
        row = {"card_id": f"C{rng.integers(5_000):05d}", "terminal_id": f"T{rng.integers(10_000):05d}"}
        t0 = time.perf_counter()
        store.get_online_features(features=features, entity_rows=[row]).to_dict()
        if i >= 100:  # warm-up excluded
            latencies.append(time.perf_counter() - t0)
    ms = np.array(latencies) * 1000
    return {
        "online_read_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "online_read_ms_p99": round(float(np.percentile(ms, 99)), 3),
    }


def backfill(days: int = 183) -> dict[str, float]:
    sim = Simulator(SimulatorConfig(seed=0, card_testing_per_day=0, takeover_per_day=0))
    batch = sim.generate(datetime(2018, 4, 1, tzinfo=UTC), days)
    chargebacks = labels(batch, delay=timedelta(days=7))
    t0 = time.perf_counter()
    F.offline_features(batch.transactions, chargebacks)
    return {
        "backfill_seconds": round(time.perf_counter() - t0, 2),
        "backfill_transactions": len(batch.transactions),
    }


def run() -> dict[str, object]:
    run_id = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    settings = _isolated(run_id, root)
    ensure_topics(
        settings, [settings.topics.transactions, settings.topics.labels, settings.topics.dead_letter]
    )
    results: dict[str, object] = {"run_id": run_id}
    try:
        apply(settings)
        results.update(stream_throughput(settings))
        results.update(online_reads(settings))
        results.update(backfill())
    finally:
        admin(settings).delete_topics(
            [settings.topics.transactions.name, settings.topics.labels.name, settings.topics.dead_letter.name]
        )
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
