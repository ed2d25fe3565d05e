"""`fraud demo`: the whole loop on one machine.

Brings the stack up, registers the features, starts the quality gate, the archiver and the
streaming feature job, backfills simulated history through them, trains through the kfp
pipeline (local runner) on the archive, starts the KServe predictor and transformer and the
KafkaSource stand-in, then streams live traffic and shows what the platform does with it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fraud_app import devstack
from fraud_app.live import DecisionMonitor, Snapshot
from fraud_app.soak import SoakRecorder, consumer_groups, lags, platform_pids
from fraud_app.soak import report as soak_report
from fraud_app.supervisor import (
    CONSOLE_GROUP,
    Platform,
    console_configured,
    ingest_and_serving,
    wait_for_backfill,
)
from fraud_producers.live_stream import live_start, speed_up
from fraud_producers.sim_config import DAY_S, SimulatorConfig
from fraud_producers.simulator import SimulatedBatch, Simulator
from fraudcore.drift import ScoreHistogram
from fraudcore.features import CARD_HISTORY_S
from fraudcore.kafka import group_lag
from fraudcore.metrics import sample_sum, scrape
from fraudcore.settings import Settings
from fraudcore.storage import s3_client


@dataclass
class DemoOptions:
    duration_s: float | None = None
    rate: float = 500
    days: int = 75  # 30 days of burn-in (the longest card window), then history, training and test
    customers: int = 1_000
    terminals: int = 2_000
    seed: int = 7
    label_delay: timedelta = timedelta(days=7)  # simulated time, like every event time
    train: bool = True
    window_s: float = 300.0  # the soak figures' latency windows (fraud_app.soak)

    @property
    def live_horizon_s(self) -> float:
        """How long the live stream can run: its simulated days must stay in the past."""
        return self.duration_s or 3600.0


@dataclass(frozen=True)
class Expected:
    """What the champion's evaluation (its test window) predicts at the serving thresholds."""

    model_version: str
    alert_share: float  # review + decline
    decline_share: float
    precision: float  # of review + decline
    recall: float

    @classmethod
    def of_champion(cls, settings: Settings) -> Expected | None:
        """From the champion's metadata; None when there is none, or it predates the score
        distribution."""
        from fraud_pipelines.publish import METADATA_FILE, ModelStore

        store = ModelStore(s3_client(settings), settings.s3.models_bucket, settings.serving.model_name)
        meta = store.get_json(store.key("champion", METADATA_FILE))
        if not meta or not meta.get("score_distribution"):
            return None
        scores = ScoreHistogram.from_dict(meta["score_distribution"])
        review, decline = settings.serving.review_threshold, settings.serving.decline_threshold
        return cls(
            str(meta.get("version")),
            scores.share_at_least(review),
            scores.share_at_least(decline),
            scores.precision_at_least(review),
            scores.recall_at_least(review),
        )


@dataclass(frozen=True)
class ModelWatch:
    """The model monitor's view of one model version (its metrics page): live quality from
    the delayed labels over its window of event days, the label backlog, the largest drift."""

    version: str
    precision: float
    recall: float
    labelled: int  # decisions in the window whose truth is known
    backlog: int  # decisions still waiting for their label delay
    psi_max: float
    psi_feature: str
    psi_top: dict[str, float]  # the five largest, by input (or "score")

    @classmethod
    def read(cls, settings: Settings, version: str) -> ModelWatch:
        samples = [s for f in scrape(settings.metrics_ports.model_monitor).values() for s in f.samples]
        nan = float("nan")

        def gauge(name: str) -> float:
            found = [s.value for s in samples if s.name == name and s.labels.get("model_version") == version]
            return found[0] if found else nan

        drift = {
            s.labels["feature"]: s.value
            for s in samples
            if s.name == "fraud_feature_psi" and s.labels.get("model_version") == version
        }
        drift["score"] = gauge("fraud_score_psi")
        drift = {k: v for k, v in drift.items() if not math.isnan(v)}
        ranked = sorted(drift, key=lambda k: -drift[k])
        top = ranked[0] if ranked else ""
        labelled = gauge("fraud_live_labelled_decisions")
        backlog = sum(s.value for s in samples if s.name == "fraud_label_backlog_decisions")
        return cls(
            version,
            gauge("fraud_live_precision"),
            gauge("fraud_live_recall"),
            0 if math.isnan(labelled) else int(labelled),
            int(backlog),
            drift.get(top, nan),
            top,
            {k: round(drift[k], 4) for k in ranked[:5]},
        )


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _view(
    s: Snapshot,
    started: float,
    alive: list[str],
    produced: int,
    expected: Expected | None,
    watch: ModelWatch | None,
) -> Table:
    table = Table(title=f"fraud platform, live ({time.monotonic() - started:,.0f}s)", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("decisions/s", f"{s.rate_per_s:,.0f}   (total {s.decisions:,})")
    table.add_row("produced", f"{produced:,}   (waiting for a decision: {max(0, produced - s.decisions):,})")
    table.add_row("end-to-end ms", "  ".join(f"{k} {v:,.1f}" for k, v in s.latency_ms.items()))
    table.add_row("decisions", "  ".join(f"{k} {v:,}" for k, v in sorted(s.outcomes.items())))
    evaluation = (
        f"   evaluation predicts {_percent(expected.alert_share)} (decline {_percent(expected.decline_share)})"
        if expected
        else ""
    )
    table.add_row("review + decline", f"{_percent(s.alert_share)} of decisions{evaluation}")
    if watch is not None:
        table.add_row(
            "live precision / recall",
            f"{_percent(watch.precision)} / {_percent(watch.recall)} over the last {watch.labelled:,} decisions "
            f"whose label delay has passed ({watch.backlog:,} waiting)"
            + (
                f"   evaluation {_percent(expected.precision)} / {_percent(expected.recall)}"
                if expected
                else ""
            ),
        )
        if watch.psi_feature:
            table.add_row("top drift", f"{watch.psi_feature}: PSI {watch.psi_max:.3f} against training")
    table.add_row("fraud caught", f"{s.caught} of {s.labelled_frauds} labelled so far (review or decline)")
    table.add_row("model", ", ".join(f"{v} ({n:,})" for v, n in s.model_versions.items()) or "-")
    table.add_row("feature fallbacks", f"{s.fallbacks:,}")
    table.add_row("processes", ", ".join(alive))
    return table


def summary(
    s: Snapshot,
    produced: int,
    latency_ms: dict[str, float],
    expected: Expected | None,
    watch: ModelWatch | None,
    feature_timeouts: int | None = None,
) -> dict[str, Any]:
    """The demo's outcome as one JSON-ready object (``fraud demo --json``); ``feature_timeouts``:
    the transformer's lookups past their budget (each falls back for its whole batch)."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {
        "produced": produced,
        "decided": s.decisions,
        "waiting": max(0, produced - s.decisions),
        "decisions": dict(sorted(s.outcomes.items())),
        "alert_share": number(s.alert_share),
        "expected_alert_share": number(expected.alert_share) if expected else None,
        "decline_share": number(s.outcomes.get("decline", 0) / s.decisions) if s.decisions else None,
        "expected_decline_share": number(expected.decline_share) if expected else None,
        **{f"e2e_ms_{k}": number(v) for k, v in latency_ms.items()},
        "live_precision": number(watch.precision) if watch else None,
        "live_recall": number(watch.recall) if watch else None,
        "expected_precision": number(expected.precision) if expected else None,
        "expected_recall": number(expected.recall) if expected else None,
        "labels_joined": s.labelled_frauds,
        "decisions_with_known_truth": watch.labelled if watch else 0,
        "label_backlog": watch.backlog if watch else None,
        "psi_max": number(watch.psi_max) if watch else None,
        "psi_feature": watch.psi_feature if watch else None,
        "psi_top": watch.psi_top if watch else {},
        "feature_fallbacks": s.fallbacks,
        "feature_timeouts": feature_timeouts,
        "model_versions": s.model_versions,
    }


def run(settings: Settings, options: DemoOptions, console: Console) -> dict[str, Any]:
    """The demo; returns its ``summary``."""
    from fraud_features.store import apply

    devstack.up(settings, report=lambda m: console.print(f"[dim]{m}[/dim]"))
    apply(settings)
    config = SimulatorConfig(seed=options.seed, n_customers=options.customers, n_terminals=options.terminals)
    ingest, serving = ingest_and_serving(settings)
    simulator = Simulator(config)
    live_from = live_start(simulator, options.rate, options.live_horizon_s, datetime.now(UTC))
    ingest.start(report=console.print)
    monitor: DecisionMonitor | None = None
    try:
        history = _backfill(settings, options, config, live_from, console)
        if options.train:
            # Training examples start once every card window has its full 30 days behind it,
            # as live traffic has: a shorter burn-in trains on truncated 30-day counts.
            _train(console, burn_in_days=CARD_HISTORY_S // DAY_S, history_days=14)
        serving.start(report=console.print)
        if console_configured(settings):
            console.print(
                f"review console: http://127.0.0.1:{settings.console.port}/ (user 'analyst', "
                f"password in {devstack.console_password_file(settings)} unless .env names others)"
            )
        monitor = DecisionMonitor(settings).start()
        recorder = SoakRecorder(monitor, platform_pids(settings, ingest, serving), options.window_s)
        expected = Expected.of_champion(settings)
        console.print(
            f"live traffic continues the simulated history from {live_from:%Y-%m-%d}: at "
            f"{options.rate:,.0f}/s a simulated day lasts {DAY_S / speed_up(simulator, options.rate):,.1f} s"
        )
        recorder.start()
        produced, waiting_max = _stream_live(
            settings, options, config, live_from, history, console, monitor, [ingest, serving], expected
        )
        recorder.stop()
        final = monitor.snapshot()
        timeouts = sample_sum(
            scrape(settings.serving.transformer_http_port),
            "transformer_errors_total",
            {"kind": "feature_timeout"},
        )
        outcome = summary(
            final, produced, monitor.latency_percentiles(), expected, _watch(settings, final), int(timeouts)
        )
        soak = soak_report(
            recorder,
            produced,
            final.decisions,
            monitor.duplicates,
            lags(settings, consumer_groups(settings, ingest, serving)),
        )
        return {**outcome, "waiting_max": waiting_max, **_console_figures(settings), "soak": soak}
    finally:
        if monitor:
            monitor.stop()
        serving.stop()
        ingest.stop()


def _console_figures(settings: Settings) -> dict[str, Any]:
    """The review console's address and the cases it opened during the run (None when it
    does not run: no session secret or analyst configured)."""
    if not console_configured(settings):
        return {"console_url": None, "console_cases_opened": None}
    # The console reads fraud-scores in its own group, opening cases one by one (each looks
    # up its transaction): give it up to a minute to read the run's last decisions.
    deadline = time.monotonic() + 60
    while sum(group_lag(settings, CONSOLE_GROUP, [settings.topics.scores.name]).values()):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    opened = sample_sum(scrape(settings.metrics_ports.console), "console_cases_opened_total")
    return {"console_url": f"http://127.0.0.1:{settings.console.port}/", "console_cases_opened": int(opened)}


def _watch(settings: Settings, s: Snapshot) -> ModelWatch | None:
    """The monitor's view of the version that decided most (None before any decision)."""
    if not s.model_versions:
        return None
    return ModelWatch.read(settings, max(s.model_versions, key=lambda v: s.model_versions[v]))


def _backfill(
    settings: Settings, options: DemoOptions, config: SimulatorConfig, end: datetime, console: Console
) -> SimulatedBatch | None:
    """The history up to ``end``, through the ingest components, and waited for."""
    from fraud_producers.modes import backfill

    start = end - timedelta(days=options.days)
    history = backfill(settings, days=options.days, config=config, start=start, show_progress=True)
    with console.status("archiving the history and computing its features"):
        wait_for_backfill(settings, history.transactions)
    return history.history


def _stream_live(
    settings: Settings,
    options: DemoOptions,
    config: SimulatorConfig,
    start: datetime,
    history: SimulatedBatch | None,
    console: Console,
    monitor: DecisionMonitor,
    platforms: list[Platform],
    expected: Expected | None,
) -> tuple[int, int]:
    """Live traffic at the demo's rate, shown as it is decided; then up to half a minute for
    the backlog to drain. Returns how many transactions were produced, and the most that
    waited for a decision at once while traffic ran (sampled with the view, twice a second):
    a platform that keeps up holds it under one second of traffic."""
    from fraud_producers.modes import LiveTraffic, seed
    from fraud_producers.producer import EventProducer

    producer = EventProducer(settings)
    traffic = LiveTraffic(settings, producer, config, start, history=history, label_delay=options.label_delay)
    producer_thread = threading.Thread(
        target=seed,
        kwargs={
            "settings": settings,
            "rate": options.rate,
            "duration_s": options.live_horizon_s,
            "config": config,
            "traffic": traffic,
        },
        daemon=True,
    )

    def produced() -> int:  # transactions: the labels go through the same producer
        return max(0, producer.stats.sent - traffic.labels_sent)

    started = time.monotonic()
    waiting_max = 0

    def view() -> Table:
        nonlocal waiting_max
        alive = [name for platform in platforms for name in platform.alive()]
        snapshot, sent = monitor.snapshot(), produced()
        if producer_thread.is_alive():
            waiting_max = max(waiting_max, sent - snapshot.decisions)
        return _view(snapshot, started, alive, sent, expected, _watch(settings, snapshot))

    producer_thread.start()
    with Live(console=console, refresh_per_second=2) as live:
        while producer_thread.is_alive():
            live.update(view())
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while monitor.snapshot().decisions < produced() and time.monotonic() < deadline:
            live.update(view())
            time.sleep(0.5)
        live.update(view())
    return produced(), waiting_max


def _train(console: Console, **overrides: Any) -> None:
    from fraud_pipelines.local import run_local
    from fraud_pipelines.params import pipeline_arguments

    arguments = pipeline_arguments(source="archive", search="quick", **overrides)
    run_local(arguments, console=console)
