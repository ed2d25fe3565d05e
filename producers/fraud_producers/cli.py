"""Command line of the ingest components: the simulator (live and backfill), replay of a
user's file, the quality gate and the archiver. The ``fraud`` command mounts these."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fraudcore.commands import command_group, fail, parse_duration, start_component
from fraudcore.settings import get_settings

app = command_group("Ingest: simulated and replayed transactions, the quality gate, the archive.")
console = Console()


def _sim_config(seed: int, customers: int, terminals: int, handbook_only: bool) -> Any:
    from fraud_producers.sim_config import SimulatorConfig

    extra = {"card_testing_per_day": 0, "takeover_per_day": 0} if handbook_only else {}
    return SimulatorConfig(seed=seed, n_customers=customers, n_terminals=terminals, **extra)


def _report(result: Any) -> None:
    s = result.stats
    console.print(
        f"sent {result.transactions:,} transactions and {result.labels:,} labels in {s.seconds:.1f}s "
        f"({s.rate:,.0f}/s); acknowledged {s.acked:,}, errors {s.errors}"
    )
    if s.errors:
        raise typer.Exit(1)


def _date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: use a date, e.g. 2025-01-31") from None


@app.command()
def seed(
    rate: float = typer.Option(500, help="Transactions per second (wall clock)."),
    duration: float = typer.Option(None, help="Stop after this many seconds (default: run until Ctrl-C)."),
    start: str = typer.Option(
        None,
        help="Simulated date the stream starts at, where a `backfill --end` history ends "
        "(default: early enough that the duration, or an hour, stays in the past).",
    ),
    label_delay: str = typer.Option("7d", help="When a fraud's label arrives after it, in simulated time."),
    topic: str = typer.Option(None, help="Target topic (default: the ingress topic the quality gate reads)."),
    seed_: int = typer.Option(0, "--seed", help="Random seed (the population: use the backfill's)."),
    customers: int = typer.Option(5_000),
    terminals: int = typer.Option(10_000),
) -> None:
    """Live simulated traffic with labelled fraud scenarios, at a steady rate.

    The stream is the simulated population's future: each card transacts as in the history
    (a few times a simulated day), so the rate sets how fast the simulated clock runs, printed
    at the start. Event times are simulated and never ahead of the present."""
    from fraud_producers.live_stream import live_start, speed_up
    from fraud_producers.modes import seed as run_seed
    from fraud_producers.simulator import Simulator

    start_component(get_settings(), "producer")
    config = _sim_config(seed_, customers, terminals, False)
    simulator = Simulator(config)
    begin = _date(start, "--start") or live_start(simulator, rate, duration or 3600.0, datetime.now(UTC))
    console.print(
        f"simulated clock from {begin:%Y-%m-%d}: 1 s = {speed_up(simulator, rate) / 60:,.1f} simulated minutes"
    )
    result = run_seed(
        get_settings(),
        rate=rate,
        duration_s=duration,
        start=begin,
        label_delay=parse_duration(label_delay),
        config=config,
        topic=topic,
    )
    _report(result)


@app.command()
def backfill(
    days: int = typer.Option(30, help="Days of history."),
    end: str = typer.Option(None, help="Date the history ends at (default: today, UTC)."),
    label_delay: str = typer.Option("7d", help="Delay between a fraud and its label."),
    topic: str = typer.Option(None, help="Target topic (default: the ingress topic the quality gate reads)."),
    seed_: int = typer.Option(0, "--seed", help="Random seed."),
    customers: int = typer.Option(5_000),
    terminals: int = typer.Option(10_000),
    handbook_only: bool = typer.Option(False, help="Only the Handbook's scenarios 1-3."),
) -> None:
    """N days of simulated history as fast as possible (labels first: they are known by now)."""
    from fraud_producers.modes import backfill as run_backfill

    last = _date(end, "--end")
    result = run_backfill(
        get_settings(),
        days=days,
        start=last - timedelta(days=days) if last else None,
        label_delay=parse_duration(label_delay),
        topic=topic,
        config=_sim_config(seed_, customers, terminals, handbook_only),
    )
    _report(result)


@app.command()
def replay(
    path: Path = typer.Argument(
        ..., help="A CSV or Parquet file of transactions.", exists=True, dir_okay=False
    ),
    mapping: str = typer.Option(
        "default",
        help="'default' (our column names), 'handbook', or a JSON file "
        'mapping our fields to your columns, e.g. {"amount": "TX_AMOUNT"}.',
    ),
    speed: str = typer.Option("max", help="'max', or a pacing multiplier (1 = original pacing)."),
    label_delay: str = typer.Option("7d", help="Delay between a labelled fraud and its label event."),
    topic: str = typer.Option(None, help="Target topic (default: the ingress topic the quality gate reads)."),
) -> None:
    """Replay a historical CSV/Parquet file through Kafka (see `--mapping`)."""
    import json

    from fraud_producers.modes import replay as run_replay
    from fraud_producers.replay import ColumnMapping, ReplayMappingError

    if mapping == "default":
        column_mapping = ColumnMapping()
    elif mapping == "handbook":
        column_mapping = ColumnMapping.handbook()
    else:
        try:
            column_mapping = ColumnMapping(**json.loads(Path(mapping).read_text()))
        except (OSError, ValueError) as exc:
            fail(f"--mapping {mapping}: {exc}")
    try:
        pace = None if speed == "max" else float(speed)
    except ValueError:
        raise typer.BadParameter(f"--speed {speed!r}: use 'max' or a number") from None
    try:
        result = run_replay(
            get_settings(),
            path,
            column_mapping,
            speed=pace,
            label_delay=parse_duration(label_delay),
            topic=topic,
        )
    except ReplayMappingError as exc:
        fail(str(exc))
    _report(result)


@app.command()
def gate(
    group: str = typer.Option("quality-gate", help="Kafka consumer group."),
    max_future_s: float = typer.Option(300, help="Reject events whose time is further ahead than this."),
    idle_exit_s: float = typer.Option(
        None, help="Exit after this many seconds without events (default: run forever)."
    ),
) -> None:
    """Quality gate: validate transactions-raw, forward to transactions, quarantine the rest."""
    from fraud_producers.gate import QualityGate
    from fraudcore.service import stop_on_signals

    start_component(get_settings(), "quality_gate")
    g = QualityGate(get_settings(), group=group, max_future=timedelta(seconds=max_future_s))
    g.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"accepted {g.accepted}, rejected {g.rejected}")


@app.command()
def archive(
    group: str = typer.Option("archiver", help="Kafka consumer group."),
    block_size: int = typer.Option(
        20_000, help="Offsets per archive block (objects are named after blocks)."
    ),
    flush_interval_s: float = typer.Option(10.0, help="Write a partial block at least this often."),
    prefix: str = typer.Option("", help="Folder inside the raw-events bucket (default: the bucket's root)."),
    idle_exit_s: float = typer.Option(
        None, help="Exit after this many seconds without events (default: run forever)."
    ),
) -> None:
    """Archiver: write accepted transactions and labels to MinIO as Parquet, without loss."""
    from fraud_producers.archive import Archiver
    from fraudcore.service import stop_on_signals

    start_component(get_settings(), "archiver")
    a = Archiver(
        get_settings(), group=group, block_size=block_size, flush_interval_s=flush_interval_s, prefix=prefix
    )
    a.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"archived {a.written} records")
