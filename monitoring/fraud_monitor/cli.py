"""Command line of the model monitor; the ``fraud`` command mounts it as ``fraud monitor``."""

from __future__ import annotations

import typer
from rich.console import Console

from fraudcore.commands import start_component
from fraudcore.settings import get_settings

console = Console()


def skew(
    sample: int = typer.Option(1_000, help="How many of the newest decisions to check."),
    archive_prefix: str = typer.Option("", help="Folder of the raw-event archive in its bucket."),
    json_: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Training/serving skew: the newest decisions' served features against the same features
    recomputed from the raw-event archive with the training code (fraudcore.features)."""
    import json

    from rich.table import Table

    from fraud_monitor.skew import TOLERANCE, check

    report = check(get_settings(), sample, archive_prefix)
    if json_:
        print(json.dumps(report.to_dict()))
        return
    table = Table(title=f"skew: {report.checked:,} decisions checked (tolerance {TOLERANCE:g}, relative)")
    table.add_column("feature")
    table.add_column("decisions off", justify="right")
    table.add_column("largest difference", justify="right")
    for name, count in sorted(report.mismatches.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{count:,}", f"{report.max_difference.get(name, float('nan')):.6g}")
    console.print(table)
    console.print(
        f"skew rate {report.skew_rate:.2%} of {report.checked:,} (card and request-time features); "
        f"terminal values at their watermark {report.terminal_at_watermark:,}, off {report.terminal_skewed:,}; "
        f"fallbacks not compared {report.fallbacks:,}; not archived yet {report.not_archived:,}"
    )


def monitor(
    group: str = typer.Option(
        "model-monitor", help="Kafka consumer group, and the namespace of its Redis state."
    ),
) -> None:
    """Model monitor: live precision, recall, alert rate, average precision and card
    precision@100 per model version from the delayed labels, the label backlog, and the PSI of
    every input and of the score against the model's training data (Prometheus metrics)."""
    from fraud_monitor.service import ModelMonitor
    from fraudcore.service import stop_on_signals

    start_component(get_settings(), "model_monitor")
    service = ModelMonitor(get_settings(), group=group)
    service.run(stop_on_signals())
    console.print(f"counted {service.counted} decisions with their labels; read {service.labels_read} labels")
