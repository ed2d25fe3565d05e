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

import confluent_kafka
from confluent_kafka import TopicPartition

from fraudcore.kafka import Record, consume_ready, record_lag

log = logging.getLogger(__name__)

Records = list[Record]  # across partitions, in the order they were read
# What a handler asks to commit: the next offset to read per partition.
Commit = dict[TopicPartition, int]


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %s: finishing the current batch", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    return stop


def consume_loop(
    consumer: confluent_kafka.Consumer,
    group: str,
    handle: Callable[[list[Record]], Commit | None],
    *,
    stop: threading.Event,
    poll_timeout_s: float = 0.1,
    max_records: int = 1000,
    idle_exit_s: float | None = None,
    on_idle: Callable[[], Commit | None] | None = None,
    busy: Callable[[], bool] | None = None,
) -> int:
    """Read a batch, handle it, commit, repeat, until ``stop`` is set (or idle for
    ``idle_exit_s``, while ``busy`` says no work is pending); returns the records handled.

    The handler makes its output durable before it returns (or raises: then nothing is
    committed and the batch comes again), and returns the offsets to commit, or None for
    everything it was given. ``on_idle`` runs when a poll brings nothing and may return
    offsets too. Commits are asynchronous: a crash before one lands replays the batch,
    which at-least-once allows; the last one, on the way out, is waited for."""
    handled = 0
    last_data = time.monotonic()
    last_lag = 0.0
    assignment: list[TopicPartition] = []
    last: Commit | None = {}  # the latest commit asked for, made again and waited for at the end
    while not stop.is_set():
        messages = consume_ready(consumer, max_records, poll_timeout_s)
        if consumer.assignment() != assignment:
            # A rebalance hands over partitions whose records are yet to be fetched: the idle
            # clock starts again, or a member idle before it would leave with them unread.
            assignment = consumer.assignment()
            last_data = time.monotonic()
            last = {}  # what was asked before belongs to the old assignment
        records = []
        for message in messages:
            if message.error():
                log.warning("consumer: %s", message.error())
            else:
                records.append(Record.of(message))
        if records:
            offsets = handle(records)
            _commit(consumer, offsets)
            if offsets is None or offsets:
                last = offsets
            handled += len(records)
            last_data = time.monotonic()
        else:
            offsets = on_idle() if on_idle is not None else {}
            if offsets:
                _commit(consumer, offsets)
                last = offsets
            if not consumer.assignment() or (busy is not None and busy()):
                last_data = time.monotonic()  # joining the group, or work still pending: not idle
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
        if time.monotonic() - last_lag > 5.0:
            record_lag(consumer, group)
            last_lag = time.monotonic()
    if last is None or last:
        commit_now(consumer, last)
    return handled


def _commit(consumer: confluent_kafka.Consumer, offsets: Commit | None, *, wait: bool = False) -> None:
    if offsets is None and wait:
        consumer.commit(asynchronous=False)
    elif offsets is None:
        consumer.commit(asynchronous=True)
    elif offsets and wait:
        consumer.commit(offsets=commit_list(offsets), asynchronous=False)
    elif offsets:
        consumer.commit(offsets=commit_list(offsets), asynchronous=True)


def commit_list(offsets: Commit) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


def commit_now(consumer: confluent_kafka.Consumer, offsets: Commit | None = None) -> None:
    """Commit and wait for it (on the way out, or before partitions move to another member).
    Nothing consumed means nothing to commit, which librdkafka reports as an error."""
    with contextlib.suppress(confluent_kafka.KafkaException):
        _commit(consumer, offsets, wait=True)
