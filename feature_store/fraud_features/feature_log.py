"""The feature log: the features each transaction was served, in the offline store.

Rows are buffered and written at each checkpoint, before the offsets are committed: one
Parquet file per Kafka partition and flush, named by its partition and offset range. A
replay after a crash may log a transaction twice, with the same features; readers keep one
row per transaction_id. Rows computed after Redis lost the job's state are never written
(the job checks its state marks first, and discards them when it rebuilds).
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from minio import Minio

from fraud_features.events import Transaction
from fraudcore import features as F
from fraudcore.settings import Settings
from fraudcore.storage import OBJECT_STORE_RETRIES, describe, s3_client, store_unavailable

log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 20.0  # waits between writes while the object store is away


class FeatureLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Per partition, the logged batches' columns; one DataFrame per partition and flush
        # (building one per small batch at live rates was most of the job's time).
        self.pending: dict[int, list[dict[str, npt.NDArray[Any]]]] = {}
        self.s3: Minio | None = None
        self.retry_at = 0.0  # while the object store is away: no write before this (monotonic)
        self.retry_delay_s = RETRY_FIRST_S

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

    def discard(self) -> None:
        """Drop the rows not written yet. Only for a rewind to the last checkpoint or earlier:
        their records are read again and logged then."""
        self.pending = {}

    def flush(self) -> bool:
        """Write what was logged since the last flush: a Parquet file per partition.

        False while the object store is unavailable: the rows not written stay pending for a
        later flush (tried again after a delay that doubles up to 20 s, so the job keeps
        serving features meanwhile), and the caller must not checkpoint past them."""
        if not self.pending:
            return True
        if time.monotonic() < self.retry_at:
            return False
        from fraud_features.store import offline_path, storage_target

        if self.s3 is None:
            # One quick attempt per write: this runs on the job's loop, which retries later.
            self.s3 = s3_client(self.settings, fail_fast=True)
        pending, self.pending = self.pending, {}
        partitions = sorted(pending)
        for i, partition in enumerate(partitions):
            batches = pending[partition]
            part = pd.DataFrame({name: np.concatenate([b[name] for b in batches]) for name in batches[0]})
            part["timestamp"] = pd.to_datetime(part["timestamp"], unit="us", utc=True)
            first, last = int(part["kafka_offset"].min()), int(part["kafka_offset"].max())
            name = f"p{partition:03d}-o{first:012d}-{last:012d}"
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), buf, compression="zstd")
            try:
                storage_target(
                    self.settings,
                    f"{offline_path(self.settings, 'feature_log')}/{name}.parquet",
                    buf.getvalue(),
                    client=self.s3,
                )
            except Exception as exc:
                self.pending = {p: pending[p] for p in partitions[i:]}
                if not store_unavailable(exc):
                    raise
                OBJECT_STORE_RETRIES.labels("feature-job").inc()
                log.warning(
                    "feature log: object store unavailable (%s); %d rows wait, next try in %.0f s",
                    describe(exc),
                    sum(len(b["transaction_id"]) for batches in self.pending.values() for b in batches),
                    self.retry_delay_s,
                )
                self.retry_at = time.monotonic() + self.retry_delay_s
                self.retry_delay_s = min(self.retry_delay_s * 2, RETRY_MAX_S)
                return False
        self.retry_delay_s = RETRY_FIRST_S
        return True
