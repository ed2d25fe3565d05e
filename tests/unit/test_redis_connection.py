"""Redis connection settings: one password and TLS setting reach every client the platform
creates, redis-py's and Feast's alike, and the password never shows in a repr or an error."""

from __future__ import annotations

from typing import Any

import pytest
from feast.infra.online_stores.redis import RedisOnlineStore
from pydantic import ValidationError

from fraud_app.devstack import Redis as LocalRedis
from fraud_features.feast_layout import redis_client_kwargs
from fraud_features.store import feast_env, repo_config
from fraudcore.settings import RedisSettings, Settings

PASSWORD = "Zq7-long_random-Token"


def settings_with_redis(**redis: Any) -> Settings:
    return Settings(_env_file=None, redis={"host": "redis", "port": 6379, **redis})


def feast_parsed(connection_string: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    return nodes, params


def test_without_password_or_tls_the_connection_string_is_host_and_port() -> None:
    redis = settings_with_redis().redis
    assert redis.feast_connection_string() == "redis:6379"
    assert redis.client_kwargs() == {"host": "redis", "port": 6379}


def test_the_password_reaches_feast_and_redis_py() -> None:
    redis = settings_with_redis(password=PASSWORD).redis
    assert redis.feast_connection_string() == f"redis:6379,password={PASSWORD}"
    nodes, params = feast_parsed(redis.feast_connection_string())
    assert nodes == [{"host": "redis", "port": "6379"}]
    assert params == {"password": PASSWORD}
    assert redis.client_kwargs()["password"] == PASSWORD


def test_tls_with_and_without_a_ca_file() -> None:
    public_ca = settings_with_redis(password=PASSWORD, ssl=True).redis
    assert public_ca.feast_connection_string() == f"redis:6379,ssl=true,password={PASSWORD}"
    assert feast_parsed(public_ca.feast_connection_string())[1] == {"ssl": True, "password": PASSWORD}
    assert public_ca.url == "rediss://redis:6379/0"

    own_ca = settings_with_redis(ssl=True, ssl_ca_certs="/etc/fraud/redis-ca/server-ca.pem").redis
    assert feast_parsed(own_ca.feast_connection_string())[1] == {
        "ssl": True,
        "ssl_ca_certs": "/etc/fraud/redis-ca/server-ca.pem",
    }
    # A CA file without TLS means nothing: it is not passed on.
    plain = settings_with_redis(ssl=False, ssl_ca_certs="/etc/ca.pem").redis
    assert plain.feast_connection_string() == "redis:6379"
    assert "ssl_ca_certs" not in plain.client_kwargs()


@pytest.mark.parametrize(
    "redis",
    [
        {},
        {"password": PASSWORD},
        {"ssl": True},
        {"password": PASSWORD, "ssl": True, "ssl_ca_certs": "/ca.pem"},
    ],
)
def test_feast_and_the_platforms_clients_connect_alike(redis: dict[str, Any]) -> None:
    """The feature job's writer parses Feast's string; the other clients use client_kwargs."""
    settings = settings_with_redis(**redis)
    connection_string = repo_config(settings).online_store.connection_string
    assert connection_string == settings.redis.feast_connection_string()
    assert feast_env(settings)["FEAST_REDIS"] == connection_string
    assert redis_client_kwargs(connection_string) == settings.redis.client_kwargs()


def test_no_empty_password_is_ever_written() -> None:
    for redis in ({}, {"password": ""}, {"ssl": True}):
        settings = settings_with_redis(**redis)
        assert "password" not in settings.redis.feast_connection_string()
        assert "password" not in settings.redis.client_kwargs()
        assert "--requirepass" not in LocalRedis(settings).command()


def test_the_password_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_REDIS__PASSWORD", PASSWORD)
    monkeypatch.setenv("FRAUD_REDIS__SSL", "true")
    redis = Settings(_env_file=None).redis
    assert redis.password.get_secret_value() == PASSWORD
    assert redis.client_kwargs()["ssl"] is True


def test_the_password_never_shows() -> None:
    settings = settings_with_redis(password=PASSWORD)
    for text in (
        repr(settings),
        str(settings),
        repr(settings.redis),
        settings.model_dump_json(),
        settings.redis.url,
    ):
        assert PASSWORD not in text


@pytest.mark.parametrize("password", ["with,comma", "123456", "true", "null", '"quoted"'])
def test_passwords_feast_would_alter_are_refused_without_echoing_them(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError) as direct:
        RedisSettings(password=password)
    assert "redis.password" in str(direct.value)
    monkeypatch.setenv("FRAUD_REDIS__PASSWORD", password)
    with pytest.raises(ValidationError) as from_env:
        Settings(_env_file=None)
    assert password not in str(from_env.value)
