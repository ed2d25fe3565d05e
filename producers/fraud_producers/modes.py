"""The producer's three modes: live ``seed``, historical ``backfill`` and ``replay`` of a file.

Transactions go to the ingress topic (``transactions-raw`` by default, so the quality gate
sees them) keyed by card; fraud labels go to ``fraud-labels`` as separate events, after the
label delay, as chargebacks do.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fraud_producers.encoding import label_events, labels, to_event_bytes
from fraud_producers.live_stream import iter_live, live_start
from fraud_producers.producer import EventProducer, Message, SendStats, send_paced
from fraud_producers.replay import ColumnMapping, load_replay, rebase
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import SimulatedBatch, Simulator, as_utc
from fraudcore.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModeResult:
    transactions: int
    labels: int
    stats: SendStats
    history: SimulatedBatch | None = None  # the simulated batch a backfill sent


def _progress() -> Progress:
    # On stderr: standard output stays for results (`fraud soak` prints one JSON object there).
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[rate]:>8,.0f}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _messages(frame: pd.DataFrame, chunk_rows: int = 50_000) -> Iterator[Message]:
    for start in range(0, len(frame), chunk_rows):
        part = frame.iloc[start : start + chunk_rows]
        for card, value in zip(part["card_id"], to_event_bytes(part), strict=True):
            yield card.encode(), value


def _send_labels(producer: EventProducer, settings: Settings, frame: pd.DataFrame) -> int:
    events = label_events(frame.sort_values("reported_at"))
    for event in events:
        producer.send(settings.topics.labels.name, event["card_id"].encode(), orjson.dumps(event))
    return len(events)


def _send_with_progress(
    producer: EventProducer, topic: str, frame: pd.DataFrame, rate: float | None, description: str, show: bool
) -> SendStats:
    if not show:
        return send_paced(producer, topic, _messages(frame), rate)
    with _progress() as progress:
        task = progress.add_task(description, total=len(frame), rate=0.0)

        def advance(n: int) -> None:
            progress.update(task, advance=n, rate=producer.stats.rate)

        return send_paced(producer, topic, _messages(frame), rate, on_slice=advance)


def backfill(
    settings: Settings,
    *,
    days: int,
    config: SimulatorConfig,
    start: datetime | None = None,
    label_delay: timedelta = timedelta(days=7),
    topic: str | None = None,
    show_progress: bool = True,
    producer: EventProducer | None = None,
) -> ModeResult:
    """N days of history as fast as possible, event-time stamped, from ``start`` (default: so
    that it ends at today's midnight, UTC).

    The labels reported by the end of the history (and not after now) go out first: a
    consumer that applies labels by the time they were reported then sees the same history
    as it would have live. The later ones belong to the live stream that continues the
    history (``seed`` with ``history``), which sends them when its clock reaches them.
    """
    start = start or (datetime.now(UTC) - timedelta(days=days)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    batch = Simulator(config).generate(start, days)
    known_by = min(pd.Timestamp(datetime.now(UTC)), pd.Timestamp(start + timedelta(days=days)))
    chargebacks = labels(batch, delay=label_delay)
    chargebacks = chargebacks[chargebacks["reported_at"] <= known_by]
    producer = producer or EventProducer(settings)
    n_labels = _send_labels(producer, settings, chargebacks)
    producer.flush()
    stats = _send_with_progress(
        producer, topic or settings.topics.raw.name, batch.transactions, None, "backfill", show_progress
    )
    return ModeResult(len(batch.transactions), n_labels, stats, history=batch)


def replay(
    settings: Settings,
    path: Path,
    mapping: ColumnMapping,
    *,
    speed: float | None,
    label_delay: timedelta = timedelta(days=7),
    topic: str | None = None,
    show_progress: bool = True,
    producer: EventProducer | None = None,
) -> ModeResult:
    """A user's CSV/Parquet file: at its original pacing (times ``speed``) or as fast as possible.

    With a pacing, event times are moved to now (the file's spacing kept); at maximum speed
    they stay as in the file. Labelled fraud rows become label events ``label_delay`` later.
    """
    frame = load_replay(path, mapping)
    if speed:
        frame = rebase(frame, datetime.now(UTC), speed)
    rate = None
    if speed and len(frame) > 1:
        span = (frame["timestamp"].iloc[-1] - frame["timestamp"].iloc[0]).total_seconds()
        rate = len(frame) / span if span > 0 else None
    producer = producer or EventProducer(settings)
    n_labels = 0
    if "is_fraud" in frame and frame["is_fraud"].any():
        chargebacks = labels(frame, delay=label_delay)
        n_labels = _send_labels(producer, settings, chargebacks)
    stats = _send_with_progress(
        producer, topic or settings.topics.raw.name, frame, rate, "replay", show_progress
    )
    return ModeResult(len(frame), n_labels, stats)


class LiveTraffic:
    """The simulator's live stream as Kafka messages: transactions, with each fraud's label
    sent when the simulated clock reaches its ``reported_at``.

    The stream continues ``history`` (if given) from ``start``; its history's labels that
    were not known yet when it ended come out on time too. It never sends an event from the
    future: it stops when the simulated clock reaches the present. One object can feed
    several paced runs in turn (a benchmark's steps): each picks up where the last stopped.
    """

    def __init__(
        self,
        settings: Settings,
        producer: EventProducer,
        config: SimulatorConfig,
        start: datetime,
        *,
        history: SimulatedBatch | None = None,
        label_delay: timedelta = timedelta(days=7),
    ) -> None:
        self.settings, self.producer, self.label_delay = settings, producer, label_delay
        self.simulator = Simulator(config)
        self.labels_sent = 0
        self.clock: pd.Timestamp | None = None  # the event time of the latest transaction sent
        self._pending: list[tuple[int, int, bytes, bytes]] = []  # (due ns, tie-break, key, value)
        self._order = itertools.count()
        if history is not None:
            self._schedule(labels(history, delay=label_delay), after=pd.Timestamp(as_utc(start)))
        self._messages = self._stream(as_utc(start), history)

    def messages(self) -> Iterator[Message]:
        return self._messages

    def _schedule(self, chargebacks: pd.DataFrame, after: pd.Timestamp | None = None) -> None:
        if after is not None:
            chargebacks = chargebacks[chargebacks["reported_at"] > after]
        due = chargebacks["reported_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64).tolist()
        for when, event in zip(due, label_events(chargebacks), strict=True):
            entry = (when, next(self._order), event["card_id"].encode(), orjson.dumps(event))
            heapq.heappush(self._pending, entry)

    def _stream(self, start: datetime, history: SimulatedBatch | None) -> Iterator[Message]:
        topic = self.settings.topics.labels.name
        for frame in iter_live(self.simulator, start, history=history):
            self._schedule(labels(frame[frame["is_fraud"] == 1], delay=self.label_delay))
            stamps = frame["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64).tolist()
            present = pd.Timestamp.now(tz="UTC").value
            for when, message in zip(stamps, _messages(frame), strict=True):
                while self._pending and self._pending[0][0] <= when:
                    _, _, key, value = heapq.heappop(self._pending)
                    self.producer.send(topic, key, value)
                    self.labels_sent += 1
                if when > present:
                    log.info("the simulated clock reached the present: the live stream ends here")
                    return
                self.clock = pd.Timestamp(when, tz="UTC")
                yield message


def seed(
    settings: Settings,
    *,
    rate: float,
    duration_s: float | None,
    config: SimulatorConfig,
    start: datetime | None = None,
    history: SimulatedBatch | None = None,
    label_delay: timedelta = timedelta(days=7),
    topic: str | None = None,
    producer: EventProducer | None = None,
    traffic: LiveTraffic | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> ModeResult:
    """Live traffic at a steady ``rate`` per second: the simulator's stream (see ``LiveTraffic``)
    from ``start`` (default: so that ``duration_s``, or an hour, of it stays in the past), or
    the given ``traffic`` where it stopped."""
    producer = producer or (traffic.producer if traffic else EventProducer(settings))
    if traffic is None:
        if start is None:
            start = live_start(Simulator(config), rate, duration_s or 3600.0, datetime.now(UTC))
        traffic = LiveTraffic(settings, producer, config, start, history=history, label_delay=label_delay)
    labels_before = traffic.labels_sent
    stats = send_paced(
        producer,
        topic or settings.topics.raw.name,
        traffic.messages(),
        rate,
        duration_s=duration_s,
        on_slice=on_slice,
    )
    labels_sent = traffic.labels_sent - labels_before
    # The stats count every message the producer sent, the labels among them.
    return ModeResult(stats.sent - labels_sent, labels_sent, stats)
