"""The object stores each overlay names, opened for real: Feast's registry store for every
overlay's ``FEAST_REGISTRY`` scheme, and the predictor's model download from ``gs://``.

``s3://`` runs against the local MinIO; ``gs://`` against fake-gcs-server, a Cloud Storage
emulator built from source like MinIO (``go install``, cached), reached through Google's
client with ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from feast.infra.registry.registry import get_registry_store_class_from_scheme
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.repo_config import RegistryConfig

from fraud_features.store import feast_env
from fraud_predictor.storage import read_model_files
from fraudcore.settings import Settings
from tests.unit.test_manifests import TARGETS, platform_config, render

FAKE_GCS_MODULE = "github.com/fsouza/fake-gcs-server"
FAKE_GCS_VERSION = "v1.52.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gcs_emulator(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a running fake-gcs-server (in-memory buckets)."""
    binary = settings.cache_dir.expanduser() / f"fake-gcs-server-{FAKE_GCS_VERSION}" / "fake-gcs-server"
    if not binary.exists():
        if shutil.which("go") is None:
            pytest.fail("the Cloud Storage emulator is built with Go, which is not installed")
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "install", f"{FAKE_GCS_MODULE}@{FAKE_GCS_VERSION}"],
            env=dict(os.environ, GOBIN=str(binary.parent), CGO_ENABLED="0"),
            check=True,
            capture_output=True,
            timeout=900,
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/storage/v1/b", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake-gcs-server did not start: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _gcs_client(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return storage.Client()


@pytest.mark.parametrize("target", TARGETS)
def test_every_overlays_feast_registry_store_opens_and_round_trips(
    target: str, stack: Settings, gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transformer, the feature job and `feast apply` open the registry named by the
    overlay's FEAST_REGISTRY: its store must import (boto3 for s3://) and work."""
    scheme = platform_config(render(target))["FEAST_REGISTRY"].split("://", 1)[0]
    unique = uuid.uuid4().hex[:10]
    if scheme == "s3":
        for name, value in feast_env(stack).items():
            monkeypatch.setenv(name, value)
        path = f"s3://{stack.s3.features_bucket}/tests/{unique}/registry.db"
    elif scheme == "gs":
        bucket = f"registry-{unique}"
        _gcs_client(gcs_emulator, monkeypatch).create_bucket(bucket)
        path = f"gs://{bucket}/registry.db"
    else:
        pytest.fail(f"{target}: FEAST_REGISTRY has a scheme no test covers: {scheme!r}")

    store_class = get_registry_store_class_from_scheme(path)
    store = store_class(RegistryConfig(path=path), Path("."))
    written = RegistryProto(registry_schema_version="1")
    store.update_registry_proto(written)
    try:
        read = store.get_registry_proto()
        assert read.version_id == written.version_id
        assert read.registry_schema_version == "1"
    finally:
        store.teardown()


def test_the_predictor_downloads_a_model_from_gs(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GKE's hot swap: the champion folder read with Google's client (Workload Identity there)."""
    client = _gcs_client(gcs_emulator, monkeypatch)
    bucket = client.create_bucket(f"models-{uuid.uuid4().hex[:10]}")
    bucket.blob("fraud/v3/model.onnx").upload_from_string(b"onnx-bytes")
    bucket.blob("fraud/v3/metadata.json").upload_from_string(b'{"version": "v3"}')
    bucket.blob("fraud/v4/model.onnx").upload_from_string(b"other")

    files = read_model_files(f"gs://{bucket.name}/fraud/v3")
    assert (files.onnx, files.metadata) == (b"onnx-bytes", b'{"version": "v3"}')
    assert files.source == f"gs://{bucket.name}/fraud/v3/model.onnx"
    single = read_model_files(f"gs://{bucket.name}/fraud/v4/model.onnx")
    assert (single.onnx, single.metadata) == (b"other", None)
