"""A fresh checkout's generated credentials: MinIO keys and the Redis password in .env (never
committed), the password handed to redis-server in a file only its owner reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fraud_app import devstack
from fraud_console.auth import Passwords
from fraudcore.settings import Settings

SCRAM = "FRAUD_KAFKA__LOCAL_SCRAM_PASSWORD"


@pytest.fixture(autouse=True)
def no_credentials_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("FRAUD_S3__ACCESS_KEY", "FRAUD_S3__SECRET_KEY", "FRAUD_REDIS__PASSWORD", SCRAM)
    for name in (*names, "FRAUD_CONSOLE__SESSION_SECRET", "FRAUD_CONSOLE__USERS"):
        monkeypatch.delenv(name, raising=False)


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_a_fresh_checkout_gets_keys_and_a_redis_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    assert devstack.ensure_env_file(env_file) is True
    values = read_env(env_file)
    assert set(values) == {"FRAUD_S3__ACCESS_KEY", "FRAUD_S3__SECRET_KEY", "FRAUD_REDIS__PASSWORD", SCRAM}
    assert len(values["FRAUD_REDIS__PASSWORD"]) >= 24
    assert len(values[SCRAM]) >= 24
    assert values[SCRAM] != values["FRAUD_REDIS__PASSWORD"]
    # What the settings accept (Feast's connection string refuses ',' and JSON values).
    settings = Settings(_env_file=env_file)
    assert settings.redis.password.get_secret_value() == values["FRAUD_REDIS__PASSWORD"]
    assert settings.kafka.local_scram_password.get_secret_value() == values[SCRAM]
    assert devstack.ensure_env_file(env_file) is False, "a second run changes nothing"
    assert read_env(env_file) == values


def test_an_existing_checkout_keeps_its_credentials_and_gains_a_scram_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FRAUD_S3__ACCESS_KEY=mine\nFRAUD_S3__SECRET_KEY=also-mine\n")
    assert devstack.ensure_env_file(env_file) is True
    values = read_env(env_file)
    assert set(values) == {"FRAUD_S3__ACCESS_KEY", "FRAUD_S3__SECRET_KEY", SCRAM}
    assert values["FRAUD_S3__ACCESS_KEY"] == "mine"
    assert devstack.ensure_env_file(env_file) is False


def test_the_console_gets_a_session_secret_and_a_local_analyst(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FRAUD_S3__ACCESS_KEY=mine\n")
    settings = Settings(_env_file=env_file, state_dir=tmp_path / "state")
    assert devstack.ensure_console_access(settings, env_file) is True
    password_file = devstack.console_password_file(settings)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 20
    assert password not in env_file.read_text()  # only its hash
    loaded = Settings(_env_file=env_file)  # .env as the settings read it: '$' kept literally
    assert len(loaded.console.session_secret.get_secret_value()) >= 32
    assert Passwords(loaded.console.users).verify(devstack.CONSOLE_ANALYST, password)
    assert not Passwords(loaded.console.users).verify(devstack.CONSOLE_ANALYST, password + "x")
    before = env_file.read_text()
    assert devstack.ensure_console_access(settings, env_file) is False, "a second run changes nothing"
    assert env_file.read_text() == before
    assert password_file.read_text().strip() == password


def test_redis_gets_its_password_from_a_private_file_not_the_command_line(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path, redis={"password": "Local-Redis-Password_1"})
    server = devstack.Redis(settings)
    server.home.mkdir(parents=True, exist_ok=True)
    server.prepare()
    argv = server.command()
    assert not any("Local-Redis-Password_1" in arg for arg in argv)
    assert argv[1] == str(server.auth_file)
    assert server.auth_file.read_text() == "requirepass Local-Redis-Password_1\n"
    assert stat.S_IMODE(server.auth_file.stat().st_mode) == 0o600
    assert argv[argv.index("--appendonly") : argv.index("--appendonly") + 4] == [
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
