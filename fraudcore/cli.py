"""``fraud``: the platform's command line. ``fraud --help`` lists every subcommand."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from fraudcore.settings import get_settings

app = typer.Typer(
    help="Real-time fraud detection on Kafka, Feast, Kubeflow Pipelines and KServe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def up() -> None:
    """Install what is missing, start Kafka, Redis, MinIO and Prometheus, health-check them."""
    from fraudcore import devstack

    if devstack.ensure_env_file():
        console.print("wrote fresh MinIO credentials to .env")
        get_settings.cache_clear()
    try:
        devstack.up(get_settings(), report=console.print)
    except devstack.StackError as exc:
        _fail(str(exc))
    _print_status()


@app.command()
def down() -> None:
    """Stop the local services (data is kept in the state folder)."""
    from fraudcore import devstack

    devstack.down(get_settings(), report=console.print)


@app.command()
def status() -> None:
    """Show each service's version, address and health; exit 1 if any is unhealthy."""
    if not _print_status():
        raise typer.Exit(1)


def _print_status() -> bool:
    from fraudcore import devstack

    table = Table("service", "version", "address", "pid", "RSS MiB", "health")
    rows = devstack.status(get_settings())
    for s in rows:
        table.add_row(
            s.name,
            s.version,
            s.address,
            str(s.pid or "-"),
            f"{s.rss_mib:.0f}",
            "[green]healthy[/green]" if s.healthy else "[red]down[/red]",
        )
    table.add_section()
    table.add_row("total", "", "", "", f"{sum(s.rss_mib for s in rows):.0f}", "")
    console.print(table)
    return all(s.healthy for s in rows)


@app.command()
def topics() -> None:
    """List the platform's topics and their partition counts (from settings)."""
    for spec in get_settings().topics.all():
        console.print(f"{spec.name:<20} partitions={spec.partitions}")


def _serve_component(component: str) -> None:
    import logging

    from fraudcore.metrics import serve_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    port = serve_metrics(get_settings(), component)
    console.print(f"{component}: metrics on :{port}/metrics")


@app.command()
def gate(
    group: str = typer.Option("quality-gate", help="Kafka consumer group."),
    max_future_s: float = typer.Option(300, help="Reject events whose time is further ahead than this."),
    idle_exit_s: float = typer.Option(
        None, help="Exit after this many seconds without events (default: run forever)."
    ),
) -> None:
    """Quality gate: validate transactions-raw, forward to transactions, quarantine the rest."""
    from datetime import timedelta

    from fraud_producers.gate import QualityGate
    from fraudcore.service import stop_on_signals

    _serve_component("quality_gate")
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

    _serve_component("archiver")
    a = Archiver(
        get_settings(), group=group, block_size=block_size, flush_interval_s=flush_interval_s, prefix=prefix
    )
    a.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"archived {a.written} records")


features_app = typer.Typer(
    help="The feature layer: Feast repo, streaming job, backfill.", no_args_is_help=True
)
app.add_typer(features_app, name="features")


@features_app.command("env")
def features_env() -> None:
    """Print the environment the Feast CLI needs (eval "$(fraud features env)"; feast -c feature_store/repo ...)."""
    from fraud_features.store import feast_env

    for key, value in feast_env(get_settings()).items():
        print(f"export {key}={value}")


@features_app.command("apply")
def features_apply() -> None:
    """Register entities and feature views with Feast (`feast apply`)."""
    from fraud_features.store import apply

    console.print(f"applied: {', '.join(apply(get_settings()))}")


@features_app.command("stream")
def features_stream(
    group: str = typer.Option("feature-job", help="Kafka consumer group (replicas share it)."),
    idle_exit_s: float = typer.Option(None, help="Exit after this many seconds without events."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write the feature log."),
) -> None:
    """Streaming feature job: transactions and labels in, online features and a feature log out."""
    from fraud_features.stream import FeatureJob
    from fraudcore.service import stop_on_signals

    _serve_component("feature_job")
    job = FeatureJob(get_settings(), group=group, log_features=not no_log)
    job.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"processed {job.processed} transactions")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
