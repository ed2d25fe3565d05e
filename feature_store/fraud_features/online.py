"""Writes feature values to the Feast online store (Redis) in Feast's own layout.

Rows go straight to the online store's batch writer with protobuf values built here, which
is several times faster than `FeatureStore.push` with a DataFrame and keeps Feast's
behaviour (an older event never overwrites a newer one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from fraudcore.features import CARD_STATE, TERMINAL_FEATURES


class OnlineWriter:
    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.provider = store._get_provider()
        self.card_view = store.get_feature_view("card_features")
        self.terminal_view = store.get_feature_view("terminal_features")

    def write_cards(
        self, card_ids: Sequence[str], event_us: np.ndarray, state: dict[str, np.ndarray]
    ) -> None:
        rows: list[tuple[EntityKey, dict[str, Value], datetime, datetime | None]] = []
        names = [n for n in CARD_STATE if n != "card_last_tx_time"]
        columns = [state[n] for n in names]
        last = state["card_last_tx_time"]
        for i, card in enumerate(card_ids):
            values = {n: Value(double_val=float(col[i])) for n, col in zip(names, columns, strict=True)}
            values["card_last_tx_time"] = Value(unix_timestamp_val=int(last[i]))
            ts = datetime.fromtimestamp(int(event_us[i]) / 1e6, UTC)
            rows.append(
                (EntityKey(join_keys=["card_id"], entity_values=[Value(string_val=card)]), values, ts, None)
            )
        if rows:
            self.provider.online_write_batch(self.store.config, self.card_view, rows, None)

    def write_terminals(
        self, terminal_ids: Sequence[str], day_start_us: np.ndarray, values_by_name: dict[str, np.ndarray]
    ) -> None:
        rows: list[tuple[EntityKey, dict[str, Value], datetime, datetime | None]] = []
        for i, terminal in enumerate(terminal_ids):
            values = {n: Value(double_val=float(values_by_name[n][i])) for n in TERMINAL_FEATURES}
            ts = datetime.fromtimestamp(int(day_start_us[i]) / 1e6, UTC)
            key = EntityKey(join_keys=["terminal_id"], entity_values=[Value(string_val=terminal)])
            rows.append((key, values, ts, None))
        if rows:
            self.provider.online_write_batch(self.store.config, self.terminal_view, rows, None)
