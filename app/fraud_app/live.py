"""Watches the platform from the outside: decisions on `fraud-scores`, labels on `fraud-labels`.

Used by the demo's live view and the end-to-end benchmark. End-to-end latency is measured
where a consumer of decisions sees them: from the moment the transaction was produced (its
Kafka record time, which the decision carries as ``ingested_at``) to the moment its decision
is read from `fraud-scores`. Event times do not serve: the simulator's are simulated.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import confluent_kafka
import numpy as np
import orjson
from confluent_kafka import TopicPartition

from fraudcore.events import parse_timestamp
from fraudcore.kafka import consume_ready, librdkafka_consumer
from fraudcore.settings import Settings


@dataclass
class Snapshot:
    decisions: int
    rate_per_s: float
    latency_ms: dict[str, float]
    outcomes: dict[str, int]
    model_versions: dict[str, int]
    labelled_frauds: int
    caught: int
    fallbacks: int

    @property
    def alert_share(self) -> float:
        alerts = self.outcomes.get("review", 0) + self.outcomes.get("decline", 0)
        return alerts / self.decisions if self.decisions else float("nan")


@dataclass
class DecisionMonitor:
    settings: Settings
    window_s: float = 10.0
    seen: dict[str, str] = field(default_factory=dict)  # transaction_id -> decision
    latencies: list[float] = field(default_factory=list)
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (seen at, latency)
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    frauds: set[str] = field(default_factory=set)
    duplicates: int = 0
    fallbacks: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def start(self) -> DecisionMonitor:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _from_now(self, client: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        """Every partition from its end as of now, so nothing produced after ``start`` returns
        is missed (a lazily resolved "latest" could skip the first records)."""
        for tp in partitions:
            _low, tp.offset = client.get_watermark_offsets(tp, timeout=10)
        client.assign(partitions)
        self._ready.set()

    def _run(self) -> None:
        topics = self.settings.topics
        consumer = librdkafka_consumer(
            self.settings,
            f"monitor-{uuid.uuid4().hex[:8]}",
            [topics.scores.name, topics.labels.name],
            on_assign=self._from_now,
        )
        try:
            while not self._stop.is_set():
                messages = consume_ready(consumer, 5000, 0.05)
                now = time.time()
                with self._lock:
                    for m in messages:
                        if m.error():
                            continue
                        if m.topic() == topics.scores.name:
                            self._decision(m.value(), now)
                        else:
                            self.frauds.add(orjson.loads(m.value())["transaction_id"])
        finally:
            consumer.close()

    def _decision(self, value: bytes, now: float) -> None:
        event = orjson.loads(value)
        tx = event["transaction_id"]
        if tx in self.seen:
            self.duplicates += 1  # a redelivery: same decision id, counted once
            return
        self.seen[tx] = event["decision"]
        latency = (
            now - parse_timestamp(event.get("ingested_at") or event["transaction_timestamp"]).timestamp()
        )
        self.latencies.append(latency)
        self.recent.append((now, latency))
        self.outcomes[event["decision"]] += 1
        self.versions[event["model_version"]] += 1
        self.fallbacks += bool(event.get("features_fallback"))

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.time()
            while self.recent and self.recent[0][0] < now - self.window_s:
                self.recent.popleft()
            window = np.array([lat for _, lat in self.recent]) * 1000
            pct = {
                f"p{p}": float(np.percentile(window, p)) if len(window) else float("nan")
                for p in (50, 95, 99)
            }
            labelled = [t for t in self.frauds if t in self.seen]
            caught = sum(self.seen[t] != "approve" for t in labelled)
            return Snapshot(
                len(self.seen),
                len(window) / self.window_s,
                pct,
                dict(self.outcomes),
                dict(self.versions),
                len(labelled),
                caught,
                self.fallbacks,
            )

    def latency_percentiles(self, since_index: int = 0) -> dict[str, float]:
        with self._lock:
            ms = np.array(self.latencies[since_index:]) * 1000
        return {
            f"p{p}": round(float(np.percentile(ms, p)), 2) if len(ms) else float("nan") for p in (50, 95, 99)
        }
