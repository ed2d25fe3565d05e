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

from fraudcore.health import LIVENESS
from fraudcore.kafka import Offsets, Record, commit, commit_now, consume_ready, record_lag

log = logging.getLogger(__name__)

Records = list[Record]  # across partitions, in the order they were read
# What a handler asks to commit: the next offset to read per partition.
Commit = Offsets


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %s: finishing the current batch", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    return stop


class PendingCommits:
    """Offsets handled but not committed yet. They go to the broker at most every
    ``interval_s``: each commit is a write to its offsets topic, and one per small batch
    cost the broker more than the records themselves. A crash replays at most that much
    more (at-least-once allows it); the end of the loop and a handover commit at once."""

    def __init__(self, consumer: confluent_kafka.Consumer, interval_s: float) -> None:
        self.consumer = consumer
        self.interval_s = interval_s
        self.positions = False  # a handler asked for "everything read so far"
        self.offsets: Commit = {}
        self.sent_at = time.monotonic()

    def add(self, offsets: Commit | None) -> None:
        if offsets is None:
            self.positions = True
        else:
            self.offsets.update(offsets)

    def send_if_due(self) -> None:
        if time.monotonic() - self.sent_at >= self.interval_s:
            self.send(wait=False)

    def send(self, *, wait: bool) -> None:
        if self.positions:
            commit(self.consumer, None, wait=wait)
        elif self.offsets:
            commit(self.consumer, self.offsets, wait=wait)
        self.forget()
        self.sent_at = time.monotonic()

    def forget(self) -> None:
        self.positions, self.offsets = False, {}


def commit_before_handover(client: confluent_kafka.Consumer, _partitions: list[TopicPartition]) -> None:
    """An ``on_revoke`` for a consumer whose handler returns None: every record read so far
    is handled (callbacks run between batches), so its position is committed before the
    partitions move and their next owner replays nothing."""
    commit_now(client)


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
    commit_interval_s: float = 0.5,
) -> int:
    """Read a batch, handle it, commit, repeat, until ``stop`` is set (or idle for
    ``idle_exit_s``, while ``busy`` says no work is pending); returns the records handled.

    The handler makes its output durable before it returns (or raises: then nothing is
    committed and the batch comes again), and returns the offsets to commit, or None for
    everything it was given. ``on_idle`` runs when a poll brings nothing and may return
    offsets too. Commits are asynchronous and at most every ``commit_interval_s`` (see
    ``PendingCommits``); the last one, on the way out, is waited for."""
    handled = 0
    last_data = time.monotonic()
    last_lag = 0.0
    assignment: list[TopicPartition] = []
    pending = PendingCommits(consumer, commit_interval_s)
    progress = LIVENESS.watch(group)  # /healthz: this loop must advance while records wait
    try:
        while not stop.is_set():
            messages = consume_ready(consumer, max_records, poll_timeout_s)
            if consumer.assignment() != assignment:
                # A rebalance hands over partitions whose records are yet to be fetched: the idle
                # clock starts again, or a member idle before it would leave with them unread.
                assignment = consumer.assignment()
                last_data = time.monotonic()
                pending.forget()  # the old assignment's: committed at the handover, or replayed
            records = []
            for message in messages:
                if message.error():
                    log.warning("consumer: %s", message.error())
                else:
                    records.append(Record.of(message))
            if records:
                pending.add(handle(records))
                handled += len(records)
                last_data = time.monotonic()
                progress.advanced()
            else:
                pending.add(on_idle() if on_idle is not None else {})
                if not consumer.assignment() or (busy is not None and busy()):
                    last_data = time.monotonic()  # joining the group, or work still pending: not idle
                elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                    break
            pending.send_if_due()
            if time.monotonic() - last_lag > 5.0:
                lag = record_lag(consumer, group)
                if lag is not None:
                    progress.measured_lag(lag)
                last_lag = time.monotonic()
        with contextlib.suppress(confluent_kafka.KafkaException):  # nothing read: nothing to commit
            pending.send(wait=True)
    finally:
        LIVENESS.forget(progress)
    return handled
