"""Publishing without services: the store layout, the champion/challenger decision, the
Triton repository and the model-events record (MinIO replaced by an in-memory fake)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from minio.error import S3Error
from sklearn.linear_model import LogisticRegression

from fraud_pipelines import publish as pub
from fraud_pipelines.onnx_export import convert
from fraudcore.features import MODEL_FEATURES
from fraudcore.settings import Settings


@dataclass
class _Object:
    object_name: str
    is_dir: bool = False


class _Response(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"etag": f'"{hashlib.md5(data).hexdigest()}"'}

    def release_conn(self) -> None:
        return None


@dataclass
class _Written:
    etag: str


class FakeMinio:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.buckets: set[str] = set()

    def bucket_exists(self, bucket: str) -> bool:
        return bucket in self.buckets

    def make_bucket(self, bucket: str) -> None:
        self.buckets.add(bucket)

    def put_object(
        self, bucket: str, name: str, data: io.BytesIO, length: int, content_type: str = ""
    ) -> None:
        self.objects[(bucket, name)] = data.read(length)

    def _put_object(self, bucket: str, name: str, data: bytes, headers: dict[str, str]) -> _Written:
        """S3's conditional PutObject: If-None-Match: * or If-Match: "<etag>"."""
        current = self.objects.get((bucket, name))
        etag = f'"{hashlib.md5(current).hexdigest()}"' if current is not None else None
        if headers.get("If-None-Match") == "*" and current is not None:
            raise S3Error(None, "PreconditionFailed", "exists", name, "", "", bucket, name)  # type: ignore[arg-type]
        if "If-Match" in headers and headers["If-Match"] != etag:
            raise S3Error(None, "PreconditionFailed", "changed", name, "", "", bucket, name)  # type: ignore[arg-type]
        self.objects[(bucket, name)] = data
        return _Written(hashlib.md5(data).hexdigest())

    def get_object(self, bucket: str, name: str) -> _Response:
        if (bucket, name) not in self.objects:
            raise S3Error(None, "NoSuchKey", "missing", name, "", "", bucket, name)  # type: ignore[arg-type]
        return _Response(self.objects[(bucket, name)])

    def list_objects(self, bucket: str, prefix: str = "", recursive: bool = False) -> list[_Object]:
        names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
        if recursive:
            return [_Object(n) for n in names]
        seen: dict[str, _Object] = {}
        for n in names:
            rest = n[len(prefix) :]
            head, sep, _ = rest.partition("/")
            key = prefix + head + sep
            seen.setdefault(key, _Object(key, bool(sep)))
        return list(seen.values())


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2_000, len(MODEL_FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 1.5).astype(np.int64)
    return x, y


def _onnx(x: np.ndarray, y: np.ndarray, version: str) -> bytes:
    model = LogisticRegression(max_iter=500).fit(x, y)
    return convert(model, {"model_version": version}).SerializeToString()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(pub, "send_event", lambda _settings, key, event: sent.append((key, event)))
    return sent


def test_layout_and_champion_challenger(events: list[tuple[str, dict[str, Any]]]) -> None:
    client: Any = FakeMinio()
    settings = Settings()
    x, y = _data()
    meta = {"features": MODEL_FEATURES, "data_window": {"test": {"start": "2024-03-01", "end": "2024-03-08"}}}

    good = _onnx(x, y, "v1")
    first = pub.publish(settings, good, x, y, meta, model_name="fraud", version="v1", client=client)
    assert first["promoted"] is True
    keys = {n for _, n in client.objects}
    assert keys == {
        "fraud/v1/model.onnx",
        "fraud/v1/metadata.json",
        "fraud/decisions/v1.json",
        "fraud/champion.json",
        "fraud/champion/model.onnx",
        "fraud/champion/metadata.json",
        "fraud/triton/fraud/1/model.onnx",
        "fraud/triton/fraud/config.pbtxt",
    }
    assert client.objects[("models", "fraud/champion/model.onnx")] == good
    assert json.loads(client.objects[("models", "fraud/champion.json")])["version"] == "v1"
    assert events[0][0] == "fraud"
    assert events[0][1]["type"] == "champion-changed"
    assert events[0][1]["version"] == "v1"
    assert events[0][1]["uri"] == "s3://models/fraud/v1"

    noise = np.random.default_rng(1).permutation(y)
    worse = _onnx(x, noise, "v2")
    second = pub.publish(settings, worse, x, y, meta, model_name="fraud", version="v2", client=client)
    assert second["promoted"] is False
    assert client.objects[("models", "fraud/champion/model.onnx")] == good
    decision = json.loads(client.objects[("models", "fraud/decisions/v2.json")])
    assert decision["champion_version"] == "v1"
    assert decision["challenger_ap"] < decision["champion_ap"]
    assert decision["test_window"] == {"start": "2024-03-01", "end": "2024-03-08"}
    # The loser goes to the shadow slot: it scores live traffic beside the champion.
    assert client.objects[("models", "fraud/shadow/model.onnx")] == worse
    assert [(e["type"], e["version"], e["uri"]) for _, e in events[1:]] == [
        ("shadow-changed", "v2", "s3://models/fraud/v2")
    ]

    # With a negative margin an equal model wins: the champion and Triton move on.
    better = pub.publish(
        settings, good, x, y, meta, model_name="fraud", version="v3", client=client, min_improvement=-1.0
    )
    assert better["promoted"] is True
    assert better["triton_version"] == 2
    assert ("models", "fraud/triton/fraud/2/model.onnx") in client.objects
    champion_meta = json.loads(client.objects[("models", "fraud/champion/metadata.json")])
    assert champion_meta["version"] == "v3"
    assert [(e["type"], e["version"]) for _, e in events] == [
        ("champion-changed", "v1"),
        ("shadow-changed", "v2"),
        ("champion-changed", "v3"),
    ]

    # Asked to, even a winner goes to the shadow slot first.
    shadowed = pub.publish(
        settings,
        good,
        x,
        y,
        meta,
        model_name="fraud",
        version="v4",
        client=client,
        min_improvement=-1.0,
        shadow=True,
    )
    assert shadowed["promoted"] is False
    assert "shadow slot as asked" in shadowed["decision"]["reason"]
    assert json.loads(client.objects[("models", "fraud/champion/metadata.json")])["version"] == "v3"
    assert events[-1][1]["type"] == "shadow-changed"


def test_a_champion_with_other_features_is_replaced(events: list[tuple[str, dict[str, Any]]]) -> None:
    client: Any = FakeMinio()
    x, y = _data()
    old = convert(LogisticRegression().fit(x[:, :5], y), features=MODEL_FEATURES[:5]).SerializeToString()
    client.make_bucket("models")
    client.put_object("models", "fraud/champion/model.onnx", io.BytesIO(old), len(old))
    result = pub.publish(
        Settings(), _onnx(x, y, "v9"), x, y, {}, model_name="fraud", version="v9", client=client
    )
    assert result["promoted"] is True
    assert "other features" in result["decision"]["reason"]


def test_decide_needs_a_strict_improvement() -> None:
    keep = pub.decide("v2", 0.70, "v1", 0.70, "", {})
    assert keep.promoted is False
    win = pub.decide("v2", 0.71, "v1", 0.70, "", {})
    assert win.promoted is True
    margin = pub.decide("v2", 0.71, "v1", 0.70, "", {}, min_improvement=0.02)
    assert margin.promoted is False
    first = pub.decide("v1", 0.5, None, None, "no champion yet", {})
    assert first.promoted is True


def test_triton_config() -> None:
    text = pub.triton_config("fraud", 22)
    assert 'name: "fraud"' in text
    assert 'platform: "onnxruntime_onnx"' in text
    assert "dims: [ -1, 22 ]" in text
    assert 'name: "probabilities"' in text


def test_code_revision(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    assert pub.code_revision("abc123") == "abc123"
    monkeypatch.setenv("FRAUD_CODE_REVISION", "from-env")
    assert pub.code_revision() == "from-env"
    monkeypatch.delenv("FRAUD_CODE_REVISION")
    assert pub.code_revision(cwd=tmp_path) == "unknown"  # not a git work tree


def test_a_promotion_whose_champion_moved_meanwhile_decides_again(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    """The conditional write on the pointer: a run that read no champion, then finds one
    claimed by another run, is compared with that one instead of overwriting it."""
    client: Any = FakeMinio()
    settings = Settings()
    x, y = _data()
    meta = {"features": MODEL_FEATURES, "data_window": {"test": {"start": "2024-03-01", "end": "2024-03-08"}}}
    model = _onnx(x, y, "v1")
    claimed: list[dict[str, Any]] = []

    def other_run_claims_first(message: str) -> None:
        # Between this run's decision and its claim, another run publishes the same model.
        if message.startswith("promoted") and not claimed:
            claimed.append(
                pub.publish(settings, model, x, y, meta, model_name="fraud", version="other", client=client)
            )

    mine = pub.publish(
        settings,
        model,
        x,
        y,
        meta,
        model_name="fraud",
        version="mine",
        client=client,
        log=other_run_claims_first,
    )
    assert claimed[0]["promoted"] is True
    assert mine["promoted"] is False, "the same AP does not beat the champion that won the race"
    assert mine["decision"]["champion_version"] == "other"
    assert json.loads(client.objects[("models", "fraud/champion.json")])["version"] == "other"
    assert [e["version"] for _, e in events if e["type"] == "champion-changed"] == ["other"]


def test_metadata_is_strict_json_an_empty_calibration_bin_included() -> None:
    """NaN is not JSON: a reader with a strict parser (the monitor's orjson) refused a
    model's metadata whose top calibration bin was empty."""
    import orjson

    client = FakeMinio()
    store = pub.ModelStore(client, "models", "fraud")  # type: ignore[arg-type]
    store.put_json(
        "m.json", {"bins": [{"count": 0, "observed_rate": float("nan")}], "auc": 0.9, "x": [float("inf")]}
    )
    written = orjson.loads(client.objects[("models", "m.json")])
    assert written == {"auc": 0.9, "bins": [{"count": 0, "observed_rate": None}], "x": [None]}
