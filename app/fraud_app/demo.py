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
from fraud_app.supervisor import Platform, components
from fraudcore.metrics import sample_sum, scrape
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


def _metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """A counter's value from a component's /metrics (0 when it has none yet)."""
    return sample_sum(scrape(port), name, labels)


def _wait_until(what: str, check: Any, console: Console, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    with console.status(what):
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done after {timeout_s:.0f}s")
            time.sleep(0.5)


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
    from fraud_producers.modes import backfill, seed
    from fraud_producers.producer import EventProducer
    from fraud_producers.sim_config import SimulatorConfig

    devstack.up(settings, report=lambda m: console.print(f"[dim]{m}[/dim]"))
    apply(settings)
    config = SimulatorConfig(seed=options.seed, n_customers=options.customers, n_terminals=options.terminals)
    parts = components(settings)
    ingest = Platform(settings, [p for p in parts if p.name in ("quality-gate", "archiver", "feature-job")])
    serving = Platform(
        settings, [p for p in parts if p.name not in ("quality-gate", "archiver", "feature-job")]
    )
    ingest.start(report=console.print)
    monitor: DecisionMonitor | None = None
    try:
        history = backfill(settings, days=options.days, config=config, show_progress=True)
        ports = settings.metrics_ports
        expected = history.transactions
        _wait_until(
            "archiving the history",
            lambda: (
                _metric(ports.archiver, "archiver_records_written_total", {"kind": "transactions"})
                >= expected
            ),
            console,
        )
        _wait_until(
            "computing its features",
            lambda: (
                _metric(ports.feature_job, "feature_job_events_total", {"kind": "transaction"}) >= expected
            ),
            console,
        )
        if options.train:
            _train(console, burn_in_days=7, history_days=14)
        serving.start(report=console.print)
        monitor = DecisionMonitor(settings).start()
        stop = threading.Event()
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
        producer_thread.start()
        with Live(console=console, refresh_per_second=2) as live:
            while producer_thread.is_alive() and not stop.is_set():
                live.update(
                    _view(monitor.snapshot(), started, serving.alive() + ingest.alive(), producer.stats.sent)
                )
                time.sleep(0.5)
            # The backlog drains for up to half a minute after the producer stops.
            deadline = time.monotonic() + 30
            while monitor.snapshot().decisions < producer.stats.sent and time.monotonic() < deadline:
                live.update(
                    _view(monitor.snapshot(), started, serving.alive() + ingest.alive(), producer.stats.sent)
                )
                time.sleep(0.5)
            live.update(
                _view(monitor.snapshot(), started, serving.alive() + ingest.alive(), producer.stats.sent)
            )
        return monitor.snapshot()
    finally:
        if monitor:
            monitor.stop()
        serving.stop()
        ingest.stop()


def _train(console: Console, **overrides: Any) -> None:
    from fraud_pipelines.local import run_local
    from fraud_pipelines.params import pipeline_arguments

    arguments = pipeline_arguments(source="archive", search="quick", **overrides)
    run_local(arguments, console=console)
