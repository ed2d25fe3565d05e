"""``fraud``: the platform's command line. ``fraud --help`` lists every subcommand."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

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
    # A line per HTTP call (the dispatcher's deliveries) would cost more than the call.
    logging.getLogger("httpx").setLevel(logging.WARNING)
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


def _delay(value: str) -> timedelta:
    import pandas as pd

    try:
        return pd.Timedelta(value).to_pytimedelta()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a duration (examples: 7d, 12h, 90s)") from None


def _sim_config(seed: int, customers: int, terminals: int, handbook_only: bool) -> Any:
    from fraud_producers.simulator import SimulatorConfig

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


@app.command()
def seed(
    rate: float = typer.Option(500, help="Transactions per second (event time = now)."),
    duration: float = typer.Option(None, help="Stop after this many seconds (default: run until Ctrl-C)."),
    label_delay: str = typer.Option("7d", help="When a fraud's label arrives after it (e.g. 7d, 60s)."),
    topic: str = typer.Option(None, help="Target topic (default: the ingress topic the quality gate reads)."),
    seed_: int = typer.Option(0, "--seed", help="Random seed."),
    customers: int = typer.Option(5_000),
    terminals: int = typer.Option(10_000),
) -> None:
    """Live simulated traffic with labelled fraud scenarios, at a steady rate."""
    from fraud_producers.modes import seed as run_seed

    _serve_component("producer")
    result = run_seed(
        get_settings(),
        rate=rate,
        duration_s=duration,
        label_delay=_delay(label_delay),
        config=_sim_config(seed_, customers, terminals, False),
        topic=topic,
    )
    _report(result)


@app.command()
def backfill(
    days: int = typer.Option(30, help="Days of history, ending today."),
    label_delay: str = typer.Option("7d", help="Delay between a fraud and its label."),
    topic: str = typer.Option(None, help="Target topic (default: the ingress topic the quality gate reads)."),
    seed_: int = typer.Option(0, "--seed", help="Random seed."),
    customers: int = typer.Option(5_000),
    terminals: int = typer.Option(10_000),
    handbook_only: bool = typer.Option(False, help="Only the Handbook's scenarios 1-3."),
) -> None:
    """N days of simulated history as fast as possible (labels first: they are known by now)."""
    from fraud_producers.modes import backfill as run_backfill

    result = run_backfill(
        get_settings(),
        days=days,
        label_delay=_delay(label_delay),
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
            _fail(f"--mapping {mapping}: {exc}")
    try:
        pace = None if speed == "max" else float(speed)
    except ValueError:
        raise typer.BadParameter(f"--speed {speed!r}: use 'max' or a number") from None
    try:
        result = run_replay(
            get_settings(), path, column_mapping, speed=pace, label_delay=_delay(label_delay), topic=topic
        )
    except ReplayMappingError as exc:
        _fail(str(exc))
    _report(result)


@app.command()
def dispatch(
    sink: list[str] = typer.Option(
        ["http://127.0.0.1:8086/v1/models/fraud:predict"],
        help="The transformer's URL (on a cluster Knative resolves the sink ref); repeat it for replicas.",
    ),
    manifest: Path = typer.Option(
        Path("kustomize/base/serving/eventing.yaml"), help="The KafkaSource manifest whose spec this mirrors."
    ),
    group: str = typer.Option(None, help="Override the manifest's consumerGroup."),
    initial_offset: str = typer.Option(None, help="Override initialOffset (earliest or latest)."),
    max_in_flight: int = typer.Option(64, help="Concurrent deliveries (records of one key stay in order)."),
    idle_exit_s: float = typer.Option(None, help="Exit after this many seconds without events."),
) -> None:
    """Local stand-in for Knative's KafkaSource: deliver transactions to the transformer as CloudEvents."""
    from fraudcore.eventing import Dispatcher, load_source
    from fraudcore.service import stop_on_signals

    spec = load_source(manifest)
    updates = {k: v for k, v in {"consumer_group": group, "initial_offset": initial_offset}.items() if v}
    spec = spec.model_copy(update=updates)
    _serve_component("dispatcher")
    d = Dispatcher(get_settings(), spec, sink, max_in_flight=max_in_flight)
    d.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"delivered {d.delivered}, dead-lettered {d.dead_lettered}")


@app.command()
def demo(
    duration: float = typer.Option(
        None, help="Stop after this many seconds of live traffic (default: Ctrl-C)."
    ),
    rate: float = typer.Option(500, help="Live transactions per second."),
    days: int = typer.Option(45, help="Days of simulated history to backfill and train on."),
    customers: int = typer.Option(1_000),
    terminals: int = typer.Option(2_000),
    label_delay: str = typer.Option("30s", help="How late fraud labels arrive during the live part."),
    train: bool = typer.Option(True, help="Train a model first (off: serve the current champion)."),
) -> None:
    """The whole loop: stack, backfill, training (kfp), serving (KServe), live traffic and a live view."""
    from fraudcore.demo import DemoOptions
    from fraudcore.demo import run as run_demo

    options = DemoOptions(
        duration_s=duration,
        rate=rate,
        days=days,
        customers=customers,
        terminals=terminals,
        label_delay=_delay(label_delay),
        train=train,
    )
    snapshot = run_demo(get_settings(), options, console)
    if snapshot.decisions == 0:
        _fail("no decisions were produced")


def _mount_pipeline() -> None:
    """`fraud train` and `fraud pipeline ...` come from the training package."""
    from fraud_pipelines.cli import app as pipeline_app
    from fraud_pipelines.cli import train as pipeline_train

    app.command("train", help="Run the training pipeline locally (kfp local runner) and publish the model.")(
        pipeline_train
    )
    app.add_typer(pipeline_app, name="pipeline", help="The Kubeflow pipeline: train, compile, submit, bench.")


_mount_pipeline()

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
