"""The feature log: the features each transaction was served, in the offline store.

Rows are buffered and written at each checkpoint, before the offsets are committed: one
Parquet file per Kafka partition and flush, named by its partition and offset range. A
replay after a crash may log a transaction twice; readers keep one row per transaction_id.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraud_features.events import Transaction
from fraudcore import features as F
from fraudcore.settings import Settings


class FeatureLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Per partition, the logged batches' columns; one DataFrame per partition and flush
        # (building one per small batch at live rates was most of the job's time).
        self.pending: dict[int, list[dict[str, npt.NDArray[Any]]]] = {}

    def add(self, partition: int, txs: list[Transaction], card: dict[str, F.F64], terminal: F.F64) -> None:
        """Log the transactions of one partition with the card features they were served and
        their terminal values (one row per transaction, columns in TERMINAL_FEATURES order)."""
        t_us = np.array([tx.t_us for tx in txs], dtype=np.int64)
        request = F.request_features(np.array([tx.amount for tx in txs]), t_us, card)
        columns: dict[str, npt.NDArray[Any]] = {
            "transaction_id": np.array([tx.transaction_id for tx in txs], dtype=object),
            "card_id": np.array([tx.card_id for tx in txs], dtype=object),
            "terminal_id": np.array([tx.terminal_id for tx in txs], dtype=object),
            "timestamp": t_us,  # µs; a UTC timestamp column once written
            "kafka_partition": np.full(len(txs), partition, dtype=np.int64),
            "kafka_offset": np.array([tx.offset for tx in txs], dtype=np.int64),
        }
        for name in F.MODEL_FEATURES:
            if name in request:
                columns[name] = request[name]
            elif name in card:
                columns[name] = card[name]
        for j, name in enumerate(F.TERMINAL_FEATURES):
            columns[name] = terminal[:, j]
        columns["card_last_tx_time"] = card["card_last_tx_time"]
        self.pending.setdefault(partition, []).append(columns)

    def flush(self) -> None:
        """Write what was logged since the last flush: a Parquet file per partition."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        from fraud_features.store import offline_path, storage_target

        for partition, batches in sorted(pending.items()):
            part = pd.DataFrame({name: np.concatenate([b[name] for b in batches]) for name in batches[0]})
            part["timestamp"] = pd.to_datetime(part["timestamp"], unit="us", utc=True)
            first, last = int(part["kafka_offset"].min()), int(part["kafka_offset"].max())
            name = f"p{partition:03d}-o{first:012d}-{last:012d}"
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), buf, compression="zstd")
            storage_target(
                self.settings, f"{offline_path(self.settings, 'feature_log')}/{name}.parquet", buf.getvalue()
            )
