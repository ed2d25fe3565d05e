"""Publishing to the model store (MinIO/S3) and the champion/challenger decision.

Layout in the models bucket, for a model name ``<m>`` (default ``fraud``)::

    <m>/<version>/model.onnx            every published model, immutable
    <m>/<version>/metadata.json         metrics, features, data window, code revision, decision
    <m>/decisions/<version>.json        the champion/challenger decision of that run
    <m>/champion.json                   which version is the champion: written only conditionally
    <m>/champion/model.onnx             the current champion (KServe: storageUri s3://models/<m>/champion)
    <m>/champion/metadata.json
    <m>/shadow/model.onnx               the shadow challenger: scores live traffic beside the champion
    <m>/shadow/metadata.json            (a run that does not win offline, or one published with shadow)
    <m>/triton/<m>/config.pbtxt         a Triton model repository (storageUri s3://models/<m>/triton)
    <m>/triton/<m>/<n>/model.onnx       champion number n (1, 2, ...; Triton serves the highest)

The champion moves only when the new model's average precision beats the champion's on
the same test window: the champion's ONNX file is re-scored on this run's test set. A
champion whose ONNX cannot take today's features (another feature list) cannot be compared
and is replaced. When the champion moves, a ``champion-changed`` record goes to the
``model-events`` topic, keyed by the model name.

Two runs may publish at once. The champion pointer ``<m>/champion.json`` is written only if
it is still what the run read when it decided (S3 ``If-Match``, or ``If-None-Match: *`` when
there was none), so exactly one run wins; the other decides again against the new champion
(and is recorded as a challenger unless it beats it). The champion folder and the events
follow the pointer: after its event, a winner reads the pointer again and, if a later winner
has moved it meanwhile, writes that version's files and event, so the last event sent names
the pointer's version.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from minio import Minio
from minio.error import S3Error
from sklearn.metrics import average_precision_score

from fraud_pipelines.onnx_export import INPUT_NAME, LABEL, PROBABILITIES, metadata_of, onnx_scores
from fraudcore.features import MODEL_FEATURES
from fraudcore.settings import Settings
from fraudcore.storage import ConcurrentWriteError, put_if_unchanged, read_versioned

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
SHADOW = "shadow"  # the shadow slot's folder beside "champion"
SHADOW_CHANGED = "shadow-changed"
CHAMPION_POINTER = "champion.json"
PUBLISH_ATTEMPTS = 5  # decisions per run when other runs keep moving the champion
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r}: use lower-case letters, digits, '-' and '_' (at most 63)")
    return name


def code_revision(explicit: str = "", cwd: str | Path | None = None) -> str:
    """The code's revision: ``explicit``, else ``FRAUD_CODE_REVISION``, else the git commit of
    ``cwd`` (with ``-dirty`` when the tree has changes), else ``unknown``."""
    if explicit:
        return explicit
    env = os.environ.get("FRAUD_CODE_REVISION", "")
    if env:
        return env
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev or "unknown"


def triton_config(model_name: str, n_features: int) -> str:
    """``config.pbtxt`` for Triton's ONNX Runtime backend (no server-side batching: the
    batch dimension is part of the dims, as in the ONNX model)."""
    return (
        f'name: "{model_name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 0\n"
        "input [\n"
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ -1, {n_features} ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "{PROBABILITIES}" data_type: TYPE_FP32 dims: [ -1, 2 ] }},\n'
        f'  {{ name: "{LABEL}" data_type: TYPE_INT64 dims: [ -1 ] }}\n'
        "]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


class ModelStore:
    """The models bucket, seen through a model name's prefix."""

    def __init__(self, client: Minio, bucket: str, model_name: str) -> None:
        self.client = client
        self.bucket = bucket
        self.name = check_model_name(model_name)

    def key(self, *parts: str) -> str:
        return "/".join([self.name, *parts])

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # a concurrent creator won
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def put_json(self, key: str, value: Any) -> None:
        """Strict JSON: a NaN or infinity (an empty calibration bin, a metric without
        positives) is written as null, which every reader parses (NaN is not JSON)."""
        text = json.dumps(_finite(value), indent=2, sort_keys=True, default=str, allow_nan=False)
        self.put(key, text.encode(), "application/json")

    def get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def get_json(self, key: str) -> dict[str, Any] | None:
        data = self.get(key)
        return json.loads(data) if data is not None else None

    def champion(self) -> tuple[str | None, str | None]:
        """(champion version, ETag of the pointer); a store from before the pointer has no
        ETag and names its champion in the champion folder."""
        found = read_versioned(self.client, self.bucket, self.key(CHAMPION_POINTER))
        if found is not None:
            return str(json.loads(found[0])["version"]), found[1]
        return (self.get_json(self.key("champion", METADATA_FILE)) or {}).get("version"), None

    def claim_champion(self, version: str, ap: float, etag: str | None) -> None:
        """Point at ``version`` if the pointer still has ``etag`` (None: does not exist);
        raises ConcurrentWriteError when another run moved it first."""
        body = {"version": version, "ap": ap, "since": datetime.now(UTC).isoformat(timespec="seconds")}
        data = json.dumps(body, sort_keys=True).encode()
        put_if_unchanged(self.client, self.bucket, self.key(CHAMPION_POINTER), data, etag)

    def triton_versions(self) -> list[int]:
        prefix = self.key("triton", self.name) + "/"
        found = []
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=False):
            part = obj.object_name[len(prefix) :].strip("/")
            if part.isdigit():
                found.append(int(part))
        return sorted(found)


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    challenger_ap: float
    champion_version: str | None
    champion_ap: float | None
    test_window: dict[str, Any]
    decided_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_champion(
    store: ModelStore, x: npt.NDArray[np.float32], y: npt.NDArray[Any], features: list[str]
) -> tuple[str | None, float | None, str, str | None]:
    """The current champion's version, its AP re-scored on (x, y) or why it cannot be, and the
    ETag of the champion pointer that was read (for the conditional promotion)."""
    version, etag = store.champion()
    # The pointer's version folder: written before the pointer, and never rewritten.
    data = store.get(store.key(version, MODEL_FILE)) if version else None
    if data is None:
        data = store.get(store.key("champion", MODEL_FILE))
    if data is None:
        return None, None, "no champion yet", etag
    props = metadata_of(data)
    version = version or props.get("model_version")
    champion_features = json.loads(props.get("feature_names", "null") or "null")
    if champion_features != features:
        return version, None, "the champion takes other features, so it cannot score this test set", etag
    ap = float(average_precision_score(y, onnx_scores(data, x)))
    return version, ap, "", etag


def decide(
    version: str,
    challenger_ap: float,
    champion_version: str | None,
    champion_ap: float | None,
    why_not_comparable: str,
    test_window: dict[str, Any],
    min_improvement: float = 0.0,
    shadow: bool = False,
) -> Decision:
    """Promote when there is no comparable champion, or the challenger's AP beats it by more
    than ``min_improvement`` on the same test window; never with ``shadow`` (the challenger
    goes to the shadow slot, to prove itself on live traffic first)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if shadow and champion_version is not None:
        ap = f"AP {challenger_ap:.4f}" + (
            f" against the champion's {champion_ap:.4f}" if champion_ap is not None else ""
        )
        reason = f"kept the champion: published into the shadow slot as asked ({ap})"
        return Decision(
            version, False, reason, challenger_ap, champion_version, champion_ap, test_window, now
        )
    if champion_ap is None:
        return Decision(
            version,
            True,
            f"promoted: {why_not_comparable}",
            challenger_ap,
            champion_version,
            None,
            test_window,
            now,
        )
    if challenger_ap > champion_ap + min_improvement:
        reason = (
            f"promoted: AP {challenger_ap:.4f} beats the champion's {champion_ap:.4f} on the same test window"
        )
        return Decision(version, True, reason, challenger_ap, champion_version, champion_ap, test_window, now)
    reason = f"kept the champion: AP {challenger_ap:.4f} does not beat its {champion_ap:.4f} on the same test window"
    return Decision(version, False, reason, challenger_ap, champion_version, champion_ap, test_window, now)


def champion_event(model_name: str, version: str, uri: str, ap: float, champion_uri: str) -> dict[str, Any]:
    """The ``model-events`` record: ``uri`` is the version's immutable folder,
    ``champion_uri`` the folder KServe serves from (now holding the same model)."""
    return {
        "type": "champion-changed",
        "model": model_name,
        "version": version,
        "uri": uri,
        "champion_uri": champion_uri,
        "ap": ap,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def send_event(settings: Settings, key: str, event: dict[str, Any], timeout_s: float = 30.0) -> None:
    from fraudcore.kafka import producer

    prod = producer(settings)
    try:
        prod.send(settings.topics.model_events.name, key=key.encode(), value=json.dumps(event).encode()).get(
            timeout=timeout_s
        )
        prod.flush(timeout=timeout_s)
    finally:
        prod.close(timeout=timeout_s)


def publish(
    settings: Settings,
    onnx_bytes: bytes,
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[Any],
    metadata: dict[str, Any],
    *,
    model_name: str,
    version: str,
    min_improvement: float = 0.0,
    shadow: bool = False,
    client: Minio | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Upload the model, decide champion/challenger, move the champion (files, Triton
    repository, Kafka event) when it wins, else put the challenger in the shadow slot (it then
    scores live traffic beside the champion, unseen by callers). Returns a summary."""
    from fraudcore.storage import s3_client

    store = ModelStore(client or s3_client(settings), settings.s3.models_bucket, model_name)
    store.ensure_bucket()
    features = list(metadata.get("features", MODEL_FEATURES))
    window = metadata.get("data_window", {}).get("test", {})
    challenger_ap = float(average_precision_score(y_test, onnx_scores(onnx_bytes, x_test)))
    # Before any claim: a run deciding against this version once it wins reads it here.
    store.put(store.key(version, MODEL_FILE), onnx_bytes)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        champion_version, champion_ap, why, pointer = score_champion(store, x_test, y_test, features)
        if champion_ap is not None:
            log(f"champion {champion_version}: AP {champion_ap:.4f} re-scored on this test window")
        decision = decide(
            version, challenger_ap, champion_version, champion_ap, why, window, min_improvement, shadow
        )
        log(decision.reason)
        if not decision.promoted:
            break
        try:
            store.claim_champion(version, challenger_ap, pointer)
            break
        except ConcurrentWriteError:
            log(
                f"another run moved the champion since it was read: deciding again ({attempt}/{PUBLISH_ATTEMPTS})"
            )
    else:
        raise RuntimeError(
            f"the champion of {model_name} moved {PUBLISH_ATTEMPTS} times while {version} was being published; "
            "publish it again"
        )
    summary: dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "uri": store.uri(version),
        "model_uri": store.uri(version, MODEL_FILE),
        "champion_uri": store.uri("champion"),
        "promoted": decision.promoted,
        "decision": decision.to_dict(),
    }
    document = {
        **metadata,
        "model_name": model_name,
        "version": version,
        "uri": summary["uri"],
        "model_file": MODEL_FILE,
        "decision": decision.to_dict(),
    }
    store.put_json(store.key(version, METADATA_FILE), document)
    store.put_json(store.key("decisions", f"{version}.json"), decision.to_dict())
    if decision.promoted:
        summary.update(install_champion(settings, store, version, onnx_bytes, document, challenger_ap))
        log(f"champion is now {version}; model-events record sent")
    else:
        summary["shadow_uri"] = store.uri(SHADOW)
        summary["event"] = install_shadow(settings, store, version, onnx_bytes, document, challenger_ap)
        log(f"{version} is the shadow challenger: it scores live traffic beside the champion")
    return summary


def install_champion(
    settings: Settings,
    store: ModelStore,
    version: str,
    onnx_bytes: bytes,
    document: dict[str, Any],
    ap: float,
) -> dict[str, Any]:
    """Make the version the pointer names (already claimed) the champion: its files in the
    champion folder and as the next Triton version, then ``champion-changed`` for the
    predictors. Returns what changed."""
    changed = _write_champion(settings, store, version, onnx_bytes, document, ap)
    # A later winner may have claimed the pointer while this one wrote: the folder and the
    # last event must name the pointer's version, so whoever finishes last writes it.
    current, _ = store.champion()
    if current and current != version:
        later_onnx = store.get(store.key(current, MODEL_FILE))
        later_doc = store.get_json(store.key(current, METADATA_FILE)) or {"version": current}
        if later_onnx is not None:
            later_ap = float((later_doc.get("decision") or {}).get("challenger_ap") or 0.0)
            _write_champion(settings, store, current, later_onnx, later_doc, later_ap)
            changed["superseded_by"] = current
    return changed


def _write_champion(
    settings: Settings,
    store: ModelStore,
    version: str,
    onnx_bytes: bytes,
    document: dict[str, Any],
    ap: float,
) -> dict[str, Any]:
    name = store.name
    features = list(document.get("features", MODEL_FEATURES))
    champion_doc = {**document, "champion_since": datetime.now(UTC).isoformat(timespec="seconds")}
    store.put(store.key("champion", MODEL_FILE), onnx_bytes)
    store.put_json(store.key("champion", METADATA_FILE), champion_doc)
    triton_n = (store.triton_versions() or [0])[-1] + 1
    store.put(store.key("triton", name, str(triton_n), MODEL_FILE), onnx_bytes)
    store.put(
        store.key("triton", name, "config.pbtxt"), triton_config(name, len(features)).encode(), "text/plain"
    )
    event = champion_event(name, version, store.uri(version), ap, store.uri("champion"))
    send_event(settings, name, event)
    return {"triton_version": triton_n, "triton_uri": store.uri("triton"), "event": event}


def install_shadow(
    settings: Settings,
    store: ModelStore,
    version: str,
    onnx_bytes: bytes,
    document: dict[str, Any],
    ap: float,
) -> dict[str, Any]:
    """Put a version in the shadow slot and tell the predictors (``shadow-changed``)."""
    store.put(store.key(SHADOW, MODEL_FILE), onnx_bytes)
    store.put_json(
        store.key(SHADOW, METADATA_FILE), {**document, "shadow_since": datetime.now(UTC).isoformat()}
    )
    event = {
        **champion_event(store.name, version, store.uri(version), ap, store.uri(SHADOW)),
        "type": SHADOW_CHANGED,
    }
    send_event(settings, store.name, event)
    return event


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
