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
from fraudcore.storage import OBJECT_STORE_RETRIES, store_unavailable, write_until_stored

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
    assert write_until_stored(write, component="unit-retry", first_delay_s=0.001) == "stored"
    assert retries("unit-retry") - before == 3


def test_a_refused_request_is_not_retried() -> None:
    calls = []

    def write() -> None:
        calls.append(1)
        raise s3_error("AccessDenied")

    with pytest.raises(S3Error):
        write_until_stored(write, component="unit-denied", first_delay_s=0.001)
    assert len(calls) == 1


def test_stopping_ends_the_wait_with_the_error() -> None:
    stop = threading.Event()

    def write() -> None:
        stop.set()  # the process is asked to stop while the store is away
        raise REFUSED

    with pytest.raises(urllib3.exceptions.MaxRetryError):
        write_until_stored(write, component="unit-stop", stop=stop, first_delay_s=5.0)


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
