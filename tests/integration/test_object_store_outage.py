"""MinIO killed for a minute while transactions stream in at 200/s: the archiver and the
streaming feature job ride it out. Once MinIO is back, the archive holds every transaction
exactly once, and the feature log (the offline copy of what was served) holds every
transaction, with the values an offline recomputation gives. Meanwhile a model swap waits
(the loaded model keeps scoring) and completes once MinIO is back, and training stops with
one clear line."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraud_app import devstack
from fraud_predictor.model import FraudPredictor, OnnxModel
from fraud_predictor.storage import ModelFiles
from fraud_producers.encoding import to_event_bytes
from fraudcore import features as F
from fraudcore.kafka import producer
from fraudcore.settings import Settings
from fraudcore.storage import s3_client
from tests.helpers import env_for, isolated, simulated
from tests.integration.test_feature_job import _assert_same_features
from tests.serving_helpers import N_FEATURES, make_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 200  # transactions per second
STREAM_S = 100  # the outage starts once both workers write (process start-up on a busy machine)
DOWN_S = 60
DRAIN_DEADLINE_S = 120


def _settings(stack: Settings, unique: str, tmp_path: Path) -> Settings:
    from fraud_features.store import apply

    base = isolated(stack, unique)
    features = base.features.model_copy(
        update={
            "namespace": f"t{unique}",
            "offline_root": f"s3://{stack.s3.features_bucket}/tests/{unique}",
            "checkpoint_interval_s": 1.0,
            "project": f"t{unique}",
            "registry": str(tmp_path / "registry.db"),  # the outage is the object store's, not Feast's
        }
    )
    settings = base.model_copy(update={"features": features})
    apply(settings)
    return settings


def _objects(settings: Settings, bucket: str, prefix: str) -> pd.DataFrame:
    client = s3_client(settings)
    frames = [
        pq.read_table(io.BytesIO(client.get_object(bucket, o.object_name).read())).to_pandas()
        for o in client.list_objects(bucket, prefix=prefix, recursive=True)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["transaction_id"])


def _paced(settings: Settings, frame: pd.DataFrame, stop_at: float) -> None:
    """The frame's transactions at RATE per second, keyed by card."""
    prod = producer(settings)
    values = to_event_bytes(frame)
    start = time.monotonic()
    for i, (card, value) in enumerate(zip(frame["card_id"], values, strict=True)):
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        prod.send(settings.topics.transactions.name, key=card.encode(), value=value)
        if time.monotonic() > stop_at:
            break
    prod.flush()


def _wait_for(condition: Callable[[], bool], deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(2)
    return condition()


def _env(settings: Settings) -> dict[str, str]:
    env = env_for(settings)
    features = settings.features
    env.update(
        {
            "FRAUD_FEATURES__NAMESPACE": features.namespace,
            "FRAUD_FEATURES__OFFLINE_ROOT": features.offline_root,
            "FRAUD_FEATURES__CHECKPOINT_INTERVAL_S": str(features.checkpoint_interval_s),
            "FRAUD_FEATURES__PROJECT": features.project,
            "FRAUD_FEATURES__REGISTRY": features.registry,
            "FRAUD_METRICS_PORTS__ARCHIVER": "0",
            "FRAUD_METRICS_PORTS__FEATURE_JOB": "0",
        }
    )
    return env


_ROW = np.zeros((1, N_FEATURES), dtype=np.float32)


def _predictor_with_a_swap_ready(
    settings: Settings, prefix: str
) -> tuple[FraudPredictor, threading.Thread, list[float]]:
    """A predictor serving v1 from memory, v2 waiting in MinIO, and the thread that will
    swap to it (as the predictor's model-events watcher does on champion-changed)."""
    client = s3_client(settings)
    data = make_model("v2", seed=2)
    key = f"{prefix}/models/v2/model.onnx"
    client.put_object(settings.s3.models_bucket, key, io.BytesIO(data), len(data))
    predictor = FraudPredictor("fraud", "unused", settings)
    predictor.install(OnnxModel.from_files(ModelFiles("memory", make_model("v1", seed=1)), "v1"))
    uri = f"s3://{settings.s3.models_bucket}/{key}"
    swap = threading.Thread(target=predictor.update, args=(uri, "v2"), daemon=True)
    return predictor, swap, []


def test_archiver_and_feature_job_ride_out_a_minute_without_minio(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    settings = _settings(stack, unique, tmp_path)
    transactions, _labels = simulated(days=60, customers=200)
    transactions = transactions.sort_values("timestamp").head(RATE * STREAM_S).reset_index(drop=True)
    archive_prefix = f"tests/{unique}"
    fraud = [sys.executable, "-m", "fraud_app.cli"]
    commands = {
        "archiver": [
            *fraud,
            "archive",
            "--group",
            f"arch-{unique}",
            "--block-size",
            "4000",
            "--flush-interval-s",
            "1",
            "--prefix",
            archive_prefix,
        ],
        "feature-job": [*fraud, "features", "stream", "--group", f"fj-{unique}"],
    }
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    workers = {
        name: subprocess.Popen(
            argv, env=_env(settings), stdout=logs[name].open("wb"), stderr=subprocess.STDOUT
        )
        for name, argv in commands.items()
    }

    def tails() -> str:
        return "\n".join(f"--- {name} ---\n{path.read_text()[-3000:]}" for name, path in logs.items())

    minio = devstack.MinIO(stack)
    producing = threading.Thread(
        target=_paced, args=(settings, transactions, time.monotonic() + STREAM_S + 30), daemon=True
    )
    archived = lambda: _objects(settings, settings.s3.raw_bucket, f"{archive_prefix}/transactions/")  # noqa: E731
    logged = lambda: _objects(settings, settings.s3.features_bucket, f"tests/{unique}/feature_log/")  # noqa: E731
    predictor, swap, scored = _predictor_with_a_swap_ready(settings, archive_prefix)
    try:
        producing.start()
        # The outage starts once both are writing (a process takes a while to start).
        assert _wait_for(lambda: len(archived()) > 0 and len(logged()) > 0, 90), tails()
        pid = minio.pid()
        assert pid is not None, "the local MinIO is not running"
        os.killpg(pid, signal.SIGKILL)
        outage_started = time.monotonic()
        swap.start()  # a champion-changed event arrives while MinIO is away
        training = subprocess.run(
            [*fraud, "train", "--source", "archive", "--source-path", archive_prefix],
            env=_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = " ".join((training.stdout + training.stderr).split())
        assert training.returncode == 1, said
        assert "training needs the object store" in said, said
        assert "Traceback" not in said
        while time.monotonic() < outage_started + DOWN_S:
            scored.append(predictor.current.scores(_ROW)[0])  # the loaded model keeps serving
            assert predictor.current.version == "v1"
            time.sleep(1)
        assert swap.is_alive(), "the swap should still be waiting for MinIO"
        dead = [name for name, proc in workers.items() if proc.poll() is not None]
        assert not dead, f"{dead} died while MinIO was down\n{tails()}"
    finally:
        minio.start()  # the rest of the suite needs it, whatever happened here
        if any(proc.poll() is not None for proc in workers.values()):
            for proc in workers.values():
                proc.kill()
    producing.join()
    swap.join(timeout=60)
    assert predictor.current.version == "v2", "the swap completed once MinIO was back"
    assert len(scored) >= DOWN_S - 5

    try:
        ids = set(transactions["transaction_id"])
        assert _wait_for(lambda: len(archived()) >= len(ids), DRAIN_DEADLINE_S), tails()
        assert _wait_for(lambda: ids <= set(logged()["transaction_id"]), DRAIN_DEADLINE_S), tails()
    finally:
        for proc in workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(timeout=60)

    for name, path in logs.items():
        assert "object store unavailable" in path.read_text(), f"{name} never met the outage"
    archive = archived()
    assert len(archive) == len(ids), "every transaction once"
    assert set(archive["transaction_id"]) == ids
    served = logged().drop_duplicates("transaction_id")  # a replay may log a row twice (see FeatureLog)
    expected = F.offline_features(transactions, _labels.iloc[0:0])
    _assert_same_features(served, expected)
