"""The archive against real Kafka and MinIO: every event exactly once, even across SIGKILL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from fraud_producers.archive import Archiver
from fraudcore.kafka import producer
from fraudcore.settings import Settings
from fraudcore.storage import s3_client
from tests.helpers import dumps, env_for, isolated, transaction


def _produce(settings: Settings, start: int, count: int) -> set[str]:
    prod = producer(settings)
    ids = set()
    t0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    for i in range(start, start + count):
        event = transaction(i, ts=t0 + timedelta(seconds=2 * i))  # spans several hours and a date change
        prod.send(settings.topics.transactions.name, key=event["card_id"].encode(), value=dumps(event))
        ids.add(event["transaction_id"])
    prod.flush()
    prod.close()
    return ids


def _archived(settings: Settings, prefix: str) -> pd.DataFrame:
    client = s3_client(settings)
    frames = []
    for obj in client.list_objects(settings.s3.raw_bucket, prefix=f"{prefix}/transactions/", recursive=True):
        data = client.get_object(settings.s3.raw_bucket, obj.object_name).read()
        frames.append(pq.read_table(io.BytesIO(data)).to_pandas())
    return pd.concat(frames) if frames else pd.DataFrame(columns=["transaction_id"])


def _archiver_cmd(prefix: str, unique: str, idle_exit_s: float | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "fraud_app.cli",
        "archive",
        "--group",
        f"arch-{unique}",
        "--block-size",
        "700",
        "--flush-interval-s",
        "0.3",
        "--prefix",
        prefix,
    ]
    return cmd + (["--idle-exit-s", str(idle_exit_s)] if idle_exit_s else [])


def test_archive_survives_sigkill_without_loss_or_duplicates(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    settings = isolated(stack, unique)
    prefix = f"tests/{unique}"
    env = env_for(settings)
    env["FRAUD_METRICS_PORTS__ARCHIVER"] = "0"  # any free port: two archivers may overlap briefly
    log = (tmp_path / "archiver.log").open("wb")
    proc = subprocess.Popen(_archiver_cmd(prefix, unique), env=env, stdout=log, stderr=subprocess.STDOUT)
    ids = _produce(settings, 0, 5000)
    # Let it write some blocks, then kill it without warning.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_archived(settings, prefix)) < 1500:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _archived(settings, prefix)
    assert len(partial) > 0, (tmp_path / "archiver.log").read_text()

    ids |= _produce(settings, 5000, 5000)
    done = subprocess.run(
        _archiver_cmd(prefix, unique, idle_exit_s=4), env=env, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr

    archived = _archived(settings, prefix)
    assert len(archived) == 10_000
    assert set(archived["transaction_id"]) == ids  # none missing
    assert archived["transaction_id"].is_unique  # none twice
    assert archived.groupby("kafka_partition")["kafka_offset"].apply(lambda s: s.is_unique).all()


def test_archive_layout_is_readable_by_pandas_pyarrow_and_duckdb(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    settings = isolated(stack, unique)
    prefix = f"tests/{unique}"
    ids = _produce(settings, 0, 300)
    archiver = Archiver(settings, group=f"arch-{unique}", block_size=1000, flush_interval_s=60, prefix=prefix)
    archiver.run(threading.Event(), idle_exit_s=2)
    assert archiver.written == 300

    client = s3_client(settings)
    names = [
        o.object_name
        for o in client.list_objects(settings.s3.raw_bucket, prefix=f"{prefix}/", recursive=True)
    ]
    assert names
    assert all("/transactions/dt=2026-03-0" in n and "/hour=" in n for n in names)
    local = tmp_path / "archive"
    for name in names:
        target = local / name.removeprefix(f"{prefix}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(settings.s3.raw_bucket, name, str(target))
    frame = pd.read_parquet(local / "transactions")
    assert set(frame["transaction_id"]) == ids
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert {"dt", "hour"} <= set(frame.columns)  # hive partitions
    hours = frame.groupby(["dt", "hour"], observed=True)["timestamp"].agg(["min", "max"])
    for key, row in hours.iterrows():
        dt, hour = str(key[0]), int(key[1])  # type: ignore[index]
        assert row["min"].strftime("%Y-%m-%d/%H") == f"{dt}/{hour:02d}"
    rows = duckdb.connect().execute(
        f"select count(*) from read_parquet('{local}/transactions/*/*/*.parquet')"
    )
    count = rows.fetchall()[0]
    assert count == (300,)
