"""Command line of the model monitor; the ``fraud`` command mounts it as ``fraud monitor``."""

from __future__ import annotations

import typer
from rich.console import Console

from fraudcore.commands import start_component
from fraudcore.settings import get_settings

console = Console()


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
