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
    _delete_what_the_tests_made(fresh)


def _delete_what_the_tests_made(settings: Settings) -> None:
    """Everything named after this session's test suffixes (its topics end with them): the
    topics, the consumer groups, the objects in every bucket and the Redis keys (each test's
    own feature namespace and Feast project). The platform's own names never carry one."""
    import re

    import redis
    from minio.deleteobjects import DeleteObject

    from fraudcore.kafka import admin
    from fraudcore.storage import s3_client
    from tests.helpers import CREATED_TOPICS

    if not CREATED_TOPICS:
        return
    suffixes = {name.rsplit("-", 1)[1] for name in CREATED_TOPICS}
    made = re.compile("|".join(sorted(suffixes)))
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        client.delete_topics(sorted(CREATED_TOPICS & existing), timeout_ms=60_000)
        groups = [g["group_id"] for g in client.list_groups() if made.search(g["group_id"])]
        if groups:
            client.delete_groups(groups)
    finally:
        client.close()
    store = s3_client(settings)
    for bucket in (settings.s3.raw_bucket, settings.s3.features_bucket, settings.s3.models_bucket):
        if not store.bucket_exists(bucket):
            continue
        doomed = [
            o.object_name
            for o in store.list_objects(bucket, recursive=True)
            if made.search(o.object_name or "")
        ]
        for start in range(0, len(doomed), 1000):
            errors = store.remove_objects(bucket, [DeleteObject(n) for n in doomed[start : start + 1000]])
            for error in errors:
                print(f"could not delete {bucket}/{error.name}: {error.message}")
    keys_made = re.compile(made.pattern.encode())
    with redis.Redis(**settings.redis.client_kwargs()) as db:
        batch = [key for key in db.scan_iter(count=5_000) if keys_made.search(key)]
        for start in range(0, len(batch), 5_000):
            db.delete(*batch[start : start + 5_000])


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, groups and object names, so tests never collide."""
    return uuid.uuid4().hex[:10]
