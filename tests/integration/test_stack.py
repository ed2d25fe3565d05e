"""The local stack's services, used for real: Kafka, Redis, MinIO, Prometheus."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest

from fraud_app import devstack
from fraudcore.kafka import admin, consumer, ensure_topics, producer
from fraudcore.settings import Settings, TopicSpec
from fraudcore.storage import s3_client


def test_kafka_keyed_messages_arrive_once_and_in_order_per_key(stack: Settings, unique: str) -> None:
    topic = f"test-order-{unique}"
    assert ensure_topics(stack, [TopicSpec(name=topic, partitions=6)]) == [topic]
    partitions = admin(stack).describe_topics([topic])[0]["partitions"]
    assert len(partitions) == 6

    keys = [f"card-{i}" for i in range(40)]
    sent = [(keys[i % len(keys)], i) for i in range(4000)]
    prod = producer(stack)
    futures = [prod.send(topic, key=k.encode(), value=str(i).encode()) for k, i in sent]
    prod.flush()
    assert all(f.get(timeout=10).offset >= 0 for f in futures)
    prod.close()

    cons = consumer(stack, f"test-{unique}", topic)
    received: dict[str, list[int]] = defaultdict(list)
    deadline = time.monotonic() + 60
    count = 0
    partitions_seen: set[int] = set()
    while count < len(sent) and time.monotonic() < deadline:
        for records in cons.poll(timeout_ms=500).values():
            for r in records:
                received[r.key.decode()].append(int(r.value))
                partitions_seen.add(r.partition)
                count += 1
    cons.commit()
    # Nothing more arrives: exactly once.
    assert not any(cons.poll(timeout_ms=1000).values())
    cons.close()

    expected: dict[str, list[int]] = defaultdict(list)
    for k, i in sent:
        expected[k].append(i)
    assert count == len(sent)
    assert received == expected  # same values, same per-key order
    assert len(partitions_seen) > 1, "keys should spread over partitions"


def test_platform_topics_exist_with_configured_partitions(stack: Settings) -> None:
    described = {t["name"]: len(t["partitions"]) for t in admin(stack).describe_topics()}
    for spec in stack.topics.all():
        assert described.get(spec.name) == spec.partitions, spec.name


def test_redis_round_trip(stack: Settings, unique: str) -> None:
    import redis

    client = redis.Redis(**stack.redis.client_kwargs())
    client.hset(f"test:{unique}", mapping={"count_1d": 3, "mean_1d": 12.5})
    assert client.hgetall(f"test:{unique}") == {b"count_1d": b"3", b"mean_1d": b"12.5"}
    client.delete(f"test:{unique}")


def test_minio_put_get_list(stack: Settings, unique: str) -> None:
    client = s3_client(stack)
    assert {b.name for b in client.list_buckets()} >= set(stack.s3.buckets())
    body = b"hello fraud platform"
    name = f"tests/{unique}/object.bin"
    client.put_object(stack.s3.raw_bucket, name, io.BytesIO(body), len(body))
    assert client.get_object(stack.s3.raw_bucket, name).read() == body
    listed = [o.object_name for o in client.list_objects(stack.s3.raw_bucket, prefix=f"tests/{unique}/")]
    assert listed == [name]
    client.remove_object(stack.s3.raw_bucket, name)


def test_prometheus_ready_and_scraping(stack: Settings) -> None:
    base = f"http://127.0.0.1:{stack.prometheus.port}"
    assert httpx.get(f"{base}/-/ready").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        targets = httpx.get(f"{base}/api/v1/targets").json()["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        if {"prometheus", "minio"} <= up:
            break
        time.sleep(1)
    assert {"prometheus", "minio"} <= up
    jobs = {t["labels"]["job"] for t in targets}
    assert {name for name, _ in stack.metrics_ports.items()} <= jobs  # every component registered


@pytest.mark.slow
def test_up_is_idempotent_and_survives_down_up(stack: Settings) -> None:
    before = {s.name: s.pid for s in devstack.status(stack)}
    cli = [sys.executable, "-m", "fraud_app.cli"]
    again = subprocess.run([*cli, "up"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 4
    assert {s.name: s.pid for s in devstack.status(stack)} == before

    down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    assert not any(s.healthy for s in devstack.status(stack))
    assert subprocess.run([*cli, "status"], capture_output=True, timeout=60).returncode == 1

    up = subprocess.run([*cli, "up"], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert all(s.healthy for s in devstack.status(stack))
    # Data survives a restart: the topics are still there with their partitions.
    test_platform_topics_exist_with_configured_partitions(stack)
