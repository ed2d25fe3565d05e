"""The compiled kfp package: it loads back, and its structure is the pipeline we mean."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import components

from fraud_pipelines.components import DEFAULT_IMAGE, IMAGE_ENV
from fraud_pipelines.params import DEFAULTS
from fraud_pipelines.pipeline import ClusterConfig, compile, submit

STEPS = {"dataset", "train", "evaluate", "export", "publish", "report"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_compiled_package_loads_and_has_the_expected_dag(tmp_path: Path) -> None:
    path = compile(tmp_path / "pipeline.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "fraud-training"
    spec = _docs(path)[0]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == STEPS
    deps = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert deps["train"] == {"dataset"}
    assert deps["evaluate"] == {"train", "dataset"}
    assert deps["export"] == {"train", "dataset"}
    assert deps["publish"] == {"export", "evaluate", "dataset"}
    assert deps["report"] == {"train", "evaluate", "dataset"}
    # Typed artifacts between the steps.
    train_inputs = spec["components"]["comp-train"]["inputDefinitions"]["artifacts"]
    assert train_inputs["train_set"]["artifactType"]["schemaTitle"] == "system.Dataset"
    eval_outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert eval_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert eval_outputs["classification"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    report_outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert report_outputs["html_report"]["artifactType"]["schemaTitle"] == "system.HTML"
    export_outputs = spec["components"]["comp-export"]["outputDefinitions"]["artifacts"]
    assert export_outputs["onnx_model"]["artifactType"]["schemaTitle"] == "system.Model"
    # Parameters with the protocol's defaults.
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_days"]["defaultValue"] == 7
    assert params["delay_days"]["defaultValue"] == 7
    assert params["test_days"]["defaultValue"] == 7
    assert params["burn_in_days"]["defaultValue"] == 30
    assert params["model_name"]["defaultValue"] == "fraud"
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"report"}


def test_parameters_are_defined_once(tmp_path: Path) -> None:
    """The pipeline's parameters are exactly ``PipelineParams`` with its defaults; the
    components declare none of their own (the pipeline passes every argument)."""
    spec = _docs(compile(tmp_path / "pipeline.yaml"))[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    expected = asdict(DEFAULTS)
    assert set(params) == set(expected)
    for name, value in expected.items():
        assert params[name].get("defaultValue", "") == value, name
    for name, component in spec["components"].items():
        if name == "root" or "inputDefinitions" not in component:
            continue
        for parameter, definition in component["inputDefinitions"].get("parameters", {}).items():
            assert "defaultValue" not in definition, f"{name}.{parameter} has its own default"


def test_components_are_lightweight_and_install_nothing(tmp_path: Path) -> None:
    spec = _docs(compile(tmp_path / "pipeline.yaml"))[0]
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == DEFAULT_IMAGE
        command = " ".join(container["command"])
        assert "pip install" not in command
        assert "kfp.dsl.executor_main" in command
        assert "from fraud_pipelines.steps import" in command


def test_image_is_configurable(tmp_path: Path) -> None:
    spec = _docs(compile(tmp_path / "p.yaml", image="registry.example/fraud/pipeline:9.9"))[0]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/fraud/pipeline:9.9"}


def test_image_env_var_sets_the_default() -> None:
    import subprocess
    import sys

    code = "from fraud_pipelines.components import pipeline_image; print(pipeline_image())"
    env = {IMAGE_ENV: "registry.example/x:1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "registry.example/x:1"


def test_cluster_settings_use_the_secret_and_the_environment(tmp_path: Path) -> None:
    docs = _docs(compile(tmp_path / "p.yaml", cluster=ClusterConfig()))
    pipeline, platform = docs[0], docs[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for config in executors.values():
        (secret,) = config["secretAsEnv"]
        assert secret["secretName"] == "fraud-s3"
        assert {k["secretKey"]: k["envVar"] for k in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID": "FRAUD_S3__ACCESS_KEY",
            "AWS_SECRET_ACCESS_KEY": "FRAUD_S3__SECRET_KEY",
        }
    for executor in pipeline["deploymentSpec"]["executors"].values():
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env["FRAUD_S3__ENDPOINT"] == "minio.fraud.svc:9000"
        assert "FRAUD_KAFKA__BOOTSTRAP_SERVERS" in env
        assert executor["container"]["resources"]["memoryLimit"] > 0


class _FakeClient:
    calls: list[dict[str, Any]] = []  # noqa: RUF012

    def __init__(self, host: str) -> None:
        self.host = host

    def create_run_from_pipeline_func(self, pipeline: Any, **kwargs: Any) -> Any:
        self.calls.append({"host": self.host, "pipeline": pipeline, **kwargs})
        return type("Run", (), {"run_id": "run-123"})()


def test_submit_passes_root_arguments_and_revision() -> None:
    run_id = submit(
        "http://kfp.example:8080",
        {"train_start": "2026-03-01"},
        pipeline_root="s3://models/kfp-root",
        client_factory=_FakeClient,
    )
    assert run_id == "run-123"
    call = _FakeClient.calls[-1]
    assert call["host"] == "http://kfp.example:8080"
    assert call["pipeline_root"] == "s3://models/kfp-root"
    assert call["arguments"]["train_start"] == "2026-03-01"
    assert call["arguments"]["code_revision"]  # the local git revision (or "unknown")
    assert call["pipeline"].name == "fraud-training"


@pytest.mark.parametrize("name", ["Fraud", "a/b", "", "x" * 64])
def test_model_names_are_checked(name: str) -> None:
    from fraud_pipelines.publish import check_model_name

    with pytest.raises(ValueError, match="model name"):
        check_model_name(name)


def test_secured_kafka_settings_reach_every_step(tmp_path: Path) -> None:
    """The production overlays have no plaintext listener: the steps (the publish step writes
    model-events) speak SASL_SSL as KafkaUser fraud-model-publisher, trusting Strimzi's CA."""
    docs = _docs(compile(tmp_path / "p.yaml", cluster=ClusterConfig.secured_kafka()))
    pipeline, platform = docs[0], docs[1]
    for config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        env_secrets = {
            s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]}
            for s in config["secretAsEnv"]
        }
        assert env_secrets["fraud-model-publisher"] == {"password": "FRAUD_KAFKA__SASL_PASSWORD"}
        assert "fraud-s3" in env_secrets
        (volume,) = config["secretAsVolume"]
        assert (volume["secretName"], volume["mountPath"]) == (
            "fraud-kafka-cluster-ca-cert",
            "/etc/fraud/kafka-ca",
        )
    for executor in pipeline["deploymentSpec"]["executors"].values():
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env["FRAUD_KAFKA__BOOTSTRAP_SERVERS"].endswith(":9093")
        assert env["FRAUD_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["FRAUD_KAFKA__SASL_USERNAME"] == "fraud-model-publisher"
        assert env["FRAUD_KAFKA__SSL_CA_FILE"] == "/etc/fraud/kafka-ca/ca.crt"
        assert "FRAUD_KAFKA__SASL_PASSWORD" not in env, "the password comes from the Secret only"
