"""The console's settings, its command line, and what it shares with the rest of the
platform: the cases topic's compaction, its metrics port, Feast's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher
from pydantic import ValidationError
from typer.testing import CliRunner

from fraud_app.cli import app as fraud
from fraud_console.auth import hash_password
from fraud_console.history import repo_config
from fraudcore.kafka import topic_config
from fraudcore.metrics import prometheus_config
from fraudcore.settings import ConsoleSettings, Settings

HASH = hash_password("a long enough password")


@pytest.fixture(autouse=True)
def no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Away from the checkout's .env: `fraud up` writes a console secret and user there,
    which the settings would merge with each test's own."""
    monkeypatch.chdir(tmp_path)


def test_users_must_have_valid_names_and_argon2_hashes() -> None:
    assert ConsoleSettings(users={"alice": HASH, "bob.smith@bank": HASH}).users["alice"] == HASH
    with pytest.raises(ValidationError, match="not an Argon2 hash"):
        ConsoleSettings(users={"alice": "plain-text-password"})
    with pytest.raises(ValidationError, match="not a valid analyst name"):
        ConsoleSettings(users={"al ice": HASH})


def test_a_short_session_secret_is_refused_without_being_echoed() -> None:
    with pytest.raises(ValidationError) as error:
        ConsoleSettings(session_secret="tooshort-secret")
    assert "at least 32 characters" in str(error.value)
    assert "tooshort-secret" not in str(error.value)


def test_users_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_CONSOLE__USERS", f'{{"alice": "{HASH}"}}')
    monkeypatch.setenv("FRAUD_CONSOLE__SESSION_SECRET", "x" * 32)
    settings = Settings()
    assert settings.console.users == {"alice": HASH}
    assert settings.console.session_secret.get_secret_value() == "x" * 32
    assert "x" * 32 not in repr(settings)


def test_the_cases_topic_is_compacted_and_created_with_the_platforms_topics() -> None:
    topics = Settings().topics
    assert topics.cases in topics.all()
    assert topic_config(topics.cases) == {"cleanup.policy": "compact"}
    assert topic_config(topics.labels) == {}


def test_the_console_registers_its_metrics_port() -> None:
    settings = Settings()
    ports = [port for _, port in settings.metrics_ports.items()]
    assert len(set(ports)) == len(ports)
    assert settings.console.port not in ports
    jobs = {job["job_name"]: job for job in yaml.safe_load(prometheus_config(settings))["scrape_configs"]}
    assert jobs["console"]["static_configs"] == [{"targets": [f"127.0.0.1:{settings.metrics_ports.console}"]}]


def test_feast_is_configured_as_the_feature_layer_configures_it() -> None:
    from fraud_features.store import repo_config as feature_layer_config

    settings = Settings()
    assert repo_config(settings).model_dump() == feature_layer_config(settings).model_dump()


def test_hash_password_prints_a_hash_of_the_password() -> None:
    result = CliRunner().invoke(
        fraud, ["console", "hash-password", "--password-stdin"], input="s3cret passphrase\n"
    )
    assert result.exit_code == 0, result.output
    hashed = result.stdout.splitlines()[0]
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "s3cret passphrase")
    short = CliRunner().invoke(fraud, ["console", "hash-password", "--password-stdin"], input="short\n")
    assert short.exit_code == 1
    assert "at least 12 characters" in short.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRAUD_CONSOLE__USERS": f'{{"alice": "{HASH}"}}'}, "FRAUD_CONSOLE__SESSION_SECRET"),
        ({"FRAUD_CONSOLE__SESSION_SECRET": "y" * 32}, "FRAUD_CONSOLE__USERS"),
    ],
)
def test_serve_refuses_to_start_half_configured(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fraudcore.settings import get_settings

    for name in ("FRAUD_CONSOLE__USERS", "FRAUD_CONSOLE__SESSION_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(fraud, ["console", "serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert message in " ".join(result.stdout.split())
