"""The producer's three modes: live ``seed``, historical ``backfill`` and ``replay`` of a file.

Transactions go to the ingress topic (``transactions-raw`` by default, so the quality gate
sees them) keyed by card; fraud labels go to ``fraud-labels`` as separate events, after the
label delay, as chargebacks do.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pandas as pd
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fraud_producers.encoding import label_events, labels, to_event_bytes
from fraud_producers.live_stream import iter_live
from fraud_producers.producer import EventProducer, Message, SendStats, send_paced
from fraud_producers.replay import ColumnMapping, load_replay, rebase
from fraud_producers.sim_config import SimulatorConfig
from fraud_producers.simulator import Simulator
from fraudcore.settings import Settings


@dataclass
class ModeResult:
    transactions: int
    labels: int
    stats: SendStats


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[rate]:>8,.0f}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
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
    """N days of history as fast as possible, event-time stamped, ending now.

    The labels of the history are known by now, so they go out first: a consumer that
    applies labels by the time they were reported then sees the same history as it would
    have live.
    """
    start = start or (datetime.now(UTC) - timedelta(days=days)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    batch = Simulator(config).generate(start, days)
    now = datetime.now(UTC)
    chargebacks = labels(batch, delay=label_delay)
    chargebacks = chargebacks[chargebacks["reported_at"] <= pd.Timestamp(now)]
    producer = producer or EventProducer(settings)
    n_labels = _send_labels(producer, settings, chargebacks)
    producer.flush()
    stats = _send_with_progress(
        producer, topic or settings.topics.raw.name, batch.transactions, None, "backfill", show_progress
    )
    return ModeResult(len(batch.transactions), n_labels, stats)


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


def seed(
    settings: Settings,
    *,
    rate: float,
    duration_s: float | None,
    config: SimulatorConfig,
    label_delay: timedelta = timedelta(days=7),
    topic: str | None = None,
    producer: EventProducer | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> ModeResult:
    """Live traffic: event time = now, a steady ``rate`` per second; labels after ``label_delay``."""
    producer = producer or EventProducer(settings)
    sim = Simulator(config)
    pending: list[tuple[pd.Timestamp, int, bytes, bytes]] = []
    sent_labels = 0
    counter = 0

    def messages() -> Iterator[Message]:
        nonlocal sent_labels, counter
        for frame in iter_live(sim, rate, datetime.now(UTC), slice_s=1.0):
            now = pd.Timestamp.now(tz="UTC")
            while pending and pending[0][0] <= now:
                _, _, key, value = heapq.heappop(pending)
                producer.send(settings.topics.labels.name, key, value)
                sent_labels += 1
            fraud = frame[frame["is_fraud"] == 1]
            if len(fraud):
                for event in label_events(labels(fraud, delay=label_delay)):
                    counter += 1
                    due = pd.Timestamp(event["reported_at"])
                    heapq.heappush(pending, (due, counter, event["card_id"].encode(), orjson.dumps(event)))
            yield from _messages(frame)

    stats = send_paced(
        producer,
        topic or settings.topics.raw.name,
        messages(),
        rate,
        duration_s=duration_s,
        on_slice=on_slice,
    )
    return ModeResult(stats.sent, sent_labels, stats)
