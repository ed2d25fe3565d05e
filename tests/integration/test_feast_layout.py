"""The feature job writes Feast's Redis layout itself (``fraud_features.feast_layout``): here
Feast's own write path (``push`` to the online store) and our names must agree, against the
real Redis, so a Feast upgrade that changes its layout fails this test."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pandas as pd
import redis
from feast.data_source import PushMode
from feast.protos.feast.types.Value_pb2 import Value

from fraud_features.feast_layout import entity_key, feature_field, timestamp_field
from fraud_features.store import apply, feature_store
from fraudcore.features import CARD_STATE
from fraudcore.settings import Settings
from tests.serving_helpers import serving_settings


def test_our_keys_and_fields_are_the_ones_feast_writes(stack: Settings, unique: str, tmp_path: Path) -> None:
    settings = serving_settings(stack, unique, tmp_path, f"layout{unique}")
    apply(settings)
    store = feature_store(settings)
    values = {name: float(i) + 0.5 for i, name in enumerate(CARD_STATE)}
    row = {"card_id": "C-layout", "event_timestamp": datetime(2026, 3, 1, 12, tzinfo=UTC), **values}
    store.push("card_push", pd.DataFrame([row]), to=PushMode.ONLINE)

    client = redis.Redis(**settings.redis.client_kwargs())
    written = cast(
        dict[bytes, bytes], client.hgetall(cast(str, entity_key(store.project, "card_id", "C-layout")))
    )
    assert written, "Feast wrote no hash under the key fraud_features.feast_layout computes"
    assert timestamp_field("card_features") in written
    for name, value in values.items():
        stored = Value()
        stored.ParseFromString(written[feature_field("card_features", name)])
        assert stored.double_val == value, name
