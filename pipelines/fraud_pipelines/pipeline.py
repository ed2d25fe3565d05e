"""The training pipeline: dataset -> train -> evaluate -> export (parity gate) -> publish,
and the HTML report. ``compile`` writes the kfp YAML package; ``submit`` runs it on a
Kubeflow Pipelines cluster; ``fraud_pipelines.local.run_local`` runs it on this machine.

On a cluster every step runs the project's image with the object-store keys from the
Kubernetes Secret ``fraud-s3`` (keys ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, as
``FRAUD_S3__ACCESS_KEY`` / ``FRAUD_S3__SECRET_KEY``) and the service addresses as
``FRAUD_*`` variables (``ClusterConfig``). The pipeline root (where kfp keeps artifacts)
is on S3/MinIO; for a MinIO endpoint, the namespace's ``kfp-launcher`` ConfigMap must name
it (``defaultPipelineRoot`` and an S3 provider with the endpoint and the same Secret).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML

from fraud_pipelines import components as c
from fraud_pipelines.components import DEFAULT_IMAGE, pipeline_image
from fraud_pipelines.params import DEFAULTS
from fraud_pipelines.publish import code_revision

PIPELINE_NAME = "fraud-training"
DEFAULT_PIPELINE_ROOT = "s3://models/kfp-root"


def _in_cluster_env() -> dict[str, str]:
    return {
        "FRAUD_S3__ENDPOINT": "minio.fraud.svc:9000",
        "FRAUD_S3__SECURE": "false",
        "FRAUD_KAFKA__BOOTSTRAP_SERVERS": "fraud-kafka-kafka-bootstrap.fraud.svc:9092",
        "MPLCONFIGDIR": "/tmp/matplotlib",
    }


def _secret_keys() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "FRAUD_S3__ACCESS_KEY", "AWS_SECRET_ACCESS_KEY": "FRAUD_S3__SECRET_KEY"}


# The production overlays' Kafka (components/production): TLS on 9093 with SCRAM-SHA-512,
# the publish step as KafkaUser fraud-model-publisher (write model-events), Strimzi's
# cluster CA mounted as a file.
KAFKA_PUBLISHER = "fraud-model-publisher"
KAFKA_CA_SECRET = "fraud-kafka-cluster-ca-cert"
KAFKA_CA_DIR = "/etc/fraud/kafka-ca"


@dataclass(frozen=True)
class ClusterConfig:
    """What every step gets on a cluster: the credentials Secrets, the environment, and
    Secrets mounted as files."""

    secret_name: str = "fraud-s3"
    secret_key_to_env: Mapping[str, str] = field(default_factory=_secret_keys)
    env: Mapping[str, str] = field(default_factory=_in_cluster_env)
    cpu: str = "2"
    memory: str = "8G"
    # More Secrets as environment variables: secret name -> {key: variable}.
    extra_secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Secrets as files: secret name -> mount path.
    secret_volumes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def secured_kafka(cls, bootstrap: str = "fraud-kafka-kafka-bootstrap.fraud.svc:9093") -> "ClusterConfig":
        """The production overlays' Kafka: SASL_SSL with the publisher's own KafkaUser."""
        env = {
            **_in_cluster_env(),
            "FRAUD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "FRAUD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "FRAUD_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "FRAUD_KAFKA__SASL_USERNAME": KAFKA_PUBLISHER,
            "FRAUD_KAFKA__SSL_CA_FILE": f"{KAFKA_CA_DIR}/ca.crt",
        }
        return cls(
            env=env,
            extra_secrets={KAFKA_PUBLISHER: {"password": "FRAUD_KAFKA__SASL_PASSWORD"}},
            secret_volumes={KAFKA_CA_SECRET: KAFKA_CA_DIR},
        )


class PipelineOutputs(NamedTuple):
    summary: str
    report: HTML


@dataclass(frozen=True)
class StepRuntime:
    """What every step's task gets: its image, and on a cluster the Secret, environment and
    resources (none for local runs)."""

    image: str
    cluster: ClusterConfig | None = None

    def configure(self, task: Any, name: str) -> Any:
        task.set_display_name(name)
        task.set_container_image(self.image)
        task.set_caching_options(False)
        if self.cluster is not None:
            cluster = self.cluster
            kubernetes.use_secret_as_env(
                task, secret_name=cluster.secret_name, secret_key_to_env=dict(cluster.secret_key_to_env)
            )
            for secret, key_to_env in cluster.extra_secrets.items():
                kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=dict(key_to_env))
            for secret, mount_path in cluster.secret_volumes.items():
                kubernetes.use_secret_as_volume(task, secret_name=secret, mount_path=mount_path)
            for key, value in cluster.env.items():
                task.set_env_variable(key, value)
            task.set_cpu_request(cluster.cpu).set_cpu_limit(cluster.cpu)
            task.set_memory_request(cluster.memory).set_memory_limit(cluster.memory)
        return task


def make_pipeline(image: str | None = None, cluster: ClusterConfig | None = None) -> Any:
    """The pipeline with its steps on ``image`` (default ``pipeline_image()``); ``cluster``
    adds the Kubernetes Secret, environment and resources (none for local runs).

    The pipeline function spells out every parameter: kfp reads them from its signature."""
    configure = StepRuntime(image or pipeline_image(), cluster).configure

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fraud model: point-in-time data, prequential selection, ONNX, champion/challenger.",
    )
    def fraud_training(
        source: str = DEFAULTS.source,
        source_path: str = DEFAULTS.source_path,
        source_options: str = DEFAULTS.source_options,
        train_start: str = DEFAULTS.train_start,
        train_days: int = DEFAULTS.train_days,
        delay_days: int = DEFAULTS.delay_days,
        test_days: int = DEFAULTS.test_days,
        history_days: int = DEFAULTS.history_days,
        burn_in_days: int = DEFAULTS.burn_in_days,
        candidates: str = DEFAULTS.candidates,
        folds: int = DEFAULTS.folds,
        search: str = DEFAULTS.search,
        seed: int = DEFAULTS.seed,
        threshold: float = DEFAULTS.threshold,
        k: int = DEFAULTS.k,
        protocol: str = DEFAULTS.protocol,
        model_name: str = DEFAULTS.model_name,
        version: str = DEFAULTS.version,
        code_revision: str = DEFAULTS.code_revision,
        min_improvement: float = DEFAULTS.min_improvement,
        shadow: bool = DEFAULTS.shadow,
        upload: bool = DEFAULTS.upload,
    ) -> PipelineOutputs:
        data = configure(
            c.dataset(
                source=source,
                source_path=source_path,
                source_options=source_options,
                train_start=train_start,
                train_days=train_days,
                delay_days=delay_days,
                test_days=test_days,
                history_days=history_days,
                burn_in_days=burn_in_days,
            ),
            "dataset",
        )
        trained = configure(
            c.train(
                train_set=data.outputs["train"], candidates=candidates, folds=folds, search=search, seed=seed
            ),
            "train",
        )
        scored = configure(
            c.evaluate(
                model=trained.outputs["model"],
                test=data.outputs["test"],
                threshold=threshold,
                k=k,
                protocol=protocol,
            ),
            "evaluate",
        )
        exported = configure(
            c.export(
                model=trained.outputs["model"],
                test=data.outputs["test"],
                model_name=model_name,
                version=version,
                code_revision=code_revision,
            ),
            "export",
        )
        published = configure(
            c.publish(
                onnx_model=exported.outputs["onnx_model"],
                test=data.outputs["test"],
                evaluation=scored.outputs["evaluation"],
                version=exported.outputs["Output"],
                model_name=model_name,
                min_improvement=min_improvement,
                shadow=shadow,
                upload=upload,
            ),
            "publish",
        )
        reported = configure(
            c.report(
                model=trained.outputs["model"],
                test=data.outputs["test"],
                predictions=scored.outputs["predictions"],
                evaluation=scored.outputs["evaluation"],
                k=k,
            ),
            "report",
        )
        return PipelineOutputs(summary=published.output, report=reported.outputs["html_report"])

    return fraud_training


#: The pipeline on the default image, without cluster settings.
fraud_training_pipeline = make_pipeline()


def compile(path: str | Path, image: str | None = None, cluster: ClusterConfig | None = None) -> Path:
    """Write the kfp YAML package to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(make_pipeline(image, cluster), str(path))
    return path


def submit(
    host: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    image: str | None = None,
    pipeline_root: str = DEFAULT_PIPELINE_ROOT,
    experiment: str = "fraud",
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    cluster: ClusterConfig | None = None,
    client_factory: Callable[..., Any] | None = None,
) -> str:
    """Compile with cluster settings and start a run on the Kubeflow Pipelines at ``host``;
    returns the run id. ``arguments``: pipeline parameters (``code_revision`` defaults to the
    local git commit)."""
    from kfp import Client

    args = dict(arguments or {})
    args.setdefault("code_revision", code_revision())
    factory = client_factory or Client
    client = factory(host=host, namespace=namespace) if namespace else factory(host=host)
    result = client.create_run_from_pipeline_func(
        make_pipeline(image or pipeline_image(), cluster or ClusterConfig()),
        arguments=args,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        pipeline_root=pipeline_root,
        service_account=service_account,
        enable_caching=False,
    )
    return str(result.run_id)


__all__ = ["DEFAULT_IMAGE", "ClusterConfig", "compile", "fraud_training_pipeline", "make_pipeline", "submit"]
