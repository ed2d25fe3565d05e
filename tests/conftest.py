"""Shared fixtures. Tests under tests/integration talk to the real local stack."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraudcore.settings import Settings, get_settings

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder decides the marker, so no test can forget it.
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        item.add_marker(pytest.mark.integration if folder == "integration" else pytest.mark.unit)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The running local stack (started if it is not: `fraud up` is idempotent). The topics
    the tests made are deleted at the end: a broker left with thousands of partitions takes
    minutes to start."""
    from fraud_app import devstack

    devstack.ensure_env_file()
    get_settings.cache_clear()
    fresh = get_settings()
    devstack.up(fresh, report=lambda _msg: None)
    yield fresh
    _delete_test_topics(fresh)


def _delete_test_topics(settings: Settings) -> None:
    from fraudcore.kafka import admin
    from tests.helpers import CREATED_TOPICS

    if not CREATED_TOPICS:
        return
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        client.delete_topics(sorted(CREATED_TOPICS & existing), timeout_ms=60_000)
    finally:
        client.close()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, groups and object names, so tests never collide."""
    return uuid.uuid4().hex[:10]
