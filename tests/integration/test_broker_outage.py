"""The Kafka broker killed with -9 for 40 s while `fraud seed` sends 200 transactions/s through
the quality gate, the archiver and the streaming feature job, each a real process, and the
scoring path (the dispatcher delivering `transactions` to the transformer, which publishes
to `fraud-scores`). The broker comes back on the same data directory; nobody restarts the
components. Then every transaction the producer had acknowledged on `transactions-raw` is on
`transactions` (the duplicates the at-least-once gate adds are counted and reported) and has
exactly one decision on `fraud-scores` once deduplicated by decision id, every record of
`transactions` is in the archive exactly once, and every transaction is in the feature log
(the feature job drops the re-forwarded copies, `PartitionState.fresh`) with the values an
offline recomputation gives. The gate works off its backlog one raw partition ahead of
another, so that last check fails if a transactions partition read to its end counted as
complete while the gate was still behind (see `fraud_features.watermarks`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka import TopicPartition

from fraud_app import devstack
from fraud_app.eventing import DEFAULT_MANIFEST, Dispatcher, load_source
from fraudcore import features as F
from fraudcore.kafka import broker_ready, partition_reader
from fraudcore.settings import Settings
from tests.helpers import start_processes, stop_processes
from tests.integration.test_object_store_outage import _env, _objects, _settings, _wait_for
from tests.serving_helpers import ROOT, Server, make_model, predictor, transformer, upload_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 200  # transactions per second
SEED_S = 90  # how long the producer sends
DOWN_S = 40
DRAIN_DEADLINE_S = 180
VERSION = "v-broker-1"


def _read_all(settings: Settings, topic: str) -> list[bytes]:
    """Every record value of ``topic``, from the first offset to the end it has now."""
    reader = partition_reader(settings, f"read-{uuid.uuid4().hex[:8]}")
    try:
        metadata = reader.list_topics(topic, timeout=30).topics[topic]
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in metadata.partitions
        }
        reader.assign([TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low])
        left = {p for p, (low, high) in ends.items() if high > low}
        values: list[bytes] = []
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for m in reader.consume(1000, timeout=1.0):
                value, offset, partition = m.value(), m.offset(), m.partition()
                if m.error() or value is None or offset is None or partition is None:
                    continue
                values.append(value)
                if offset + 1 >= ends[partition][1]:
                    left.discard(partition)
        assert not left, f"{topic}: partitions {sorted(left)} not read to their end"
        return values
    finally:
        reader.close()


class Scoring:
    """The predictor and the transformer as processes, and the dispatcher (the KafkaSource
    stand-in, with the manifest's own delivery policy) on a thread of this process."""

    def __init__(self, settings: Settings, unique: str, tmp_path: Path) -> None:
        prefix = f"test-broker-{unique}"
        upload_model(settings, prefix, VERSION, make_model(VERSION, seed=3, baselines=[0.0] * 22))
        self.servers: list[Server] = [
            predictor(settings, f"s3://models/{prefix}/champion", tmp_path / "predictor.log")
        ]
        self.servers.append(transformer(settings, self.servers[0].url, tmp_path / "transformer.log"))
        for server in self.servers:
            server.wait_ready()
        spec = load_source(ROOT / DEFAULT_MANIFEST).model_copy(
            update={
                "topics": [settings.topics.transactions.name],
                "consumer_group": f"disp-{unique}",
                "initial_offset": "earliest",
            }
        )
        self.dispatcher = Dispatcher(settings, spec, f"{self.servers[1].url}{spec.sink_path}")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.dispatcher.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.tail()}" for s in self.servers)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        for server in reversed(self.servers):
            server.stop()


def _frame(records: list[bytes], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([orjson.loads(value) for value in records], columns=columns)


def test_every_component_rides_out_a_broker_kill(
    stack: Settings, unique: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = _settings(stack, unique, tmp_path)
    fraud = [sys.executable, "-m", "fraud_app.cli"]
    archive_prefix = f"tests/{unique}"
    commands = {
        "quality-gate": [*fraud, "gate", "--group", f"gate-{unique}"],
        "archiver": [*fraud, "archive", "--group", f"arch-{unique}", "--prefix", archive_prefix],
        "feature-job": [*fraud, "features", "stream", "--group", f"fj-{unique}"],
        "producer": [
            *fraud,
            "seed",
            "--rate",
            str(RATE),
            "--duration",
            str(SEED_S),
            "--customers",
            "500",
            "--terminals",
            "1000",
            "--seed",
            "3",
        ],
    }
    env = {
        **_env(settings),
        "FRAUD_METRICS_PORTS__QUALITY_GATE": "0",
        "FRAUD_METRICS_PORTS__PRODUCER": "0",
        "FRAUD_FEATURES__GATE_GROUP": f"gate-{unique}",  # the feature job waits for this gate
    }
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    scoring = Scoring(settings, unique, tmp_path)  # before the transactions: it reads from the start
    procs = start_processes(commands, env, logs)

    def stop_all() -> None:
        stop_processes(procs)
        scoring.stop()

    request.addfinalizer(stop_all)  # whichever assertion fails first

    def tails() -> str:
        workers = "\n".join(f"--- {name} ---\n{path.read_text()[-3000:]}" for name, path in logs.items())
        return f"{workers}\n{scoring.logs()}"

    def decided() -> dict[str, set[str]]:
        """Decision ids per transaction on fraud-scores, and how many records carried them."""
        seen: dict[str, set[str]] = {}
        for value in _read_all(settings, settings.topics.scores.name):
            decision = orjson.loads(value)
            seen.setdefault(decision["transaction_id"], set()).add(decision["decision_id"])
        return seen

    kafka = devstack.Kafka(stack)
    archived = lambda: _objects(settings, settings.s3.raw_bucket, f"{archive_prefix}/transactions/")  # noqa: E731
    logged = lambda: _objects(settings, settings.s3.features_bucket, f"tests/{unique}/feature_log/")  # noqa: E731
    workers = [name for name in commands if name != "producer"]
    try:
        # The kill comes once the archive and the feature log are being written.
        assert _wait_for(lambda: len(archived()) > 0 and len(logged()) > 0, 120), tails()
        pid = kafka.pid()
        assert pid is not None, "the local broker is not running"
        os.killpg(pid, signal.SIGKILL)
        time.sleep(DOWN_S)
        dead = [name for name in commands if procs[name].poll() is not None]
        assert not dead, f"{dead} exited while the broker was down\n{tails()}"
    finally:
        kafka.start()  # the same data directory: the rest of the suite needs it too
    assert broker_ready(stack)
    assert procs["producer"].wait(timeout=SEED_S + 120) == 0, tails()

    try:
        sent = {orjson.loads(v)["transaction_id"] for v in _read_all(settings, settings.topics.raw.name)}
        assert len(sent) >= RATE * (SEED_S - DOWN_S) * 0.5, f"only {len(sent)} acknowledged\n{tails()}"
        assert _wait_for(lambda: sent <= set(archived()["transaction_id"]), DRAIN_DEADLINE_S), tails()
        assert _wait_for(lambda: sent <= set(logged()["transaction_id"]), DRAIN_DEADLINE_S), tails()
        assert _wait_for(lambda: sent <= decided().keys(), DRAIN_DEADLINE_S), tails()
        forwarded = _read_all(settings, settings.topics.transactions.name)
        labels = _read_all(settings, settings.topics.labels.name)
        decisions = _read_all(settings, settings.topics.scores.name)
        dead = [name for name in workers if procs[name].poll() is not None]
        assert not dead, f"{dead} exited after the broker came back\n{tails()}"
        assert scoring.thread.is_alive(), f"the dispatcher stopped\n{tails()}"
    finally:
        stop_all()

    # Exactly one decision per transaction once deduplicated by decision id: a redelivered
    # transaction (the gate's re-forwarded copies, a retried delivery) is decided again with
    # the same id, never differently; nothing was dead-lettered.
    by_transaction: dict[str, set[str]] = {}
    for value in decisions:
        decision = orjson.loads(value)
        by_transaction.setdefault(decision["transaction_id"], set()).add(decision["decision_id"])
    assert by_transaction.keys() == sent, "a decision for every transaction, and for nothing else"
    conflicting = {t: ids for t, ids in by_transaction.items() if len(ids) != 1}
    assert not conflicting, list(conflicting.items())[:3]
    assert scoring.dispatcher.dead_lettered == 0, "nothing dead-lettered"

    ids = [orjson.loads(v)["transaction_id"] for v in forwarded]
    duplicates = len(ids) - len(set(ids))
    print(
        f"\nbroker kill: {len(sent)} produced, {len(set(ids))} forwarded "
        f"({duplicates} duplicates before dedupe), {len(labels)} labels, {len(by_transaction)} decided "
        f"({len(decisions) - len(by_transaction)} duplicate decisions before dedupe, "
        f"{scoring.dispatcher.dead_lettered} dead-lettered)"
    )
    assert set(ids) == sent, "the gate forwards every accepted transaction, and nothing else"
    # The gate is at-least-once: records it had forwarded but not yet committed when the
    # broker died are forwarded again. The archive holds every record of `transactions`
    # exactly once (by partition and offset), so the same duplicates and no others; readers
    # of the archive drop them by transaction id (fraud_pipelines.data).
    archive = archived()
    assert not archive.duplicated(["kafka_partition", "kafka_offset"]).any(), "a record archived twice"
    assert len(archive) == len(ids), "every record of transactions archived"
    assert set(archive["transaction_id"]) == sent
    tx = _frame(forwarded, ["transaction_id", "card_id", "terminal_id", "amount", "timestamp"])
    tx = tx.drop_duplicates("transaction_id").assign(
        timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True)
    )
    lab = _frame(
        labels,
        ["transaction_id", "card_id", "terminal_id", "transaction_timestamp", "reported_at", "scenario"],
    )
    for column in ("transaction_timestamp", "reported_at"):
        lab[column] = pd.to_datetime(lab[column], utc=True)
    served = logged().drop_duplicates("transaction_id")  # a replay may log a row twice (see FeatureLog)
    offline = F.offline_features(tx.sort_values("timestamp", kind="stable"), lab)
    merged = served.merge(offline, on="transaction_id", suffixes=("_served", "_offline"))
    assert len(merged) == len(sent)
    differing = {
        name: int((~np.isclose(merged[f"{name}_served"], merged[f"{name}_offline"], rtol=0, atol=1e-6)).sum())
        for name in F.MODEL_FEATURES
    }
    print(f"features differing from the offline recomputation: { {k: v for k, v in differing.items() if v} }")
    assert not any(differing.values()), "served features equal the offline recomputation"
