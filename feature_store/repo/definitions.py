"""Feast definitions: entities, sources and feature views of the fraud platform.

Declarative only: nothing here does I/O when imported (`feast apply` imports this file).
Feature names come from `fraudcore.features`, the single definition every component shares.
Offline data are Parquet files written by `fraud features backfill` and the streaming job's
feature log: under FRAUD_FEAST_OFFLINE_ROOT, a local folder by default or an
`s3://offline-features/...` path on MinIO/S3 (with FRAUD_FEAST_S3_ENDPOINT).
"""

from __future__ import annotations

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, String

from fraudcore.features import CARD_STATE, TERMINAL_FEATURES, TERMINAL_VALUES_TTL_HOURS

OFFLINE_ROOT = os.environ.get("FRAUD_FEAST_OFFLINE_ROOT", "data").rstrip("/")
S3_ENDPOINT = os.environ.get("FRAUD_FEAST_S3_ENDPOINT") or None

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A payment card (the customer).",
)
terminal = Entity(
    name="terminal",
    join_keys=["terminal_id"],
    value_type=ValueType.STRING,
    description="A payment terminal (the merchant).",
)

card_batch = FileSource(
    name="card_state_log",
    path=f"{OFFLINE_ROOT}/card_state",
    timestamp_field="event_timestamp",
    s3_endpoint_override=S3_ENDPOINT,
    description="Each card's state after each of its transactions.",
)
terminal_batch = FileSource(
    name="terminal_hourly",
    path=f"{OFFLINE_ROOT}/terminal_hourly",
    timestamp_field="event_timestamp",
    s3_endpoint_override=S3_ENDPOINT,
    description="Each terminal's delayed count and risk, one row per terminal and UTC hour.",
)
card_push = PushSource(name="card_push", batch_source=card_batch)
terminal_push = PushSource(name="terminal_push", batch_source=terminal_batch)

card_features = FeatureView(
    name="card_features",
    entities=[card],
    ttl=timedelta(days=30),  # Feast's offline point-in-time joins; online reads apply no TTL
    schema=[
        Field(name="card_id", dtype=String),
        # card_last_tx_time is epoch seconds with microseconds (Feast's timestamp type keeps seconds).
        *[Field(name=name, dtype=Float64) for name in CARD_STATE],
    ],
    source=card_push,
    online=True,
    description="Card spending windows as they stand after the card's latest transaction.",
)
terminal_features = FeatureView(
    name="terminal_features",
    entities=[terminal],
    # A value is for one UTC hour; an earlier hour's is the fallback.
    ttl=timedelta(hours=TERMINAL_VALUES_TTL_HOURS),
    schema=[
        Field(name="terminal_id", dtype=String),
        *[Field(name=name, dtype=Float64) for name in TERMINAL_FEATURES],
    ],
    source=terminal_push,
    online=True,
    description="Delayed terminal activity and known-fraud risk (labels reported before the day began).",
)

# Request-time features (amount, hour, weekend...) are not a Feast object: the transformer
# computes them from the transaction itself with fraudcore.features.request_features, the
# same function training uses, so there is nothing for Feast to serve or register.
