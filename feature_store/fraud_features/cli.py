"""Command line of the feature layer: the Feast repo's environment and registration, and the
streaming feature job. The ``fraud`` command mounts these as ``fraud features ...``."""

from __future__ import annotations

import typer
from rich.console import Console

from fraudcore.commands import command_group, start_component
from fraudcore.settings import get_settings

app = command_group("The feature layer: Feast repo, streaming job.")
console = Console()


@app.command("env")
def features_env() -> None:
    """Print the environment the Feast CLI needs (eval "$(fraud features env)"; feast -c feature_store/repo ...)."""
    from fraud_features.store import feast_env

    for key, value in feast_env(get_settings()).items():
        print(f"export {key}={value}")


@app.command("apply")
def features_apply() -> None:
    """Register entities and feature views with Feast (`feast apply`)."""
    from fraud_features.store import apply

    console.print(f"applied: {', '.join(apply(get_settings()))}")


@app.command("stream")
def features_stream(
    group: str = typer.Option("feature-job", help="Kafka consumer group (replicas share it)."),
    idle_exit_s: float = typer.Option(None, help="Exit after this many seconds without events."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write the feature log."),
) -> None:
    """Streaming feature job: transactions and labels in, online features and a feature log out."""
    from fraud_features.stream import FeatureJob
    from fraudcore.service import stop_on_signals

    start_component(get_settings(), "feature_job")
    job = FeatureJob(get_settings(), group=group, log_features=not no_log)
    job.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"processed {job.processed} transactions")


@app.command("size-redis")
def features_size_redis(
    cards: int = typer.Option(10_000, min=1, help="Cards written."),
    terminals: int = typer.Option(10_000, min=1, help="Terminals written."),
    card_events: int = typer.Option(60, min=1, help="Transactions in a card's 30-day history."),
    counter_days: int = typer.Option(
        60, min=1, help="Days of transaction counts per terminal (features.counter_retention_days)."
    ),
    active_hours: int = typer.Option(
        1,
        min=1,
        max=24,
        help="Hours of each day with transactions at a terminal, each counted apart (24: busy around the clock).",
    ),
    id_length: int = typer.Option(16, min=2, help="Characters of a card or terminal id."),
) -> None:
    """Measure Redis bytes per card and per terminal on a private redis-server (JSON)."""
    import json

    from fraud_features.sizing import measure

    result = measure(
        cards=cards,
        terminals=terminals,
        card_events=card_events,
        counter_days=counter_days,
        active_hours=active_hours,
        id_length=id_length,
    )
    print(json.dumps(result, indent=2))
