"""Feast's Redis layout, the one place the platform depends on it.

The feature job writes online values itself (one Lua call per batch, several times faster
than ``FeatureStore.push``), so it must name the hash and its fields exactly as Feast's Redis
online store does. Those names come from Feast's private helpers; this module is the only
user of them, and ``tests/integration/test_feast_layout.py`` compares its names with what
Feast's own write path produces, so a Feast upgrade that changes the layout fails a test,
not production."""

from __future__ import annotations

from typing import Any

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value


def entity_key(project: str, join_key: str, value: str) -> bytes:
    """The Redis key of one entity's hash (every feature view of that entity lives in it)."""
    return bytes(
        _redis_key(project, EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)]))
    )


def feature_field(view: str, feature: str) -> bytes:
    """The hash field that holds ``feature`` of ``view`` (a serialized ``Value``)."""
    return bytes(_mmh3(f"{view}:{feature}"))


def timestamp_field(view: str) -> bytes:
    """The hash field that holds the event time of ``view``'s values (a serialized ``Timestamp``)."""
    return f"_ts:{view}".encode()


def redis_client_kwargs(connection_string: str) -> dict[str, Any]:
    """``redis.Redis`` arguments for Feast's ``connection_string`` (host, port, password, TLS...),
    parsed by Feast's own parser, so a writer connects exactly as Feast does."""
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    return {**params, "host": nodes[0]["host"], "port": int(nodes[0].get("port") or 6379)}
