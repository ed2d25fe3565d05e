"""The model monitor: decisions joined with delayed labels, and drift, as Prometheus metrics.

Two readers of the decisions, the champion's (``fraud-scores``) and a shadow challenger's
(``fraud-scores-shadow``), whose metrics come out beside the champion's under its version:

* the **tail** reads the newest decisions (and every fraud label): its latest transaction
  event time is the monitor's clock; each version's latest ``drift_window`` decisions give
  the PSI of every input and of the score against the model's metadata; the labels go to
  Redis. It keeps no position: on a restart it reads the last window again.
* the **outcome reader** (consumer group ``group``) holds each decision back until the clock
  has passed its transaction's time plus the label delay and margin, and the labels are read
  that far (the tail has caught up with the label topic, or read a label reported later:
  labels go out in report order, before the later transactions), then counts it with
  its label (``store.OutcomeStore``: counts and offsets in one Redis transaction, so a
  restart resumes exactly where the counts stop). Kafka is the buffer: partitions are
  paused while enough decisions wait.

The metrics are recomputed every few seconds from Redis over the last ``window_days`` event
days, per model version.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import orjson
import redis
from confluent_kafka import TopicPartition
from minio.error import S3Error

from fraud_monitor import metrics as M
from fraud_monitor.drift import DriftWindow, Reference
from fraud_monitor.outcomes import Outcome, WindowMetrics
from fraud_monitor.store import OutcomeStore
from fraudcore.events import EventKind, label_is_fraud, parse_timestamp, validate
from fraudcore.features import DAY_US
from fraudcore.health import LIVENESS
from fraudcore.kafka import (
    RELAXED_FETCH,
    DeadLetters,
    Record,
    consume_ready,
    librdkafka_consumer,
    partition_reader,
)
from fraudcore.settings import Settings
from fraudcore.storage import s3_client

log = logging.getLogger(__name__)

MAX_WAITING = 200_000  # decisions held in memory before the outcome reader pauses
PUBLISH_EVERY_S = 2.0
LABEL_CHECK_EVERY_S = 2.0  # how often the tail's label position is checked against the broker
REFERENCE_RETRY_S = 30.0


def _us(timestamp: str) -> int:
    return int(parse_timestamp(timestamp).timestamp() * 1_000_000)


@dataclass
class Waiting:
    """A decision read but not yet counted."""

    offset: int
    t_us: int
    event: dict[str, Any]


@dataclass
class ModelMonitor:
    settings: Settings
    group: str = "model-monitor"
    store: OutcomeStore = field(init=False)
    clock_us: int = 0  # the latest transaction event time decided
    labels_through_us: int = 0  # every label reported up to this event time has been read
    counted: int = 0
    labels_read: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.delay_us = s.features.label_delay_days * DAY_US + int(s.monitor.label_margin_hours * 3_600e6)
        client = redis.Redis(**s.redis.client_kwargs())
        self.store = OutcomeStore(client, f"{s.monitor.namespace}:{self.group}")
        self.waiting: dict[tuple[str, int], deque[Waiting]] = {}  # by (topic, partition)
        self.paused: set[tuple[str, int]] = set()
        self.decision_topics = [self.settings.topics.scores, self.settings.topics.shadow_scores]
        self.drift: dict[str, DriftWindow] = {}
        self.references: dict[str, Reference | None] = {}
        self._reference_tried: dict[str, float] = {}
        self._published = 0.0
        self._label_clock_us = 0  # the latest report time among the labels read
        self._labels_checked = 0.0
        self._days_kept_from = -(2**62)  # the store holds no day before this
        self.dead_letters = DeadLetters(s, "model-monitor")

    def _quarantine(self, message: Any, reason: str) -> None:
        """An unreadable record goes to the dead-letter topic with the reason, durably
        (before any offset past it is stored), and is counted as nothing."""
        self.dead_letters.send(Record.of(message), reason)
        self.dead_letters.flush()

    def _checked(self, message: Any, kind: EventKind) -> tuple[dict[str, Any] | None, str]:
        """The record's event if it keeps the contract (``fraudcore.events``), else None and why."""
        checked = validate(kind, message.value() or b"", self.settings.max_event_bytes)
        return checked.event, checked.reason

    # ------------------------------------------------------------------ readers
    def _outcome_reader(self) -> confluent_kafka.Consumer:
        stored = self.store.offsets()
        start = (
            confluent_kafka.OFFSET_END
            if self.settings.monitor.initial_offset == "latest"
            else confluent_kafka.OFFSET_BEGINNING
        )

        def assign(client: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                tp.offset = stored.get(f"{tp.topic}:{tp.partition}", start)
            client.assign(partitions)

        def revoke(_client: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
            for tp in partitions:  # what waited is read again by the next owner, from the store's offset
                self.waiting.pop((tp.topic, tp.partition), None)
                self.paused.discard((tp.topic, tp.partition))

        return librdkafka_consumer(
            self.settings,
            self.group,
            [t.name for t in self.decision_topics],
            on_revoke=revoke,
            on_assign=assign,
            **RELAXED_FETCH,
        )

    def _tail(self) -> confluent_kafka.Consumer:
        """Assigned, not subscribed: the last ``drift_window`` decisions of each partition and
        every label from the last stored label position."""
        topics = self.settings.topics
        # Its own group id (under the monitor's prefix, which its Kafka ACLs allow); never commits.
        client = partition_reader(self.settings, f"{self.group}-tail-{uuid.uuid4().hex[:8]}", **RELAXED_FETCH)
        stored = self.store.offsets()
        assignment = []
        per_partition = self.settings.monitor.drift_window
        for spec in self.decision_topics:
            for p in range(spec.partitions):
                low, high = client.get_watermark_offsets(TopicPartition(spec.name, p), timeout=10)
                assignment.append(TopicPartition(spec.name, p, max(low, high - per_partition)))
        for p in range(topics.labels.partitions):
            offset = stored.get(f"{topics.labels.name}:{p}", confluent_kafka.OFFSET_BEGINNING)
            assignment.append(TopicPartition(topics.labels.name, p, offset))
        client.assign(assignment)
        return client

    # ------------------------------------------------------------------ tail
    def _on_tail(self, messages: list[Any]) -> None:
        labels: dict[str, int] = {}
        label_offsets: dict[str, int] = {}
        for m in messages:
            if m.error():
                continue
            is_label = m.topic() == self.settings.topics.labels.name
            event, reason = self._checked(m, EventKind.FRAUD_LABEL if is_label else EventKind.DECISION)
            if event is None:
                if is_label:
                    self._quarantine(m, reason)
                continue  # a bad decision: the outcome reader dead-letters it (once)
            if is_label:
                # A fraud verdict counts; an analyst's "legitimate" adds nothing, as for the
                # terminal features (fraudcore.features: counted frauds only grow).
                if label_is_fraud(event):
                    labels[event["transaction_id"]] = _us(event["transaction_timestamp"])
                self._label_clock_us = max(self._label_clock_us, _us(event["reported_at"]))
                label_offsets[f"{m.topic()}:{m.partition()}"] = m.offset() + 1
                continue
            t_us = _us(event["transaction_timestamp"])
            self.clock_us = max(self.clock_us, t_us)
            window = self.drift.setdefault(
                event["model_version"], DriftWindow(self.settings.monitor.drift_window)
            )
            window.add(event.get("features"), float(event["score"]))
        if labels:
            self.store.add_frauds(labels)
            self.labels_read += len(labels)
            M.LABELS.inc(len(labels))
        if label_offsets:
            self.store.apply([], label_offsets)  # after the labels: at worst a label is added again

    def _labels_read_through(self, tail: confluent_kafka.Consumer) -> int:
        """Event time up to which every label is in: the clock when the tail has read every
        label partition to its end (checked after the clock was read: a label reported
        before a decided transaction was produced before it), else the latest report read."""
        labels = self.settings.topics.labels.name
        for tp in tail.assignment():
            if tp.topic != labels:
                continue
            low, high = tail.get_watermark_offsets(tp, timeout=5, cached=False)
            position = tail.position([tp])[0].offset
            if high > low and position < high:
                return max(self.labels_through_us, self._label_clock_us)
        return max(self.labels_through_us, self.clock_us)

    # ------------------------------------------------------------------ outcomes
    def _on_decisions(self, client: confluent_kafka.Consumer, messages: list[Any]) -> None:
        for m in messages:
            if m.error():
                continue
            event, reason = self._checked(m, EventKind.DECISION)
            if event is None:
                self._quarantine(m, reason)
                waiting = Waiting(m.offset(), 0, {})  # counted as nothing, but its offset passes
            else:
                waiting = Waiting(m.offset(), _us(event["transaction_timestamp"]), event)
            self.waiting.setdefault((m.topic(), m.partition()), deque()).append(waiting)
        self._count_due()
        self._pace(client)

    def _count_due(self) -> None:
        due: list[Waiting] = []
        offsets: dict[str, int] = {}
        known = min(self.clock_us, self.labels_through_us)
        for (topic, partition), queue in self.waiting.items():
            while queue and queue[0].t_us + self.delay_us <= known:
                w = queue.popleft()
                offsets[f"{topic}:{partition}"] = w.offset + 1
                if w.event:
                    due.append(w)
        if not offsets:
            return
        frauds = self.store.frauds_among([w.event["transaction_id"] for w in due])
        outcomes = [
            Outcome(
                version=str(w.event["model_version"]),
                t_us=w.t_us,
                card_id=str(w.event["card_id"]),
                score=float(w.event["score"]),
                alerted=w.event["decision"] != "approve",
                fraud=fraud,
            )
            for w, fraud in zip(due, frauds, strict=True)
        ]
        self.store.apply(outcomes, offsets)
        self.counted += len(outcomes)
        for o in outcomes:
            M.OUTCOMES.labels(o.version, str(o.fraud).lower()).inc()

    def _pace(self, client: confluent_kafka.Consumer) -> None:
        """Pause a partition while enough of its decisions wait; resume when they thin out."""
        limit = MAX_WAITING // max(1, sum(t.partitions for t in self.decision_topics))
        for key, queue in self.waiting.items():
            tp = TopicPartition(*key)
            if len(queue) > limit and key not in self.paused:
                client.pause([tp])
                self.paused.add(key)
            elif len(queue) < limit // 2 and key in self.paused:
                client.resume([tp])
                self.paused.discard(key)

    # ------------------------------------------------------------------ metrics
    def _reference(self, version: str) -> Reference | None:
        if self.references.get(version) is not None:
            return self.references[version]
        if time.monotonic() - self._reference_tried.get(version, -REFERENCE_RETRY_S) < REFERENCE_RETRY_S:
            return None
        self._reference_tried[version] = time.monotonic()
        bucket, name = self.settings.s3.models_bucket, self.settings.serving.model_name
        try:
            response = s3_client(self.settings).get_object(bucket, f"{name}/{version}/metadata.json")
            try:
                self.references[version] = Reference.from_metadata(orjson.loads(response.read()))
            finally:
                response.close()
                response.release_conn()
        except (S3Error, ValueError, OSError) as exc:
            log.warning("no reference distributions for model %s yet: %s", version, exc)
            self.references[version] = None
        return self.references[version]

    def publish(self, client: confluent_kafka.Consumer) -> None:
        M.EVENT_TIME.set(self.clock_us / 1e6)
        window = self.settings.monitor.window_days
        # The window ends where truth is known: the clock less the label delay and margin.
        last_day = (self.clock_us - self.delay_us) // DAY_US
        labelled = 0
        for version in self.store.versions():
            days = self.store.days(version, last_day - window + 1, last_day)
            m = WindowMetrics.of(days.values())
            labelled += m.decisions
            for gauge, value in (
                (M.LIVE_PRECISION, m.precision),
                (M.LIVE_RECALL, m.recall),
                (M.LIVE_ALERT_RATE, m.alert_rate),
                (M.LIVE_AVERAGE_PRECISION, m.average_precision),
                (M.LIVE_CARD_PRECISION, m.card_precision_at_100),
                (M.LIVE_LABELLED, float(m.decisions)),
            ):
                gauge.labels(version).set(value)
        backlog = sum(len(q) for q in self.waiting.values()) + self._unread(client)
        M.LABEL_BACKLOG.set(backlog)
        M.LABEL_BACKLOG_SHARE.set(backlog / (backlog + labelled) if backlog + labelled else 0.0)
        for version, drift in self.drift.items():
            reference = self._reference(version)
            if reference is None:
                continue
            for name, value in drift.psi(reference).items():
                if name == "score":
                    M.SCORE_PSI.labels(version).set(value)
                else:
                    M.FEATURE_PSI.labels(version, name).set(value)
        self.store.forget_labels_before(self.clock_us - (window * DAY_US + 2 * self.delay_us))
        kept_from = last_day - 2 * window + 1  # a window's margin past the one read
        if kept_from > self._days_kept_from:  # once per new day, not per publish
            self.store.forget_days_before(kept_from)
            self._days_kept_from = kept_from

    def _unread(self, client: confluent_kafka.Consumer, skip: set[tuple[str, int]] | None = None) -> int:
        """Decisions on the broker the outcome reader has not fetched yet (except on ``skip``)."""
        total = 0
        for tp in client.assignment():
            if skip and (tp.topic, tp.partition) in skip:
                continue
            _low, high = client.get_watermark_offsets(tp, cached=True) or (0, 0)
            position = client.position([tp])[0].offset
            if high >= 0 and position >= 0:
                total += max(0, high - position)
        return total

    # ------------------------------------------------------------------ skew
    def _skew_loop(self, stop: threading.Event) -> None:
        """The skew check every ``skew_interval_s``, each in a fresh child process: it loads
        weeks of the archive into pandas, and memory freed in this long-running process
        would stay with it (RSS grows by the check's peak). The child runs at the lowest CPU
        priority: an audit takes what the scoring path leaves, never its latency."""
        from fraud_monitor.skew import check

        interval = self.settings.monitor.skew_interval_s
        spawn = multiprocessing.get_context("spawn")
        while not stop.wait(interval):
            try:
                with ProcessPoolExecutor(1, mp_context=spawn, initializer=os.nice, initargs=(19,)) as pool:
                    report = pool.submit(check, self.settings, self.settings.monitor.skew_sample).result()
            except Exception:
                M.SKEW_CHECKS.labels("failed").inc()
                log.exception("the skew check failed; trying again in %.0f s", interval)
                continue
            M.SKEW_CHECKS.labels("done").inc()
            if report.checked:
                M.SKEW_RATE.set(report.skew_rate)
                M.SKEW_CHECKED.set(report.checked)
                M.TERMINAL_AT_WATERMARK.set(report.terminal_at_watermark)
                for name, count in report.mismatches.items():
                    M.SKEW_MISMATCHES.labels(name).set(count)
            log.info("skew check: %s", report.to_dict())

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event, *, on_idle: Callable[[], None] | None = None) -> None:
        tail, reader = self._tail(), self._outcome_reader()
        if self.settings.monitor.skew_interval_s > 0:
            threading.Thread(target=self._skew_loop, args=(stop,), name="skew-check", daemon=True).start()
        progress = LIVENESS.watch(self.group)  # /healthz: the readers must advance while records wait
        try:
            while not stop.is_set():
                tail_read = consume_ready(tail, 5_000, 0.05)
                self._on_tail(tail_read)
                if time.monotonic() - self._labels_checked >= LABEL_CHECK_EVERY_S:
                    self.labels_through_us = self._labels_read_through(tail)
                    self._labels_checked = time.monotonic()
                decisions_read = consume_ready(reader, 5_000, 0.05)
                self._on_decisions(reader, decisions_read)
                if tail_read or decisions_read:
                    progress.advanced()
                if time.monotonic() - self._published >= PUBLISH_EVERY_S:
                    self.publish(reader)
                    # Paused partitions wait on purpose (enough decisions held): not a stall.
                    progress.measured_lag(self._unread(reader, skip=self.paused))
                    self._published = time.monotonic()
                    if on_idle:
                        on_idle()
        finally:
            LIVENESS.forget(progress)
            tail.close()
            reader.close()
            self.dead_letters.close()
            log.info("stopped at event time %s", datetime.fromtimestamp(self.clock_us / 1e6, UTC))
