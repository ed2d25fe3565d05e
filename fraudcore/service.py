"""The loop a Kafka-consuming component runs: poll a batch, handle it, commit, repeat.

Offsets are committed only after the handler returns (it flushes whatever it produced or
wrote first), so a crash replays the uncommitted batch: at-least-once, never a loss.
SIGTERM and SIGINT finish the current batch, commit, and exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from fraudcore.kafka import Record, consume_ready, record_lag, record_lag_librdkafka

log = logging.getLogger(__name__)

Records = list[Any]  # kafka ConsumerRecord objects, across partitions, in poll order
# What a handler asks to commit; None means "everything polled so far".
Commit = dict[TopicPartition, OffsetAndMetadata]


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %s: finishing the current batch", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    return stop


def librdkafka_loop(
    consumer: confluent_kafka.Consumer,
    group: str,
    handle: Callable[[list[Record]], None],
    *,
    stop: threading.Event,
    poll_timeout_s: float = 0.1,
    max_records: int = 1000,
    idle_exit_s: float | None = None,
) -> int:
    """``consume_loop`` for a librdkafka consumer: read a batch, handle it, commit, repeat.

    The handler must make its output durable before it returns (or raise: then nothing is
    committed and the batch comes again). The commit is asynchronous: a crash before it
    lands replays the batch, which at-least-once allows. Returns the records handled."""
    handled = 0
    last_data = time.monotonic()
    last_lag = 0.0
    assignment: list[confluent_kafka.TopicPartition] = []
    while not stop.is_set():
        messages = consume_ready(consumer, max_records, poll_timeout_s)
        if consumer.assignment() != assignment:  # a rebalance: the idle clock starts again
            assignment = consumer.assignment()
            last_data = time.monotonic()
        records = []
        for message in messages:
            if message.error():
                log.warning("consumer: %s", message.error())
            else:
                records.append(Record.of(message))
        if records:
            handle(records)
            consumer.commit(asynchronous=True)
            handled += len(records)
            last_data = time.monotonic()
        elif not consumer.assignment():
            last_data = time.monotonic()  # still joining the group: not idle
        elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
            break
        if time.monotonic() - last_lag > 5.0:
            record_lag_librdkafka(consumer, group)
            last_lag = time.monotonic()
    with contextlib.suppress(confluent_kafka.KafkaException):  # nothing consumed: nothing to commit
        consumer.commit(asynchronous=False)
    return handled


def consume_loop(
    consumer: KafkaConsumer,
    group: str,
    handle: Callable[[Records], Commit | None],
    *,
    stop: threading.Event,
    # A poll returns as soon as records arrive, so this only paces idle work. Long enough
    # that a group rejoin completes within one poll: kafka-python 3.0 can otherwise fail to
    # apply the new assignment and sit idle on partitions it owns.
    poll_timeout_ms: int = 500,
    max_records: int | None = None,
    idle_exit_s: float | None = None,
    on_idle: Callable[[], None] | None = None,
    busy: Callable[[], bool] | None = None,
) -> int:
    """Run until ``stop`` is set (or idle for ``idle_exit_s``); return the number of records handled.

    The handler returns the offsets to commit, or None to commit all it was given.
    """
    handled = 0
    last_data = time.monotonic()
    last_lag = 0.0
    assignment: set[TopicPartition] = set()
    while not stop.is_set():
        batches = consumer.poll(timeout_ms=poll_timeout_ms, max_records=max_records)
        records = [r for batch in batches.values() for r in batch]
        if consumer.assignment() != assignment:
            # A rebalance hands over partitions whose records are yet to be fetched: the idle
            # clock starts again, or a member idle before it would leave with them unread.
            assignment = set(consumer.assignment())
            last_data = time.monotonic()
        if records:
            offsets = handle(records)
            if offsets is None:
                consumer.commit()
            elif offsets:
                consumer.commit(offsets)
            handled += len(records)
            last_data = time.monotonic()
        else:
            if on_idle:
                on_idle()
            if not consumer.assignment() or (busy is not None and busy()):
                last_data = time.monotonic()  # joining the group, or work still pending: not idle
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
        if time.monotonic() - last_lag > 1.0:
            record_lag(consumer, group)
            last_lag = time.monotonic()
    return handled
