"""kill -9 of the transformer or the predictor while the dispatcher (the KafkaSource stand-in)
delivers transactions: once the killed server is back on its ports, every transaction has a
decision on fraud-scores (after dedupe by transaction_id), none missing, none dead-lettered."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fraud_app.eventing import DEFAULT_MANIFEST, Delivery, Dispatcher, load_source
from fraud_transformer.scoring import decision_id
from fraudcore.kafka import consumer, producer
from fraudcore.settings import Settings
from tests.helpers import dumps, read_topic, transaction
from tests.serving_helpers import (
    ROOT,
    Server,
    make_model,
    predictor,
    serving_settings,
    transformer,
    upload_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERSION = "v-kill-1"
N_TRANSACTIONS = 600
PRODUCE_S = 6.0  # the transactions are spread over this long
KILL_AFTER_DECISIONS = 60  # the kill comes once this many decisions are out, while events still flow
DOWN_S = 1.0  # how long the killed server stays down before its restart
# A restart takes 10-20 s on a loaded 2-core machine (imports, Feast, model download). Linear
# backoff 0.2 s x (1 + 2 + ... + 24) = 60 s of retries per record rides that out.
DELIVERY = Delivery(retry=24, backoff_policy="linear", backoff_delay_s=0.2)
DEADLINE_S = 90.0  # after the restart, for every decision to be out


@dataclass
class Serving:
    settings: Settings
    predictor: Server
    transformer: Server
    tmp: Path

    def logs(self) -> str:
        return f"--- predictor log ---\n{self.predictor.tail()}\n--- transformer log ---\n{self.transformer.tail()}"


@pytest.fixture
def serving(stack: Settings, tmp_path: Path) -> Iterator[Serving]:
    """Predictor and transformer as real processes, on this test's own topics, model and Feast project."""
    from fraud_features.store import apply

    unique = uuid.uuid4().hex[:10]
    # transactions, fraud-scores and the dead-letter topic included
    settings = serving_settings(stack, unique, tmp_path, f"k{unique}")
    prefix = f"test-kill-{unique}"
    upload_model(settings, prefix, VERSION, make_model(VERSION, seed=3, baselines=[0.0] * 22))
    pred = predictor(settings, f"s3://models/{prefix}/champion", tmp_path / "predictor.log")
    trans: Server | None = None
    try:
        apply(settings)  # the transformer reads this project's (empty) online store: fallback features
        trans = transformer(settings, pred.url, tmp_path / "transformer.log")
        pred.wait_ready()
        trans.wait_ready()
        yield Serving(settings, pred, trans, tmp_path)
    finally:
        if trans is not None:
            trans.stop()
        pred.stop()


def sigkill_and_restart(server: Server, down_s: float = DOWN_S) -> tuple[float, float]:
    """kill -9 ``server``, wait ``down_s``, start the same command on the same ports; return
    the wall-clock times of the kill and of the restarted server's readiness."""
    assert server.proc is not None
    killed_at = time.time()
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    time.sleep(down_s)
    for port in (server.http_port, server.grpc_port):  # nothing left listening: the ports are free
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after kill -9"
    with server.log_path().open("ab") as log:
        log.write(b"\n--- kill -9, restarted on the same ports ---\n")
    server.start()
    server.wait_ready(timeout_s=60)
    return killed_at, time.time()


@dataclass
class ScoresReader:
    """Reads fraud-scores from the beginning in the background: every (decision_id, publish
    time) per transaction, and whatever was wrong with a record."""

    settings: Settings
    decisions: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))
    fallback: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))  # features_fallback
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        try:
            cons = consumer(self.settings, None, self.settings.topics.scores.name)
        except Exception as exc:  # reported by the test, not lost in this thread
            self.problems.append(f"reader: {exc!r}")
            return
        try:
            while not self.stop.is_set():
                for records in cons.poll(timeout_ms=100).values():
                    with self.lock:
                        for r in records:
                            self._add(r)
        except Exception as exc:
            self.problems.append(f"reader: {exc!r}")
        finally:
            cons.close()

    def _add(self, record: Any) -> None:
        try:
            decision = json.loads(record.value)
            tx, decision_id = decision["transaction_id"], decision["decision_id"]
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"unreadable decision {record.value[:200]!r}: {exc!r}")
            return
        if record.key is None or record.key.decode() != tx:
            self.problems.append(f"decision of {tx} keyed {record.key!r}")
        self.decisions[tx].append((decision_id, record.timestamp / 1000))
        self.fallback[tx].append(decision.get("features_fallback") is True)

    def snapshot(self) -> dict[str, list[tuple[str, float]]]:
        with self.lock:
            return {k: list(v) for k, v in self.decisions.items()}


def retries() -> float:
    """Delivery attempts the dispatchers of this process retried so far."""
    return REGISTRY.get_sample_value("dispatcher_deliveries_total", {"outcome": "retry"}) or 0.0


@dataclass
class Flow:
    """Transactions produced at a steady rate, the dispatcher (the KafkaSource stand-in)
    delivering them to the transformer, and fraud-scores read back, each on its own thread."""

    dispatcher: Dispatcher
    reader: ScoresReader
    stop_dispatcher: threading.Event
    threads: dict[str, threading.Thread]
    started: float

    @classmethod
    def start(
        cls,
        serving: Serving,
        txns: list[dict[str, Any]],
        rate: float,
        group: str,
        delivery: Delivery | None,
        **dispatcher_options: Any,
    ) -> Flow:
        """``delivery``: the policy to deliver with (None: the manifest's own)."""
        settings = serving.settings
        update: dict[str, Any] = {
            "topics": [settings.topics.transactions.name],
            "consumer_group": group,
            "initial_offset": "earliest",  # a fresh group: no record produced before it joins is skipped
        }
        if delivery is not None:
            update["delivery"] = delivery
        spec = load_source(ROOT / DEFAULT_MANIFEST).model_copy(update=update)
        dispatcher = Dispatcher(
            settings, spec, f"{serving.transformer.url}{spec.sink_path}", **dispatcher_options
        )
        stop_dispatcher = threading.Event()
        reader = ScoresReader(settings)

        def produce() -> None:
            prod = producer(settings)
            start = time.monotonic()
            for i, txn in enumerate(txns):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                prod.send(settings.topics.transactions.name, key=txn["card_id"].encode(), value=dumps(txn))
            prod.flush()
            prod.close()

        threads = {
            "reader": threading.Thread(target=reader.run, daemon=True),
            "dispatcher": threading.Thread(target=dispatcher.run, args=(stop_dispatcher,), daemon=True),
            "producer": threading.Thread(target=produce, daemon=True),
        }
        for thread in threads.values():
            thread.start()
        return cls(dispatcher, reader, stop_dispatcher, threads, time.monotonic())

    def wait_for_decisions(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while len(self.reader.snapshot()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.reader.snapshot())

    def decisions_once_all_in(self, wanted: set[str], timeout_s: float) -> dict[str, list[tuple[str, float]]]:
        deadline = time.monotonic() + timeout_s
        while wanted - self.reader.snapshot().keys() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.threads["producer"].join(timeout=10)
        return self.reader.snapshot()

    def stop(self) -> None:
        self.stop_dispatcher.set()
        self.reader.stop.set()
        self.threads["dispatcher"].join(timeout=60)
        self.threads["reader"].join(timeout=10)


@pytest.mark.parametrize("victim", ["transformer", "predictor"])
def test_sigkill_while_events_flow_loses_no_decision(serving: Serving, victim: str) -> None:
    settings = serving.settings
    retries_before = retries()
    run_id = uuid.uuid4().hex[:8]
    txns = [transaction(i, transaction_id=f"kill-{run_id}-{i:04d}") for i in range(N_TRANSACTIONS)]
    wanted = {t["transaction_id"] for t in txns}

    victim_server = serving.transformer if victim == "transformer" else serving.predictor
    flow = Flow.start(serving, txns, N_TRANSACTIONS / PRODUCE_S, f"kill-{run_id}", DELIVERY)
    dispatcher, reader = flow.dispatcher, flow.reader
    try:
        before_kill = flow.wait_for_decisions(KILL_AFTER_DECISIONS, timeout_s=30)
        assert before_kill >= KILL_AFTER_DECISIONS, (
            f"{before_kill} decisions in 30 s before the kill; reader: {reader.problems}\n{serving.logs()}"
        )
        assert flow.threads["producer"].is_alive(), (
            f"the producer had finished before the kill ({time.monotonic() - flow.started:.1f} s): "
            "events were not flowing"
        )
        killed_at, ready_at = sigkill_and_restart(victim_server)
        decisions = flow.decisions_once_all_in(wanted, DEADLINE_S)
    finally:
        flow.stop()

    missing = sorted(wanted - decisions.keys())
    context = (
        f"victim={victim} decisions before the kill={before_kill} down for {ready_at - killed_at:.1f} s "
        f"delivered={dispatcher.delivered} dead_lettered={dispatcher.dead_lettered} "
        f"retries={retries() - retries_before:.0f} decided={len(wanted & decisions.keys())}/{len(wanted)} "
        f"reader problems={reader.problems[:5]}\n{serving.logs()}"
    )
    assert not reader.problems, context
    assert not missing, f"{len(missing)} transactions without a decision, e.g. {missing[:5]}\n{context}"
    assert decisions.keys() == wanted, f"unexpected decisions: {sorted(decisions.keys() - wanted)[:5]}"
    # A redelivered transaction (killed after publishing, before answering) gets the same decision.
    inconsistent = {
        t: ids for t, ids in decisions.items() if {d for d, _ in ids} != {decision_id(t, VERSION)}
    }
    assert not inconsistent, f"decision_ids not those of the transaction: {list(inconsistent.items())[:3]}"
    assert dispatcher.dead_lettered == 0, context
    dead = read_topic(settings, settings.topics.dead_letter.name, expected=0, timeout_s=5)
    assert not dead, [(r.key, dict(r.headers)) for r in dead[:5]]
    # The kill really was mid-flow: decisions came out before it, and after the restart.
    first_seen = [min(ts for _, ts in ids) for ids in decisions.values()]
    assert sum(ts < killed_at for ts in first_seen) >= KILL_AFTER_DECISIONS, context
    assert sum(ts > ready_at for ts in first_seen) > 0, context
    assert retries() > retries_before, f"no delivery failed while the {victim} was down\n{context}"
    assert not flow.threads["dispatcher"].is_alive(), "the dispatcher did not stop"
    assert not flow.threads["producer"].is_alive()


def every_transaction_decided(
    flow: Flow,
    decisions: dict[str, list[tuple[str, float]]],
    wanted: set[str],
    retries_before: float,
    what: str,
    serving: Serving,
) -> str:
    """After an outage: every transaction decided, none dead-lettered, the reader content;
    prints the counts (duplicates: redeliveries, deduplicated by decision id) and returns
    them with the servers' logs, for the caller's own assertions."""
    dispatcher = flow.dispatcher
    duplicates = sum(len(ids) - 1 for t, ids in decisions.items() if t in wanted)
    missing = wanted - decisions.keys()
    context = (
        f"{what}; delivered={dispatcher.delivered} dead_lettered={dispatcher.dead_lettered} "
        f"retries={retries() - retries_before:.0f} decided={len(wanted & decisions.keys())}/{len(wanted)} "
        f"duplicates={duplicates}\n{serving.logs()}"
    )
    print(f"\n{context.splitlines()[0]}")
    assert not flow.reader.problems, context
    assert not missing, f"{len(missing)} transactions without a decision\n{context}"
    assert dispatcher.dead_lettered == 0, context
    return context


OUTAGE_RATE = 200  # transactions per second
OUTAGE_PRODUCE_S = 50.0
OUTAGE_DOWN_S = 30.0


def test_a_predictor_down_for_30_s_is_ridden_out_by_the_delivery_policy(serving: Serving) -> None:
    """The predictor killed and kept down for 30 s while 200 transactions/s arrive, delivered
    with the KafkaSource manifest's own delivery policy (63 s of retries, see
    kustomize/base/serving/eventing.yaml): every transaction gets its decision once the
    predictor is back, and nothing is dead-lettered."""
    retries_before = retries()
    run_id = uuid.uuid4().hex[:8]
    total = int(OUTAGE_RATE * OUTAGE_PRODUCE_S)
    txns = [transaction(i, transaction_id=f"down-{run_id}-{i:05d}") for i in range(total)]
    wanted = {t["transaction_id"] for t in txns}
    # The manifest's own delivery policy, unchanged.
    flow = Flow.start(serving, txns, OUTAGE_RATE, f"down-{run_id}", None)
    try:
        assert flow.wait_for_decisions(KILL_AFTER_DECISIONS, timeout_s=30) >= KILL_AFTER_DECISIONS, (
            serving.logs()
        )
        killed_at, ready_at = sigkill_and_restart(serving.predictor, down_s=OUTAGE_DOWN_S)
        decisions = flow.decisions_once_all_in(wanted, timeout_s=180)
    finally:
        flow.stop()

    context = every_transaction_decided(
        flow, decisions, wanted, retries_before, f"predictor down {ready_at - killed_at:.1f} s", serving
    )
    assert retries() > retries_before, context


PAUSED_S = 30.0
MAX_PENDING = 1_000  # the dispatcher's cap on unfinished records, small enough to be reached


def test_a_transformer_paused_for_30_s_holds_the_dispatcher_to_its_cap_and_loses_nothing(
    serving: Serving,
) -> None:
    """SIGSTOP the transformer for 30 s while 200 transactions/s arrive: the dispatcher
    pauses its partitions at ``max_pending`` unfinished records (so its memory stays bounded
    whatever the backlog), resumes once the transformer answers again, and every transaction
    gets its decision, none dead-lettered, with the manifest's own delivery policy."""
    import psutil

    transformer = serving.transformer
    assert transformer.proc is not None
    retries_before = retries()
    run_id = uuid.uuid4().hex[:8]
    total = int(OUTAGE_RATE * (PAUSED_S + 15))
    txns = [transaction(i, transaction_id=f"stop-{run_id}-{i:05d}") for i in range(total)]
    wanted = {t["transaction_id"] for t in txns}
    me = psutil.Process()
    flow = Flow.start(serving, txns, OUTAGE_RATE, f"stop-{run_id}", None, max_pending=MAX_PENDING)
    dispatcher = flow.dispatcher
    try:
        assert flow.wait_for_decisions(KILL_AFTER_DECISIONS, timeout_s=30) >= KILL_AFTER_DECISIONS, (
            serving.logs()
        )
        rss_before = me.memory_info().rss
        os.kill(transformer.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            time.sleep(PAUSED_S)
            rss_paused = me.memory_info().rss
            high_water_paused = dispatcher.pending_high_water
        finally:
            os.kill(transformer.proc.pid, signal.SIGCONT)
        resumed_after = time.monotonic() - stopped_at
        decisions = flow.decisions_once_all_in(wanted, timeout_s=180)
    finally:
        flow.stop()

    what = (
        f"transformer stopped {resumed_after:.1f} s; pending high water {dispatcher.pending_high_water} "
        f"(cap {MAX_PENDING}), pauses {dispatcher.pauses}; test process RSS "
        f"{rss_before / 2**20:.0f} -> {rss_paused / 2**20:.0f} MiB while stopped"
    )
    context = every_transaction_decided(flow, decisions, wanted, retries_before, what, serving)
    # The cap was reached and held: reading paused instead of piling records up. One
    # consume batch (500) may land on top of the cap before the pause takes effect.
    assert dispatcher.pauses >= 1, context
    assert MAX_PENDING <= high_water_paused <= MAX_PENDING + 500, context
    assert rss_paused - rss_before < 100 * 2**20, context
