"""`fraud demo`: the whole loop on one machine.

Brings the stack up, registers the features, starts the quality gate, the archiver and the
streaming feature job, backfills simulated history through them, trains through the kfp
pipeline (local runner) on the archive, starts the KServe predictor and transformer and the
KafkaSource stand-in, then streams live traffic and shows what the platform does with it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fraud_app import devstack
from fraud_app.live import DecisionMonitor, Snapshot
from fraud_app.supervisor import Platform, ingest_and_serving, wait_for_backfill
from fraud_producers.sim_config import SimulatorConfig
from fraudcore.settings import Settings


@dataclass
class DemoOptions:
    duration_s: float | None = None
    rate: float = 500
    days: int = 45
    customers: int = 1_000
    terminals: int = 2_000
    seed: int = 7
    label_delay: timedelta = timedelta(seconds=30)
    train: bool = True


def _view(s: Snapshot, started: float, alive: list[str], produced: int) -> Table:
    table = Table(title=f"fraud platform, live ({time.monotonic() - started:,.0f}s)", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("decisions/s", f"{s.rate_per_s:,.0f}   (total {s.decisions:,})")
    table.add_row("produced", f"{produced:,}   (waiting for a decision: {max(0, produced - s.decisions):,})")
    table.add_row("end-to-end ms", "  ".join(f"{k} {v:,.1f}" for k, v in s.latency_ms.items()))
    table.add_row("decisions", "  ".join(f"{k} {v:,}" for k, v in sorted(s.outcomes.items())))
    table.add_row("fraud caught", f"{s.caught} of {s.labelled_frauds} labelled so far (review or decline)")
    table.add_row("model", ", ".join(f"{v} ({n:,})" for v, n in s.model_versions.items()) or "-")
    table.add_row("feature fallbacks", f"{s.fallbacks:,}")
    table.add_row("processes", ", ".join(alive))
    return table


def run(settings: Settings, options: DemoOptions, console: Console) -> Snapshot:
    from fraud_features.store import apply

    devstack.up(settings, report=lambda m: console.print(f"[dim]{m}[/dim]"))
    apply(settings)
    config = SimulatorConfig(seed=options.seed, n_customers=options.customers, n_terminals=options.terminals)
    ingest, serving = ingest_and_serving(settings)
    ingest.start(report=console.print)
    monitor: DecisionMonitor | None = None
    try:
        _backfill(settings, options, config, console)
        if options.train:
            _train(console, burn_in_days=7, history_days=14)
        serving.start(report=console.print)
        monitor = DecisionMonitor(settings).start()
        _stream_live(settings, options, config, console, monitor, [ingest, serving])
        return monitor.snapshot()
    finally:
        if monitor:
            monitor.stop()
        serving.stop()
        ingest.stop()


def _backfill(settings: Settings, options: DemoOptions, config: SimulatorConfig, console: Console) -> None:
    """The history, through the ingest components, and waited for."""
    from fraud_producers.modes import backfill

    history = backfill(settings, days=options.days, config=config, show_progress=True)
    with console.status("archiving the history and computing its features"):
        wait_for_backfill(settings, history.transactions)


def _stream_live(
    settings: Settings,
    options: DemoOptions,
    config: SimulatorConfig,
    console: Console,
    monitor: DecisionMonitor,
    platforms: list[Platform],
) -> None:
    """Live traffic at the demo's rate, shown as it is decided; then up to half a minute for
    the backlog to drain."""
    from fraud_producers.modes import seed
    from fraud_producers.producer import EventProducer

    producer = EventProducer(settings)
    producer_thread = threading.Thread(
        target=seed,
        kwargs={
            "settings": settings,
            "producer": producer,
            "rate": options.rate,
            "duration_s": options.duration_s,
            "config": config.model_copy(update={"seed": options.seed + 1}),
            "label_delay": options.label_delay,
        },
        daemon=True,
    )
    started = time.monotonic()

    def view() -> Table:
        alive = [name for platform in platforms for name in platform.alive()]
        return _view(monitor.snapshot(), started, alive, producer.stats.sent)

    producer_thread.start()
    with Live(console=console, refresh_per_second=2) as live:
        while producer_thread.is_alive():
            live.update(view())
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while monitor.snapshot().decisions < producer.stats.sent and time.monotonic() < deadline:
            live.update(view())
            time.sleep(0.5)
        live.update(view())


def _train(console: Console, **overrides: Any) -> None:
    from fraud_pipelines.local import run_local
    from fraud_pipelines.params import pipeline_arguments

    arguments = pipeline_arguments(source="archive", search="quick", **overrides)
    run_local(arguments, console=console)
