"""``fraud``: the platform's command line. ``fraud --help`` lists every subcommand.

The composition root: each component's own Typer app is mounted here (ingest commands at
the top level, ``fraud features ...``, ``fraud train`` and ``fraud pipeline ...``), next to
the application's commands: the local services, the KafkaSource stand-in and the demo."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fraud_console.cli import app as console_app
from fraud_features.cli import app as features_app
from fraud_monitor.cli import monitor as monitor_command
from fraud_monitor.cli import skew as skew_command
from fraud_pipelines.cli import app as pipeline_app
from fraud_pipelines.cli import train as pipeline_train
from fraud_producers.cli import app as producers_app
from fraudcore.commands import command_group, fail, parse_duration, start_component
from fraudcore.settings import get_settings

app = command_group("Real-time fraud detection on Kafka, Feast, Kubeflow Pipelines and KServe.")
console = Console()


@app.command()
def up() -> None:
    """Install what is missing, start Kafka, Redis, MinIO and Prometheus, health-check them."""
    from fraud_app import devstack

    if devstack.ensure_env_file():
        console.print("wrote fresh local credentials (MinIO, Redis, Kafka SCRAM) to .env")
        get_settings.cache_clear()
    if devstack.ensure_console_access(get_settings()):
        where = devstack.console_password_file(get_settings())
        console.print(
            f"wrote the review console's session secret and user 'analyst' to .env (password: {where})"
        )
        get_settings.cache_clear()
    try:
        devstack.up(get_settings(), report=console.print)
    except devstack.StackError as exc:
        fail(str(exc))
    _print_status()


@app.command()
def down() -> None:
    """Stop the local services (data is kept in the state folder)."""
    from fraud_app import devstack

    devstack.down(get_settings(), report=console.print)


@app.command()
def status() -> None:
    """Show each service's version, address and health; exit 1 if any is unhealthy."""
    if not _print_status():
        raise typer.Exit(1)


def _print_status() -> bool:
    from fraud_app import devstack

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
def promote(
    version: str = typer.Argument(..., help="A published model version, e.g. the shadow challenger's."),
    force: bool = typer.Option(False, help="Promote even if its live precision is worse, or unknown."),
    group: str = typer.Option("model-monitor", help="The model monitor whose counts to compare."),
) -> None:
    """Make a published version the champion (champion-changed), if its live precision over the
    last labelled window is at least the champion's on the same days."""
    from fraud_app.promote import PromotionRefusedError
    from fraud_app.promote import promote as run_promote

    try:
        result = run_promote(get_settings(), version, force=force, group=group)
    except PromotionRefusedError as exc:
        fail(str(exc))
    c = result["comparison"]
    theirs = f"{c.champion.precision:.4f}" if c.champion else "-"
    console.print(
        f"{version} is the champion (was {result['previous_champion']}); live precision "
        f"{c.challenger.precision:.4f} against {theirs} over event days {c.first_day}..{c.last_day}"
        + (" [forced]" if result["forced"] else "")
    )


@app.command()
def topics() -> None:
    """List the platform's topics and their partition counts (from settings)."""
    for spec in get_settings().topics.all():
        console.print(f"{spec.name:<20} partitions={spec.partitions}")


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
    max_in_flight: int = typer.Option(
        None, help="Concurrent deliveries (records of one key stay in order); default 64."
    ),
    idle_exit_s: float = typer.Option(None, help="Exit after this many seconds without events."),
    engine: str = typer.Option(
        "auto",
        help="go: the Go build (`make setup` compiles it); python: the Python one; auto: go where built.",
    ),
) -> None:
    """Local stand-in for Knative's KafkaSource: deliver transactions to the transformer as CloudEvents."""
    from fraud_app.eventing import MAX_IN_FLIGHT, Dispatcher, exec_go_build, go_build, go_config, load_source
    from fraudcore.service import stop_on_signals

    max_in_flight = max_in_flight or MAX_IN_FLIGHT

    if engine not in ("auto", "go", "python"):
        raise typer.BadParameter(f"{engine!r} is not one of auto, go, python", param_hint="--engine")
    spec = load_source(manifest)
    updates = {k: v for k, v in {"consumer_group": group, "initial_offset": initial_offset}.items() if v}
    spec = spec.model_copy(update=updates)
    built = go_build()
    if engine == "go" and built is None:
        console.print("[red]--engine go: the Go build is missing; run `make setup` (it needs Go)[/red]")
        raise typer.Exit(2)
    if engine != "python" and built is not None:
        config = go_config(get_settings(), spec, sink, max_in_flight=max_in_flight, idle_exit_s=idle_exit_s)
        exec_go_build(built, config)
    start_component(get_settings(), "dispatcher")
    d = Dispatcher(get_settings(), spec, sink, max_in_flight=max_in_flight)
    d.run(stop_on_signals(), idle_exit_s=idle_exit_s)
    console.print(f"delivered {d.delivered}, dead-lettered {d.dead_lettered}")


@app.command()
def demo(
    duration: float = typer.Option(
        None, help="Stop after this many seconds of live traffic (default: Ctrl-C)."
    ),
    rate: float = typer.Option(500, help="Live transactions per second."),
    days: int = typer.Option(
        75, help="Days of simulated history to backfill and train on (30 of them warm the card windows)."
    ),
    customers: int = typer.Option(1_000),
    terminals: int = typer.Option(2_000),
    label_delay: str = typer.Option(
        "7d", help="How late fraud labels arrive, in simulated time (the history's and the features' delay)."
    ),
    train: bool = typer.Option(True, help="Train a model first (off: serve the current champion)."),
    window: float = typer.Option(300, help="Seconds per latency window of the soak figures."),
    json_: bool = typer.Option(
        False,
        "--json",
        help="End by printing one JSON object (decision mix against the evaluation, latency, live "
        "precision and recall) on stdout; the progress and the live view go to stderr.",
    ),
) -> None:
    """The whole loop: stack, backfill, training (kfp), serving (KServe), live traffic and a live view."""
    import json

    from fraud_app.demo import DemoOptions
    from fraud_app.demo import run as run_demo

    options = DemoOptions(
        duration_s=duration,
        rate=rate,
        days=days,
        customers=customers,
        terminals=terminals,
        label_delay=parse_duration(label_delay),
        train=train,
        window_s=window,
    )
    result = run_demo(get_settings(), options, Console(stderr=True) if json_ else console)
    if json_:
        print(json.dumps(result))
    if result["decided"] == 0:
        fail("no decisions were produced")


@app.command()
def soak(
    duration: float = typer.Option(1800, help="Seconds of live traffic."),
    rate: float = typer.Option(300, help="Live transactions per second (the bench's sustained rate)."),
    window: float = typer.Option(300, help="Seconds per latency window."),
    days: int = typer.Option(75, help="Days of simulated history first (as the demo)."),
    customers: int = typer.Option(1_000),
    terminals: int = typer.Option(2_000),
    train: bool = typer.Option(True, help="Train a model first (off: serve the current champion)."),
) -> None:
    """Steady live traffic for a long time; one JSON object on what drifted (latency per
    window, memory per process, consumer lag, loss). Exits 1 when a soak check fails."""
    import json

    from fraud_app.demo import DemoOptions
    from fraud_app.demo import run as run_demo

    options = DemoOptions(
        duration_s=duration,
        rate=rate,
        days=days,
        customers=customers,
        terminals=terminals,
        train=train,
        window_s=window,
    )
    result = run_demo(get_settings(), options, Console(stderr=True))
    print(json.dumps(result["soak"]))
    if not result["soak"]["ok"]:
        failed = [name for name, held in result["soak"]["checks"].items() if not held]
        fail(f"soak checks failed: {', '.join(failed)}")


# Each component owns its commands; this root only mounts them.
app.add_typer(producers_app)  # seed, backfill, replay, gate, archive at the top level
app.add_typer(features_app, name="features")
app.add_typer(console_app, name="console")
app.command("train", help="Run the training pipeline locally (kfp local runner) and publish the model.")(
    pipeline_train
)
app.add_typer(pipeline_app, name="pipeline", help="The Kubeflow pipeline: train, compile, submit, bench.")
app.command("monitor")(monitor_command)
app.command("skew")(skew_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
