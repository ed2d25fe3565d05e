"""The dataset step reads the raw-event archive on MinIO (the archiver's layout), drops
duplicated rows, and builds the same training data as from the events themselves."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraud_pipelines.data import RawData, build_datasets, load_archive, plan_windows, read_parquet, simulate
from fraud_pipelines.steps import dataset_step
from fraud_producers.archive import LABELS, TRANSACTIONS, ArchiveKind, object_names
from fraudcore.features import MODEL_FEATURES
from fraudcore.settings import Settings
from fraudcore.storage import s3_client

SIMULATION = {"seed": 5, "n_customers": 150, "n_terminals": 300, "days": 14, "start": "2024-05-01"}


def _table(kind: ArchiveKind, frame: pd.DataFrame, offsets: np.ndarray) -> pa.Table:
    columns = {}
    for f in kind.schema:
        if f.name == "kafka_partition":
            columns[f.name] = pa.array(np.zeros(len(frame), np.int32))
        elif f.name == "kafka_offset":
            columns[f.name] = pa.array(offsets.astype(np.int64))
        elif pa.types.is_timestamp(f.type):
            stamps = pd.to_datetime(frame[f.name], utc=True).astype("datetime64[us, UTC]")
            columns[f.name] = pa.array(stamps, f.type)
        elif f.name in frame:
            columns[f.name] = pa.array(frame[f.name].tolist(), f.type)
        else:  # a label's optional verdict fields: absent on chargebacks
            columns[f.name] = pa.nulls(len(frame), f.type)
    return pa.Table.from_pydict(columns, schema=kind.schema)


def _write(settings: Settings, kind: ArchiveKind, table: pa.Table, block: int, prefix: str) -> None:
    client = s3_client(settings)

    def put(item: tuple[str, pa.Table]) -> None:
        buffer = io.BytesIO()
        pq.write_table(item[1], buffer)
        client.put_object(settings.s3.raw_bucket, item[0], io.BytesIO(buffer.getvalue()), buffer.tell())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, object_names(kind, table, 0, block, prefix).items()))


@pytest.fixture
def archive(stack: Settings, unique: str) -> Iterator[tuple[str, RawData]]:
    prefix = f"test-pipeline-archive-{unique}"
    raw = simulate(SIMULATION, delay_days=2)
    tx = raw.transactions
    _write(stack, TRANSACTIONS, _table(TRANSACTIONS, tx, np.arange(len(tx))), 0, f"{prefix}/")
    # A crash window rewrote the first 500 events into another block: duplicates in the archive.
    _write(stack, TRANSACTIONS, _table(TRANSACTIONS, tx.iloc[:500], np.arange(500)), 1, f"{prefix}/")
    labels = raw.labels
    _write(stack, LABELS, _table(LABELS, labels, np.arange(len(labels))), 0, f"{prefix}/")
    yield prefix, raw
    client = s3_client(stack)
    for obj in client.list_objects(stack.s3.raw_bucket, prefix=f"{prefix}/", recursive=True):
        client.remove_object(stack.s3.raw_bucket, obj.object_name)


def test_archive_loads_once_per_event(stack: Settings, archive: tuple[str, RawData]) -> None:
    prefix, raw = archive
    loaded = load_archive(stack, prefix, delay_days=2)
    assert len(loaded.transactions) == len(raw.transactions)
    assert loaded.transactions["transaction_id"].is_unique
    assert set(loaded.labels["transaction_id"]) == set(raw.labels["transaction_id"])
    assert loaded.first_day == pd.Timestamp("2024-05-01", tz="UTC")
    # The newest day is taken as incomplete and its last two days as lacking labels.
    assert loaded.complete_end == pd.Timestamp("2024-05-12", tz="UTC")


def test_dataset_step_on_the_archive_matches_the_events(
    stack: Settings, archive: tuple[str, RawData], tmp_path: Path
) -> None:
    prefix, raw = archive
    params = {"train_days": 3, "delay_days": 2, "test_days": 3, "history_days": 0, "burn_in_days": 3}
    info = dataset_step(
        str(tmp_path / "train"),
        str(tmp_path / "test"),
        source="archive",
        source_path=prefix,
        settings_factory=lambda: stack,
        log=lambda _m: None,
        **params,  # type: ignore[arg-type]
    )
    # Auto windows: the test ends where labels are complete (2024-05-12), so it starts on 05-09.
    assert info["windows"]["test_start"] == "2024-05-09"
    test, _ = read_parquet(tmp_path / "test")

    windows = plan_windows("2024-05-01", "2024-05-15", train_start="2024-05-04", **params)
    expected = build_datasets(raw, windows).test
    assert windows.test_start + timedelta(0) == pd.Timestamp("2024-05-09", tz="UTC")
    assert list(test["transaction_id"]) == list(expected["transaction_id"])
    assert np.allclose(test[MODEL_FEATURES].to_numpy(), expected[MODEL_FEATURES].to_numpy())
    assert (test["is_fraud"].to_numpy() == expected["is_fraud"].to_numpy()).all()
