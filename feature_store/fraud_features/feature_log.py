"""The feature log: the features each transaction was served, in the offline store.

Rows are buffered and written at each checkpoint, before the offsets are committed: one
Parquet file per Kafka partition and flush, named by its partition and offset range. A
replay after a crash may log a transaction twice; readers keep one row per transaction_id.
"""

from __future__ import annotations

import io
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraud_features.events import Transaction
from fraudcore import features as F
from fraudcore.settings import Settings


class FeatureLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.frames: list[pd.DataFrame] = []

    def add(self, partition: int, txs: list[Transaction], card: dict[str, F.F64], terminal: F.F64) -> None:
        """Log the transactions of one partition with the card features they were served and
        their terminal values (one row per transaction, columns in TERMINAL_FEATURES order)."""
        t_us = np.array([tx.t_us for tx in txs], dtype=np.int64)
        request = F.request_features(np.array([tx.amount for tx in txs]), t_us, card)
        frame = pd.DataFrame(
            {
                "transaction_id": [tx.transaction_id for tx in txs],
                "card_id": [tx.card_id for tx in txs],
                "terminal_id": [tx.terminal_id for tx in txs],
                "timestamp": pd.to_datetime(t_us, unit="us", utc=True),
                "kafka_partition": partition,
                "kafka_offset": [tx.offset for tx in txs],
            }
        )
        for name in F.MODEL_FEATURES:
            if name in request:
                frame[name] = request[name]
            elif name in card:
                frame[name] = card[name]
        for j, name in enumerate(F.TERMINAL_FEATURES):
            frame[name] = terminal[:, j]
        frame["card_last_tx_time"] = card["card_last_tx_time"]
        self.frames.append(frame)

    def flush(self) -> None:
        """Write what was logged since the last flush."""
        if not self.frames:
            return
        frame = pd.concat(self.frames, ignore_index=True)
        self.frames = []
        from fraud_features.store import offline_path, storage_target

        for partition, part in frame.groupby("kafka_partition"):
            first, last = int(part["kafka_offset"].min()), int(part["kafka_offset"].max())
            name = f"p{int(cast(int, partition)):03d}-o{first:012d}-{last:012d}"
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), buf, compression="zstd")
            storage_target(
                self.settings, f"{offline_path(self.settings, 'feature_log')}/{name}.parquet", buf.getvalue()
            )
