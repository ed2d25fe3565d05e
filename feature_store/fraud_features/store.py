"""Feast, configured from the platform's settings (the same values feature_store.yaml reads)."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, RepoConfig
from minio import Minio

from fraudcore.features import CARD_STATE, TERMINAL_FEATURES
from fraudcore.settings import Settings
from fraudcore.storage import aws_env, storage_options


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment for the Feast CLI and for the definitions module (offline root, S3 access)."""
    s3 = settings.s3
    return {
        "FEAST_REGISTRY": str(Path(settings.features.registry).resolve())
        if "://" not in settings.features.registry
        else settings.features.registry,
        "FEAST_REDIS": settings.redis.feast_connection_string(),
        "FRAUD_FEAST_OFFLINE_ROOT": settings.features.offline_root,
        "FRAUD_FEAST_S3_ENDPOINT": s3.endpoint_url,
        "FEAST_S3_ENDPOINT_URL": s3.endpoint_url,
        **aws_env(settings),
    }


def repo_config(settings: Settings) -> RepoConfig:
    env = feast_env(settings)
    return RepoConfig(
        project=settings.features.project,
        provider="local",
        registry={"path": env["FEAST_REGISTRY"], "cache_ttl_seconds": 60},
        online_store={"type": "redis", "connection_string": env["FEAST_REDIS"]},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def feature_store(settings: Settings) -> FeatureStore:
    os.environ.update(feast_env(settings))
    return FeatureStore(repo_path=str(settings.features.repo), config=repo_config(settings))


def _definitions(settings: Settings) -> Any:
    os.environ.update(feast_env(settings))
    path = settings.features.repo / "definitions.py"
    spec = importlib.util.spec_from_file_location("fraud_feast_definitions", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def offline_path(settings: Settings, name: str) -> str:
    return f"{settings.features.offline_root.rstrip('/')}/{name}"


CARD_STATE_SCHEMA = pa.schema(
    [("card_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
    + [(n, pa.float64()) for n in CARD_STATE]
)
TERMINAL_HOURLY_SCHEMA = pa.schema(
    [("terminal_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
    + [(n, pa.float64()) for n in TERMINAL_FEATURES]
)


def write_offline(settings: Settings, name: str, frame: pd.DataFrame, schema: pa.Schema, part: str) -> str:
    """Write one Parquet part of an offline dataset (local folder or s3://)."""
    root = offline_path(settings, name)
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    target = f"{root}/{part}.parquet"
    if root.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(**storage_options(settings))
        with fs.open(target, "wb") as f:
            pq.write_table(table, f, compression="zstd")
    else:
        Path(root).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target, compression="zstd")
    return target


def apply(settings: Settings) -> list[str]:
    """`feast apply` for the platform: seed empty offline datasets if none exist, then register."""
    empty_card = pd.DataFrame({n: pd.Series(dtype=object) for n in CARD_STATE_SCHEMA.names})
    empty_terminal = pd.DataFrame({n: pd.Series(dtype=object) for n in TERMINAL_HOURLY_SCHEMA.names})
    # Feast reads a source's schema at apply time, so each dataset needs at least one file.
    write_offline(
        settings,
        "card_state",
        empty_card.astype({"event_timestamp": "datetime64[us, UTC]", "card_last_tx_time": "float64"}),
        CARD_STATE_SCHEMA,
        "_schema",
    )
    write_offline(
        settings,
        "terminal_hourly",
        empty_terminal.astype({"event_timestamp": "datetime64[us, UTC]"}),
        TERMINAL_HOURLY_SCHEMA,
        "_schema",
    )
    if "://" not in settings.features.registry:
        Path(settings.features.registry).parent.mkdir(parents=True, exist_ok=True)
    defs = _definitions(settings)
    objects = [
        defs.card,
        defs.terminal,
        defs.card_push,
        defs.terminal_push,
        defs.card_features,
        defs.terminal_features,
    ]
    feature_store(settings).apply(objects)
    return [getattr(o, "name", str(o)) for o in objects]


def storage_target(settings: Settings, target: str, data: bytes, client: Minio | None = None) -> None:
    """Write bytes to a local path or an s3:// URL (MinIO/S3) of the offline store."""
    if target.startswith("s3://"):
        from fraudcore.storage import s3_client

        bucket, _, key = target.removeprefix("s3://").partition("/")
        (client or s3_client(settings)).put_object(bucket, key, io.BytesIO(data), len(data))
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(data)
