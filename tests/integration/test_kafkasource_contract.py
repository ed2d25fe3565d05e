"""Both builds of the local KafkaSource stand-in (Go, the default, and Python) against the real
broker and a real HTTP sink, held to the same contract: one binary-mode CloudEvent per record,
each key's records in order, retries on 5xx, a 4xx answer dead-lettered at once with the
sink's reason, offsets committed to the end, and the same count line at exit."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from fraud_app.eventing import DEFAULT_MANIFEST, go_build
from fraudcore.kafka import group_lag, producer
from fraudcore.settings import Settings
from tests.helpers import env_for, isolated, read_topic

KEYS = 12
PER_KEY = 25
BAD = {(3, 7), (8, 0), (11, 24)}  # (key, seq): the sink answers 400
FLAKY = {(0, 5), (5, 12)}  # answered 503 once, then 200


class Sink(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], dict[str, Any]]]
    failed_once: set[tuple[int, int]]
    lock: threading.Lock

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        which = (body["key"], body["seq"])
        with self.lock:
            if which in FLAKY and which not in self.failed_once:
                self.failed_once.add(which)
                status, answer = 503, b"busy"
            elif which in BAD:
                status, answer = 400, b'{"error": "amount: must be > 0"}'
            else:
                status, answer = 200, b"{}"
                self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("engine", ["go", "python"])
def test_both_builds_keep_the_kafkasource_contract(
    stack: Settings, unique: str, engine: str, tmp_path: Path
) -> None:
    if engine == "go" and go_build() is None:
        pytest.fail("the Go build is missing: `make setup` builds it")
    settings = isolated(stack, f"{engine[:2]}{unique}")
    topic = settings.topics.transactions.name
    documents = list(yaml.safe_load_all(DEFAULT_MANIFEST.read_text()))
    for doc in documents:
        if doc and doc.get("kind") == "KafkaSource":
            doc["spec"]["topics"] = [topic]
            doc["spec"]["delivery"] = {"retry": 2, "backoffPolicy": "exponential", "backoffDelay": "PT0.05S"}
    manifest = tmp_path / "eventing.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))

    Sink.received, Sink.failed_once, Sink.lock = [], set(), threading.Lock()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = f"http://127.0.0.1:{server.server_port}/v1/models/fraud:predict"

    prod = producer(settings)
    for seq in range(PER_KEY):  # interleaved keys, each key's records in seq order
        for key in range(KEYS):
            value = orjson.dumps({"key": key, "seq": seq})
            prod.send(topic, key=f"card-{key:03d}".encode(), value=value)
    prod.flush()
    prod.close()

    group = f"kafkasource-{engine}-{unique}"
    env = {**env_for(settings), "FRAUD_METRICS_PORTS__DISPATCHER": str(_free_port())}
    cmd = [sys.executable, "-m", "fraud_app.cli", "dispatch", "--engine", engine, "--manifest", str(manifest)]
    cmd += ["--group", group, "--initial-offset", "earliest", "--idle-exit-s", "3", "--sink", sink]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    good = KEYS * PER_KEY - len(BAD)
    assert f"delivered {good}, dead-lettered {len(BAD)}" in done.stdout, done.stdout[-2000:]

    # Each good record arrived once (a 503 is retried, and its retry is the one kept), in its
    # key's order, as a binary-mode CloudEvent naming where it came from.
    seqs: dict[int, list[int]] = defaultdict(list)
    for headers, body in Sink.received:
        seqs[body["key"]].append(body["seq"])
        partition, offset = headers["ce-subject"].removeprefix("partition:").split("#")
        assert headers["ce-id"] == f"partition:{partition}/offset:{offset}"
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-type"] == "dev.knative.kafka.event"
        assert headers["ce-source"].endswith(f"/kafkasources/fraud-scoring#{topic}"), headers["ce-source"]
        assert headers["ce-key"] == f"card-{body['key']:03d}"
        assert headers["ce-time"].startswith("20"), headers["ce-time"]
        assert headers["content-type"] == "application/json"
    for key in range(KEYS):
        assert seqs[key] == [s for s in range(PER_KEY) if (key, s) not in BAD], f"key {key} out of order"
    assert Sink.failed_once == FLAKY

    # The 400s went to the dead-letter topic with the sink's answer as the reason.
    dead = read_topic(settings, settings.topics.dead_letter.name, len(BAD), timeout_s=30)
    assert len(dead) == len(BAD)
    dead_which = set()
    for record in dead:
        dlq: dict[str, bytes] = dict(record.headers)
        assert dlq["dlq-component"] == b"dispatcher"
        assert dlq["dlq-reason"] == b'sink: HTTP 400: {"error": "amount: must be > 0"}'
        assert dlq["dlq-source-topic"] == topic.encode()
        body = orjson.loads(record.value)
        assert record.key == f"card-{body['key']:03d}".encode()
        dead_which.add((body["key"], body["seq"]))
    assert dead_which == BAD

    # Everything finished was committed: nothing left for the group to read.
    assert sum(group_lag(settings, group, [topic]).values()) == 0
