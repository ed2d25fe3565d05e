"""Model changes are events: a background consumer of ``model-events``.

Every predictor process must see every ``champion-changed`` record, so each uses its own
consumer group id and assigns itself all partitions of the topic at the latest offset
(no group rebalance: it is positioned, and reports ready, as soon as it starts; nothing is
committed, a restart loads the champion folder anyway). A record for this model name makes
the predictor load that version beside the current one and swap (``FraudPredictor.update``).
Kafka being unreachable never stops serving: the consumer retries in the background.

A record no reader could use (not a JSON object, no ``type``, a change without ``uri``...)
or announcing a version that cannot be loaded is dead-lettered with the reason, and the
records after it are handled. Every predictor process reads every record, so each of them
dead-letters a bad one (a process's champion and shadow watchers send one between them): the
``dlq-source-*`` headers say which record it was.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from fraud_predictor.metrics import EVENTS_READY
from fraud_predictor.model import FraudPredictor, ModelLoadError
from fraud_predictor.storage import in_own_store
from fraudcore.kafka import DeadLetters, consumer
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

CHAMPION_CHANGED = "champion-changed"
SHADOW_CHANGED = "shadow-changed"  # a challenger moved into the shadow slot


KNOWN_TYPES = (CHAMPION_CHANGED, SHADOW_CHANGED)


def parse_event(
    key: bytes | None, value: bytes | None, model_name: str, event_type: str = CHAMPION_CHANGED
) -> tuple[str, str] | None:
    """``(uri, version)`` of an ``event_type`` record for ``model_name``; None for a record of
    another type or about another model. Raises ValueError ("<field>: <problem>") for a
    record no reader could use."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        raise ValueError("payload: not valid UTF-8 JSON") from None
    if not isinstance(event, dict):
        raise ValueError(f"payload: must be a JSON object, got {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("type: is required (a string)")
    if kind not in KNOWN_TYPES:
        return None  # a kind of event for other readers
    name = event.get("model") or (key.decode("utf-8", "replace") if key else "")
    if not isinstance(name, str) or not name:
        raise ValueError("model: is required (a string, or the record's key)")
    uri = event.get("uri")
    if not isinstance(uri, str) or not uri.strip("/"):
        raise ValueError("uri: is required (a string)")
    version = event.get("version")
    if version is not None and not isinstance(version, str | int):
        raise ValueError(f"version: must be a string, got {type(version).__name__}")
    if kind != event_type or name != model_name:
        return None
    return uri.rstrip("/"), str(version or "")


class ChampionWatcher(threading.Thread):
    """Swaps ``predictor``'s model on each ``event_type`` record for ``model_name`` (default:
    the predictor's own name; the shadow slot follows ``shadow-changed`` of the champion's)."""

    def __init__(
        self,
        settings: Settings,
        predictor: FraudPredictor,
        poll_timeout_ms: int = 500,
        *,
        event_type: str = CHAMPION_CHANGED,
        model_name: str | None = None,
    ) -> None:
        super().__init__(name="model-events", daemon=True)
        self.settings = settings
        self.predictor = predictor
        self.event_type = event_type
        self.model_name = model_name or predictor.name
        self.topic = settings.topics.model_events.name
        self.group = (
            f"fraud-predictor-{predictor.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.poll_timeout_ms = poll_timeout_ms
        self.stop_event = threading.Event()
        self.positioned = threading.Event()
        self.handled = 0
        # Made in run, where a broker that is away is retried.
        self.dead_letters: DeadLetters | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def _assign(self, client: KafkaConsumer) -> bool:
        partitions = client.partitions_for_topic(self.topic)
        if not partitions:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        client.assign(tps)
        client.seek_to_end(*tps)
        for tp in tps:
            client.position(tp)  # resolve now: events published from here on are seen
        return True

    def handle(self, records: list[Any]) -> None:
        for record in records:
            self.handled += 1
            try:
                parsed = parse_event(record.key, record.value, self.model_name, self.event_type)
                if parsed is None:
                    continue
                uri, version = parsed
                uri = in_own_store(uri, self.settings.serving.model_uri)
                log.info("%s: %s version %s at %s", self.event_type, self.predictor.name, version or "?", uri)
                self.predictor.update(uri, version, stop=self.stop_event)
            except ValueError as exc:
                # Every watcher of this process reads it: one dead letter, the champion's.
                if self.event_type == CHAMPION_CHANGED:
                    self._reject(record, str(exc))
            except ModelLoadError as exc:
                self._reject(record, f"uri: {exc}")
        if self.dead_letters is not None:
            try:
                self.dead_letters.flush()
            except Exception as exc:  # refused (no ACL?): said, and the events go on being read
                log.warning("model-events: a dead letter was not delivered: %s: %s", type(exc).__name__, exc)

    def _reject(self, record: Any, reason: str) -> None:
        assert self.dead_letters is not None  # made before the first poll
        log.warning("model-events[%s]@%s: dead-lettered (%s)", record.partition, record.offset, reason[:300])
        self.dead_letters.send(record, reason)

    def run(self) -> None:
        while not self.stop_event.is_set():
            client: KafkaConsumer | None = None
            try:
                client = consumer(
                    self.settings,
                    self.group,
                    auto_offset_reset="latest",
                    max_poll_records=100,
                    client_id=f"{self.settings.kafka.client_id}-predictor",
                )
                if self.dead_letters is None:
                    self.dead_letters = DeadLetters(self.settings, "predictor")
                while not self.stop_event.is_set() and not self._assign(client):
                    time.sleep(1.0)
                EVENTS_READY.labels(self.predictor.name).set(1)
                self.positioned.set()
                while not self.stop_event.is_set():
                    batches = client.poll(timeout_ms=self.poll_timeout_ms)
                    self.handle([r for rs in batches.values() for r in rs])
            except Exception:
                EVENTS_READY.labels(self.predictor.name).set(0)
                log.exception("model-events consumer failed; retrying")
                self.stop_event.wait(2.0)
            finally:
                if client is not None:
                    client.close()
        if self.dead_letters is not None:
            self.dead_letters.close()
