"""Command line of the review console; the ``fraud`` command mounts it as ``fraud console``."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fraudcore.commands import command_group, fail, start_component
from fraudcore.settings import get_settings

app = command_group("The review console: analysts' queue, verdicts to fraud-labels, the live picture.")
console = Console(stderr=True)
MIN_PASSWORD_CHARS = 12


@app.command()
def serve(
    group: str = typer.Option("console", help="Kafka consumer group on fraud-scores."),
    host: str | None = typer.Option(None, help="Address to listen on (default: console.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on (default: console.port, 8090)."),
) -> None:
    """Serve the console (one replica: it holds the case book) on console.host:console.port."""
    settings = get_settings()
    overrides = {"host": host, "port": port}
    if any(v is not None for v in overrides.values()):
        chosen = {k: v for k, v in overrides.items() if v is not None}
        settings = settings.model_copy(update={"console": settings.console.model_copy(update=chosen)})
    if not settings.console.session_secret.get_secret_value():
        fail("set FRAUD_CONSOLE__SESSION_SECRET (32+ random characters): it signs the session cookies")
    if not settings.console.users:
        fail("no analyst can sign in: set FRAUD_CONSOLE__USERS (hashes from `fraud console hash-password`)")
    from fraud_console.server import serve as run

    start_component(settings, "console")
    console.print(f"console: http://{settings.console.host}:{settings.console.port}/")
    run(settings, group)


@app.command("hash-password")
def hash_password(
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin (no prompt)."
    ),
) -> None:
    """Print an Argon2id hash of a password, for console.users (FRAUD_CONSOLE__USERS)."""
    from fraud_console.auth import hash_password as argon2_hash

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_CHARS:
        fail(f"use at least {MIN_PASSWORD_CHARS} characters")
    print(argon2_hash(password))
    console.print('add it as FRAUD_CONSOLE__USERS=\'{"<name>": "<hash>"}\' (one entry per analyst)')
