"""The whole training pipeline with kfp's local runner on a small simulated data set:
it publishes to MinIO under a test-only model name, announces the champion on Kafka, and
the published model loads in onnxruntime and scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fraud_pipelines.data import feature_matrix, read_parquet
from fraud_pipelines.local import run_local
from fraudcore.features import MODEL_FEATURES
from fraudcore.settings import Settings
from fraudcore.storage import s3_client
from tests.helpers import isolated, read_topic

SMALL_SIMULATION = {"seed": 11, "n_customers": 300, "n_terminals": 600, "days": 60, "start": "2024-01-01"}


def small_run_arguments(model_name: str, **overrides: object) -> dict[str, object]:
    """Small data: 60 days, 14-day burn-in, 14 days of validation history, one setting for
    two candidates (the test checks the wiring, not the model)."""
    return {
        "source": "simulator",
        "source_options": json.dumps(SMALL_SIMULATION),
        "burn_in_days": 14,
        "history_days": 14,
        "folds": 1,
        "search": "quick",
        "candidates": "logreg,random_forest",
        "model_name": model_name,
        **overrides,
    }


def remove_prefix(settings: Settings, prefix: str) -> None:
    client = s3_client(settings)
    bucket = settings.s3.models_bucket
    for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
        client.remove_object(bucket, obj.object_name)


@pytest.fixture
def model_name(stack: Settings, unique: str) -> Iterator[str]:
    name = f"test-pipeline-{unique}"
    yield name
    remove_prefix(stack, f"{name}/")


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_publishes(
    stack: Settings, unique: str, model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated(stack, unique)
    topic = settings.topics.model_events.name
    monkeypatch.setenv("FRAUD_TOPICS__MODEL_EVENTS__NAME", topic)  # the steps' subprocesses inherit it

    run = run_local(small_run_arguments(model_name), pipeline_root=tmp_path / "kfp")

    summary = run.summary
    assert summary["promoted"] is True  # no champion under this name yet
    version = summary["version"]
    assert summary["uri"] == f"s3://models/{model_name}/{version}"
    for name in ("auc_roc", "average_precision", "card_precision_at_100", "brier_score"):
        assert 0.0 <= summary["metrics"][name] <= 1.0
    assert summary["metrics"]["auc_roc"] > 0.6

    client = s3_client(stack)
    bucket = stack.s3.models_bucket
    keys = {o.object_name for o in client.list_objects(bucket, prefix=f"{model_name}/", recursive=True)}
    assert {
        f"{model_name}/{version}/model.onnx",
        f"{model_name}/{version}/metadata.json",
        f"{model_name}/decisions/{version}.json",
        f"{model_name}/champion/model.onnx",
        f"{model_name}/champion/metadata.json",
        f"{model_name}/triton/{model_name}/config.pbtxt",
        f"{model_name}/triton/{model_name}/1/model.onnx",
    } <= keys

    metadata = json.loads(client.get_object(bucket, f"{model_name}/{version}/metadata.json").read())
    assert metadata["features"] == MODEL_FEATURES
    assert metadata["data_window"]["test"]["start"] == summary["data_window"]["test"]["start"]
    assert metadata["code_revision"]
    assert metadata["decision"]["promoted"] is True
    config = client.get_object(bucket, f"{model_name}/triton/{model_name}/config.pbtxt").read().decode()
    assert 'platform: "onnxruntime_onnx"' in config

    # The published champion loads in onnxruntime and scores the run's test set.
    onnx_bytes = client.get_object(bucket, f"{model_name}/champion/model.onnx").read()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["feature_names"]) == MODEL_FEATURES
    assert meta["model_version"] == version
    test_files = list((tmp_path / "kfp").glob("fraud-training-*/dataset/test"))
    assert len(test_files) == 1
    test, _ = read_parquet(test_files[0])
    probabilities = session.run(["probabilities"], {"input": feature_matrix(test)})[0]
    assert probabilities.shape == (len(test), 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (
        probabilities[test["is_fraud"].to_numpy() == 1, 1].mean()
        > probabilities[test["is_fraud"].to_numpy() == 0, 1].mean()
    )

    # The champion change was announced, keyed by the model name.
    records = read_topic(settings, topic, expected=1, timeout_s=30)
    assert len(records) == 1
    assert records[0].key == model_name.encode()
    event = json.loads(records[0].value)
    assert event["type"] == "champion-changed"
    assert event["version"] == version
    assert event["uri"] == summary["uri"]
    assert event["champion_uri"] == f"s3://models/{model_name}/champion"

    html = run.report_path.read_text()
    assert html.count("data:image/png;base64,") >= 5
