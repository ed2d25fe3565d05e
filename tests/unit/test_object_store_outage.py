"""What the writers do while the object store is away: wait and retry, never drop or commit
past what they have not stored (the outage itself is exercised against MinIO in
tests/integration/test_object_store_outage.py)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import urllib3
from minio.error import S3Error

from fraud_features.feature_log import FeatureLog
from fraudcore.settings import Settings
from fraudcore.storage import OBJECT_STORE_RETRIES, store_unavailable, until_store_answers

REFUSED = urllib3.exceptions.MaxRetryError(None, "/bucket/key", reason=ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]


def s3_error(code: str) -> S3Error:
    return S3Error(None, code, "message", "/bucket/key", "request", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "wait"),
    [
        (REFUSED, True),
        (urllib3.exceptions.ProtocolError("connection reset"), True),
        (ConnectionResetError(104, "reset"), True),
        (s3_error("SlowDown"), True),
        (s3_error("ServiceUnavailable"), True),
        (s3_error("AccessDenied"), False),
        (s3_error("NoSuchBucket"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_an_unreachable_or_overloaded_store_is_waited_for(exc: BaseException, wait: bool) -> None:
    assert store_unavailable(exc) is wait


def retries(component: str) -> float:
    return OBJECT_STORE_RETRIES.labels(component)._value.get()


def test_a_write_is_retried_until_the_store_answers() -> None:
    failures = [REFUSED, REFUSED, REFUSED]

    def write() -> str:
        if failures:
            raise failures.pop()
        return "stored"

    before = retries("unit-retry")
    assert until_store_answers(write, component="unit-retry", first_delay_s=0.001) == "stored"
    assert retries("unit-retry") - before == 3


def test_a_refused_request_is_not_retried() -> None:
    calls = []

    def write() -> None:
        calls.append(1)
        raise s3_error("AccessDenied")

    with pytest.raises(S3Error):
        until_store_answers(write, component="unit-denied", first_delay_s=0.001)
    assert len(calls) == 1


def test_stopping_ends_the_wait_with_the_error() -> None:
    stop = threading.Event()

    def write() -> None:
        stop.set()  # the process is asked to stop while the store is away
        raise REFUSED

    with pytest.raises(urllib3.exceptions.MaxRetryError):
        until_store_answers(write, component="unit-stop", stop=stop, first_delay_s=5.0)


class FlakyStore:
    """Refuses ``refusals`` writes, then stores them (a MinIO client's put_object)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.objects: dict[str, int] = {}

    def put_object(self, bucket: str, key: str, data: Any, length: int) -> None:
        if self.refusals:
            self.refusals -= 1
            raise REFUSED
        self.objects[key] = length


def logged(partition: int, offsets: range) -> dict[str, Any]:
    n = len(offsets)
    return {
        "transaction_id": np.array([f"t{partition}-{o}" for o in offsets], dtype=object),
        "timestamp": np.arange(n, dtype=np.int64) * 1_000_000,
        "kafka_offset": np.array(list(offsets), dtype=np.int64),
        "amount": np.ones(n),
    }


def test_the_feature_log_keeps_its_rows_until_the_store_takes_them() -> None:
    settings = Settings(_env_file=None, features={"offline_root": "s3://features/unit"})
    log = FeatureLog(settings)
    store = FlakyStore(refusals=1)
    log.s3 = store  # type: ignore[assignment]
    log.pending = {0: [logged(0, range(0, 3))], 1: [logged(1, range(0, 2))]}

    assert log.flush() is False, "the first partition's write is refused"
    assert store.objects == {}
    assert set(log.pending) == {0, 1}, "nothing is dropped"
    log.pending[1].append(logged(1, range(2, 4)))  # the job goes on logging meanwhile
    assert log.flush() is False, "no new attempt before the retry delay"
    assert store.refusals == 0

    log.retry_at = 0.0  # the delay has passed
    assert log.flush() is True
    assert log.pending == {}
    assert sorted(store.objects) == [
        "unit/feature_log/p000-o000000000000-000000000002.parquet",
        "unit/feature_log/p001-o000000000000-000000000003.parquet",
    ]


def test_a_partition_already_stored_is_not_written_again() -> None:
    settings = Settings(_env_file=None, features={"offline_root": "s3://features/unit"})
    log = FeatureLog(settings)

    class SecondRefused(FlakyStore):
        def put_object(self, bucket: str, key: str, data: Any, length: int) -> None:
            if key.startswith("unit/feature_log/p001") and self.refusals:
                self.refusals -= 1
                raise REFUSED
            self.objects[key] = self.objects.get(key, 0) + 1

    store = SecondRefused(refusals=1)
    log.s3 = store  # type: ignore[assignment]
    log.pending = {0: [logged(0, range(0, 3))], 1: [logged(1, range(0, 2))]}
    assert log.flush() is False
    assert set(log.pending) == {1}
    log.retry_at = 0.0
    assert log.flush() is True
    assert store.objects == {
        "unit/feature_log/p000-o000000000000-000000000002.parquet": 1,
        "unit/feature_log/p001-o000000000000-000000000001.parquet": 1,
    }


def test_an_error_raised_from_an_unreachable_store_is_one_too() -> None:
    wrapped = RuntimeError("could not read the model")
    wrapped.__cause__ = REFUSED  # what `raise ... from exc` sets
    assert store_unavailable(wrapped)
    assert not store_unavailable(RuntimeError("could not read the model"))


def test_a_model_swap_waits_for_the_store_and_the_old_model_serves_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fraud_predictor import model as predictor_model
    from fraud_predictor.model import FraudPredictor, OnnxModel
    from fraud_predictor.storage import ModelFiles
    from tests.serving_helpers import make_model

    predictor = FraudPredictor("fraud", "unused")
    predictor.install(OnnxModel.from_files(ModelFiles("memory", make_model("v1", seed=1))))
    v2 = OnnxModel.from_files(ModelFiles("memory", make_model("v2", seed=2)))
    served_while_waiting: list[str] = []

    def load(uri: str, settings: Any, version: str) -> OnnxModel:
        served_while_waiting.append(predictor.current.version)
        if len(served_while_waiting) < 3:
            raise REFUSED
        return v2

    monkeypatch.setattr(predictor_model, "load_model", load)
    retries = OBJECT_STORE_RETRIES.labels("predictor-fraud")._value.get()
    assert predictor.update("s3://models/fraud/v2", "v2") is True
    assert predictor.current.version == "v2"
    assert served_while_waiting == ["v1", "v1", "v1"]
    assert OBJECT_STORE_RETRIES.labels("predictor-fraud")._value.get() == retries + 2

    # Stopped while the store is still away: the swap gives up, the current model serves on.
    stop = threading.Event()
    stop.set()
    monkeypatch.setattr(predictor_model, "load_model", lambda *args: (_ for _ in ()).throw(REFUSED))
    assert predictor.update("s3://models/fraud/v3", "v3", stop=stop) is False
    assert predictor.current.version == "v2"


def test_training_says_plainly_that_the_object_store_is_away(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from fraud_pipelines.cli import app
    from fraudcore.settings import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAUD_S3__ENDPOINT", "127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("FRAUD_S3__ACCESS_KEY", "unit-test")
    monkeypatch.setenv("FRAUD_S3__SECRET_KEY", "unit-test-secret")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["train", "--source", "archive"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    said = " ".join(result.stdout.split())
    assert "training needs the object store: the object store at 127.0.0.1:9 does not answer" in said
    assert "Traceback" not in said
