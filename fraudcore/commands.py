"""What every component's command line shares: clear errors, durations, and the start of a
long-running component (logging and its Prometheus endpoint)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import NoReturn

import typer
from rich.console import Console

from fraudcore.metrics import serve_metrics
from fraudcore.settings import Settings

console = Console()


def command_group(help_text: str) -> typer.Typer:
    """A component's (or the root's) Typer app, configured the platform's way: ``--help``
    when called bare, plain errors instead of rich tracebacks, no shell-completion flags."""
    return typer.Typer(
        help=help_text, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
    )


def fail(message: str) -> NoReturn:
    """End a command with a one-line error (exit 1), never a stack trace."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def parse_duration(value: str) -> timedelta:
    """``7d``, ``12h``, ``90s``... as a timedelta, or a usage error that says what was wrong."""
    import pandas as pd

    try:
        return pd.Timedelta(value).to_pytimedelta()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a duration (examples: 7d, 12h, 90s)") from None


def start_component(settings: Settings, component: str) -> int:
    """Logging for a long-running component and its metrics endpoint; returns the port."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # A line per HTTP call (the dispatcher's deliveries) would cost more than the call.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    port = serve_metrics(settings, component)
    console.print(f"{component}: metrics on :{port}/metrics")
    return port
