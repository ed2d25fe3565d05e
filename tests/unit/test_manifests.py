"""Offline checks of the Kubernetes manifests (kustomize/) and the alert rules (observability/).

Every kustomization is rendered with the pinned kustomize through ``kustomize/validate.sh``
(which installs kustomize and kubeconform into ``~/.cache/fraud-platform/bin`` when they are
missing, and renders from a temporary copy with placeholder credentials). The tests then
check what would reach a cluster: pinned images, resources and non-root on every container,
the Kafka -> InferenceService wiring, model storage and its credentials, secrets handling,
topics against ``fraudcore.settings``, schema validity (kubeconform), and that the alert
rules in ``observability/alerts.yml`` are the ones in the PrometheusRule.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraudcore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = ROOT / "kustomize" / "validate.sh"
ALERTS = ROOT / "observability" / "alerts.yml"
DASHBOARDS = ROOT / "observability" / "dashboards"

TARGETS = ["base", "overlays/kind", "overlays/eks", "overlays/gke"]
LOCAL = ["base", "overlays/kind"]  # in-cluster MinIO, exact topic partitions
CLOUD = ["overlays/eks", "overlays/gke"]  # S3 / GCS with workload identity

Doc = dict[str, Any]

POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}
# Platform processes and the metrics port each registers (fraudcore.settings.MetricsPorts).
PLATFORM_DEPLOYMENTS = {
    "producer": "producer",
    "quality-gate": "quality_gate",
    "archiver": "archiver",
    "feature-job": "feature_job",
    "console": "console",
}
WORKLOAD_IDENTITY = ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account")
KSERVE_S3_ANNOTATIONS = (
    "serving.kserve.io/s3-endpoint",
    "serving.kserve.io/s3-usehttps",
    "serving.kserve.io/s3-region",
)


# ---------------------------------------------------------------------------- helpers


def _run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@cache
def render(target: str) -> list[Doc]:
    """The objects ``kustomize build kustomize/<target>`` produces (placeholder credentials)."""
    proc = _run(VALIDATE, "render", target)
    if proc.returncode != 0:
        pytest.fail(
            f"`kustomize/validate.sh render {target}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"kustomize/{target} rendered no objects"
    return docs


def objects(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{f' named {name}' if name else ''}, found {len(found)}"
    return found[0]


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def dig(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


@dataclass
class Container:
    where: str  # e.g. "Deployment/archiver container archiver"
    spec: Doc
    pod_security: Doc  # the pod-level securityContext ({} when the object has none)
    fallback_security: Doc  # the ServingRuntime container a model container is merged with


def containers(docs: list[Doc]) -> Iterator[Container]:
    """Every container (and init container) an object will run, with its security context."""
    runtimes = {d["metadata"]["name"]: d for d in objects(docs, "ServingRuntime")}
    for doc in docs:
        kind = doc["kind"]
        pods: list[tuple[str, Doc]] = []
        if kind in POD_TEMPLATE_PATHS:
            pods.append(("", dig(doc, *POD_TEMPLATE_PATHS[kind]) or {}))
        elif kind == "ServingRuntime":
            pods.append(("", doc["spec"]))
        elif kind == "InferenceService":
            for component in ("predictor", "transformer", "explainer"):
                if component in doc["spec"]:
                    pods.append((f" {component}", doc["spec"][component]))
        for label, pod in pods:
            pod_security = pod.get("securityContext") or {}
            for field in ("initContainers", "containers"):
                for c in pod.get(field) or []:
                    yield Container(f"{ident(doc)}{label} {field} {c.get('name')}", c, pod_security, {})
            model = pod.get("model")
            if model:
                runtime = runtimes.get(model.get("runtime", ""), {})
                base = (dig(runtime, "spec", "containers") or [{}])[0]
                yield Container(
                    f"{ident(doc)}{label} model", model, pod_security, base.get("securityContext") or {}
                )


def secret_refs(pod: Doc) -> Iterator[tuple[str, str, bool]]:
    """(kind, name, optional) of every ConfigMap/Secret a pod spec refers to."""
    for field in ("initContainers", "containers"):
        for c in pod.get(field) or []:
            for src in c.get("envFrom") or []:
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in src:
                        yield kind, src[key]["name"], bool(src[key].get("optional"))
            for env in c.get("env") or []:
                ref = env.get("valueFrom") or {}
                for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if key in ref:
                        yield kind, ref[key]["name"], bool(ref[key].get("optional"))
    for volume in pod.get("volumes") or []:
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], bool(volume["configMap"].get("optional"))
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], bool(volume["secret"].get("optional"))


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in POD_TEMPLATE_PATHS:
            yield ident(doc), dig(doc, *POD_TEMPLATE_PATHS[doc["kind"]]) or {}
        elif doc["kind"] == "InferenceService":
            for component in ("predictor", "transformer"):
                if component in doc["spec"]:
                    yield f"{ident(doc)} {component}", doc["spec"][component]


def platform_config(docs: list[Doc]) -> dict[str, str]:
    """The FRAUD_* settings every platform container gets (ConfigMap fraud-config-<hash>)."""
    found = [c for c in objects(docs, "ConfigMap") if c["metadata"]["name"].startswith("fraud-config")]
    assert len(found) == 1, "expected one generated ConfigMap fraud-config-<hash>"
    data: dict[str, str] = found[0]["data"]
    return data


def default_settings() -> Settings:
    return Settings(_env_file=None)  # the defaults, not a developer's .env


# ----------------------------------------------------------------------- the tests


@pytest.mark.parametrize("target", TARGETS)
def test_every_image_has_an_explicit_tag(target: str) -> None:
    problems = []
    for c in containers(render(target)):
        image = c.spec.get("image")
        if image is None and c.where.endswith(" model"):
            continue  # a model container takes its image from the ServingRuntime
        name, _, tag = (image or "").rpartition(":")
        if not image or "@sha256:" in image:
            tag = "digest" if image else ""
        if not tag or "/" in tag or not name or tag == "latest":
            problems.append(f"{c.where}: image {image!r}")
    assert not problems, "images must carry an explicit tag other than latest:\n" + "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_limits_and_runs_as_non_root(target: str) -> None:
    problems = []
    for c in containers(render(target)):
        resources = c.spec.get("resources") or {}
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound) or {})
            if missing:
                problems.append(f"{c.where}: no {bound} for {sorted(missing)}")
        own = c.spec.get("securityContext") or {}
        non_root = next(
            (
                s["runAsNonRoot"]
                for s in (own, c.fallback_security, c.pod_security)
                if s.get("runAsNonRoot") is not None
            ),
            False,
        )
        uid = next(
            (s["runAsUser"] for s in (own, c.fallback_security, c.pod_security) if "runAsUser" in s), None
        )
        if not non_root or uid == 0:
            problems.append(f"{c.where}: not forced to run as non-root")
        if c.where.endswith(" model"):
            continue  # privilege settings come from the ServingRuntime container
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c.where}: allowPrivilegeEscalation is not false")
        if "ALL" not in (dig(own, "capabilities", "drop") or []):
            problems.append(f"{c.where}: capabilities are not all dropped")
    # Containers run by Strimzi from the Kafka custom resources.
    for doc in render(target):
        specs: list[tuple[str, Any]] = []
        if doc["kind"] == "KafkaNodePool":
            specs.append((ident(doc), doc["spec"]))
        if doc["kind"] == "Kafka":
            spec = doc["spec"]
            specs += [
                (f"{ident(doc)} {k}", dig(spec, "entityOperator", k))
                for k in ("topicOperator", "userOperator")
            ]
            specs += [(f"{ident(doc)} {k}", spec.get(k)) for k in ("kafkaExporter", "cruiseControl")]
        for where, spec in specs:
            if spec is None:
                continue
            for bound in ("requests", "limits"):
                if {"cpu", "memory"} - set(dig(spec, "resources", bound) or {}):
                    problems.append(f"{where}: resources.{bound} needs cpu and memory")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_platform_containers_are_hardened_and_probed(target: str) -> None:
    docs = render(target)
    problems = []
    for c in containers(docs):
        image = c.spec.get("image") or ""
        if "fraud-platform/" in image and not (c.spec.get("securityContext") or {}).get(
            "readOnlyRootFilesystem"
        ):
            problems.append(f"{c.where}: root filesystem is writable")
    servers = [
        c
        for c in containers(docs)
        if c.spec.get("ports") and not c.where.startswith(("Job/", "CronJob/")) and " model" not in c.where
    ]
    assert servers, "no server containers found"
    for c in servers:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c.spec:
                problems.append(f"{c.where}: no {probe}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(target: str) -> None:
    """Every ConfigMap, Secret and ServiceAccount named by a pod exists (generated names included)."""
    docs = render(target)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    # Secrets Strimzi creates from rendered objects: one per KafkaUser (its password) and
    # the cluster CA's public certificate.
    names |= {("Secret", u["metadata"]["name"]) for u in objects(docs, "KafkaUser")}
    names |= {("Secret", f"{k['metadata']['name']}-cluster-ca-cert") for k in objects(docs, "Kafka")}
    problems = []
    for where, pod in pod_specs(docs):
        for kind, name, optional in secret_refs(pod):
            if (kind, name) not in names and not optional:
                problems.append(f"{where}: {kind} {name} does not exist")
        account = pod.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in names:
            problems.append(f"{where}: ServiceAccount {account} does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_source_delivers_transactions_to_the_transformer(target: str) -> None:
    docs = render(target)
    source = one(docs, "KafkaSource")
    assert source["apiVersion"] == "sources.knative.dev/v1beta1"
    spec = source["spec"]
    assert spec["topics"] == [default_settings().topics.transactions.name]
    assert spec["consumerGroup"] == "fraud-scoring"

    ref = spec["sink"]["ref"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "fraud",
    )
    assert ref.get("namespace", source["metadata"]["namespace"]) == source["metadata"]["namespace"]
    assert spec["sink"]["uri"] == "/v1/models/fraud:predict"
    isvc = one(docs, "InferenceService", "fraud")
    assert isvc["metadata"]["namespace"] == source["metadata"]["namespace"]
    transformer = isvc["spec"].get("transformer") or {}
    assert transformer.get("containers"), "the sink must be an InferenceService with a transformer"
    command = transformer["containers"][0]["command"] + transformer["containers"][0].get("args", [])
    assert "fraud_transformer" in command
    assert "--predictor_host" not in command, "KServe supplies --predictor_host to a transformer itself"

    delivery = spec["delivery"]
    assert delivery["retry"] >= 1
    assert delivery["backoffPolicy"] in ("exponential", "linear")
    assert re.fullmatch(r"PT[0-9.]+S", delivery["backoffDelay"])
    dead = delivery["deadLetterSink"]["ref"]
    sink = one(docs, dead["kind"], dead["name"])
    assert sink["apiVersion"] == dead["apiVersion"]
    topics = {t["spec"].get("topicName", t["metadata"]["name"]) for t in objects(docs, "KafkaTopic")}
    assert sink["spec"]["topic"] == default_settings().topics.dead_letter.name in topics

    roles = [
        r
        for r in objects(docs, "ClusterRole")
        if dig(r, "metadata", "labels", "duck.knative.dev/addressable") == "true"
    ]
    assert any(
        "serving.kserve.io" in rule.get("apiGroups", [])
        and "inferenceservices" in rule.get("resources", [])
        and {"get", "list", "watch"} <= set(rule.get("verbs", []))
        for role in roles
        for rule in role["rules"]
    ), "Knative needs an addressable-resolver ClusterRole that can read InferenceServices"


@pytest.mark.parametrize("target", TARGETS)
def test_inference_service_model_storage_and_credentials(target: str) -> None:
    docs = render(target)
    isvc = one(docs, "InferenceService", "fraud")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "onnx"

    runtime = one(docs, "ServingRuntime", model["runtime"])
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert "onnx" in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    server = runtime["spec"]["containers"][0]
    argv = server["command"] + server["args"]
    assert argv[:3] == ["python", "-m", "fraud_predictor"]
    assert argv[argv.index("--model_dir") + 1] == "/mnt/models"
    assert argv[argv.index("--http_port") + 1] == "8080"

    models_bucket = platform_config(docs)["FRAUD_S3__MODELS_BUCKET"]
    storage = model["storageUri"]
    assert re.fullmatch(rf"(s3|gs)://{re.escape(models_bucket)}/fraud/champion", storage), storage
    # Hot swaps on a cluster: the model container reads model-events and downloads the new
    # champion itself, so it needs the platform's settings and the same champion URI.
    env = {e["name"]: e.get("value") for e in model.get("env", [])}
    # The same URI as KServe's storage initializer: gs:// on GKE is read with Workload Identity.
    assert env.get("FRAUD_SERVING__MODEL_URI") == storage
    config_maps = {c["metadata"]["name"] for c in objects(docs, "ConfigMap")}
    refs = [r["configMapRef"]["name"] for r in model.get("envFrom", []) if "configMapRef" in r]
    assert any(r in config_maps and r.startswith("fraud-config") for r in refs), refs

    account = one(docs, "ServiceAccount", predictor["serviceAccountName"])
    secrets = objects(docs, "Secret")
    if target in LOCAL:
        assert storage == "s3://models/fraud/champion"
        assert models_bucket == default_settings().s3.models_bucket
        [ref] = account.get("secrets") or [{}]
        secret = one(docs, "Secret", ref.get("name"))
        annotations = secret["metadata"].get("annotations") or {}
        missing = [a for a in KSERVE_S3_ANNOTATIONS if a not in annotations]
        assert not missing, f"{ident(secret)} lacks KServe's annotations {missing}"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["data"])
        minio = one(docs, "Service", "minio")
        port = next(p["port"] for p in minio["spec"]["ports"] if p["name"] == "api")
        namespace = minio["metadata"]["namespace"]
        assert annotations["serving.kserve.io/s3-endpoint"] == f"minio.{namespace}.svc:{port}"
        assert platform_config(docs)["FRAUD_S3__ENDPOINT"] == f"minio:{port}"
    else:
        assert not account.get("secrets"), "cloud overlays use workload identity, not a key Secret"
        assert any(a in (account["metadata"].get("annotations") or {}) for a in WORKLOAD_IDENTITY)
        # The only Secrets: the managed Redis's AUTH token and the review console's session
        # secret and analysts' password hashes (no identity replaces either).
        generated = ("fraud-redis-", "fraud-console-secrets-")
        keys = [ident(s) for s in secrets if not s["metadata"]["name"].startswith(generated)]
        assert not keys, f"cloud overlays must not ship key Secrets: {keys}"
        for sa in objects(docs, "ServiceAccount"):
            annotations = sa["metadata"].get("annotations") or {}
            assert any(a in annotations for a in WORKLOAD_IDENTITY), f"{ident(sa)} has no workload identity"


def test_no_secret_values_are_committed() -> None:
    """Secrets only come from secretGenerators reading files that git ignores."""
    listed = _run(
        "git", "ls-files", "--cached", "--others", "--exclude-standard", "kustomize", "observability"
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    files = [ROOT / f for f in listed.stdout.split() if f.endswith((".yaml", ".yml"))]
    assert files, "no manifests found"
    problems = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
                problems.append(f"{path.relative_to(ROOT)}: Secret with inline values")
            for generator in doc.get("secretGenerator") or []:
                if generator.get("literals"):
                    problems.append(
                        f"{path.relative_to(ROOT)}: secretGenerator {generator['name']} has literals"
                    )
                for source in (generator.get("envs") or []) + (generator.get("files") or []):
                    source_path = path.parent / str(source).split("=")[-1]
                    relative = source_path.relative_to(ROOT)
                    if _run("git", "check-ignore", "-q", relative).returncode != 0:
                        problems.append(f"{relative}: secret source is not ignored by git")
                    if _run("git", "ls-files", "--error-unmatch", relative).returncode == 0:
                        problems.append(f"{relative}: secret source is tracked by git")
                    example = source_path.with_name(source_path.name + ".example")
                    if not example.exists():
                        problems.append(f"{relative}: no committed template {example.name}")
    assert not problems, "\n".join(problems)

    # What gets rendered carries the values of that file (placeholders during validation).
    for secret in objects(render("base"), "Secret"):
        assert re.fullmatch(r"fraud-(s3|redis|console-secrets)-[a-z0-9]{10}", secret["metadata"]["name"]), (
            "not a generated Secret"
        )
        values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert all(v.startswith("placeholder-") for v in values.values()), "rendered a real secret value"


@pytest.mark.parametrize("target", TARGETS)
def test_topics_match_settings(target: str) -> None:
    docs = render(target)
    expected = {t.name: t for t in default_settings().topics.all()}
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in objects(docs, "KafkaTopic")}
    assert set(topics) == set(expected), "KafkaTopics differ from fraudcore.settings.TopicSettings"

    kafka = one(docs, "Kafka")
    brokers = sum(
        p["spec"]["replicas"] for p in objects(docs, "KafkaNodePool") if "broker" in p["spec"]["roles"]
    )
    for name, topic in topics.items():
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        if target in CLOUD:
            assert spec["partitions"] >= expected[name].partitions, name
        else:
            assert spec["partitions"] == expected[name].partitions, name
        assert spec["replicas"] <= brokers, f"{name}: more replicas than brokers"
        assert int(spec["config"]["min.insync.replicas"]) <= max(1, spec["replicas"] - 1), name
        if expected[name].retention_ms:
            assert int(spec["config"]["retention.ms"]) == expected[name].retention_ms, name

    config = kafka["spec"]["kafka"]["config"]
    if target in CLOUD:
        assert brokers == 3
        assert all(t["spec"]["replicas"] == 3 for t in topics.values())
        assert (config["default.replication.factor"], config["min.insync.replicas"]) == (3, 2)
        assert any(listener["tls"] for listener in kafka["spec"]["kafka"]["listeners"])
        assert platform_config(docs)["FRAUD_KAFKA__REPLICATION_FACTOR"] == "3"
    bootstrap = platform_config(docs)["FRAUD_KAFKA__BOOTSTRAP_SERVERS"]
    port = 9093 if target in CLOUD else 9092  # TLS with SCRAM in the cloud (test_kafka_security)
    assert bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:{port}"


@pytest.mark.parametrize("target", TARGETS)
def test_feast_settings_agree(target: str) -> None:
    """The Feast CLI (feature_store.yaml's variables) and the Python side (FRAUD_FEATURES__*) agree."""
    config = platform_config(render(target))
    assert config["FEAST_REGISTRY"] == config["FRAUD_FEATURES__REGISTRY"]
    assert config["FRAUD_FEAST_OFFLINE_ROOT"] == config["FRAUD_FEATURES__OFFLINE_ROOT"]
    # FEAST_REDIS holds the Redis password: the Feast containers compose it (test_redis_manifests).
    assert "FEAST_REDIS" not in config
    bucket = config["FRAUD_S3__FEATURES_BUCKET"]
    for key in ("FEAST_REGISTRY", "FRAUD_FEAST_OFFLINE_ROOT"):
        assert re.match(rf"(s3|gs)://{re.escape(bucket)}(/|$)", config[key]), f"{key} is outside {bucket}"
    scheme = "https" if config["FRAUD_S3__SECURE"] == "true" else "http"
    endpoint = f"{scheme}://{config['FRAUD_S3__ENDPOINT']}"
    for key in ("FRAUD_FEAST_S3_ENDPOINT", "FEAST_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        assert config[key] == endpoint, f"{key} differs from the platform's S3 endpoint"
    # The global variable would also send STS (IRSA's token exchange) to the object store.
    assert "AWS_ENDPOINT_URL" not in config


@pytest.mark.parametrize("target", TARGETS)
def test_platform_deployments(target: str) -> None:
    """Entry points, metrics ports (from fraudcore.settings) and the simulator's default of 0 replicas."""
    docs = render(target)
    ports = dict(default_settings().metrics_ports.items())
    commands = {
        "producer": ["fraud", "seed", "--rate", "500"],
        "quality-gate": ["fraud", "gate"],
        "archiver": ["fraud", "archive"],
        "feature-job": ["fraud", "features", "stream"],
        "console": ["fraud", "console", "serve"],
    }
    for name, component in PLATFORM_DEPLOYMENTS.items():
        deployment = one(docs, "Deployment", name)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == commands[name]
        metrics = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
        assert metrics == [ports[component]], f"{name}: metrics port differs from MetricsPorts.{component}"
    assert one(docs, "Deployment", "producer")["spec"]["replicas"] == 0
    if target == "overlays/kind":
        for deployment in objects(docs, "Deployment"):
            assert deployment["spec"]["replicas"] <= 1, ident(deployment)
        for image in (c.spec.get("image") or "" for c in containers(docs)):
            if "fraud-platform/" in image:
                assert re.fullmatch(r"fraud-platform/[a-z-]+:dev", image), image


@pytest.mark.parametrize("target", TARGETS)
def test_every_component_is_scraped(target: str) -> None:
    docs = render(target)
    monitors = objects(docs, "PodMonitor") + objects(docs, "ServiceMonitor")
    names = {m["metadata"]["name"] for m in monitors}
    expected = {
        *PLATFORM_DEPLOYMENTS,
        "fraud-transformer",
        "fraud-predictor",
        "feast-server",
        "kafka-exporter",
    }
    if target in LOCAL:  # the cloud overlays use the provider's object store and Redis
        expected |= {"minio", "redis"}
    assert expected <= names, f"missing monitors: {sorted(expected - names)}"

    # A PodMonitor on a workload of ours must select its pods and name a declared port.
    for monitor in objects(docs, "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        for doc in docs:
            if doc["kind"] not in POD_TEMPLATE_PATHS:
                continue
            labels = dig(doc, *POD_TEMPLATE_PATHS[doc["kind"]][:-1], "metadata", "labels") or {}
            if selector.items() <= labels.items():
                declared = [p.get("name") for c in containers([doc]) for p in c.spec.get("ports", [])]
                assert port in declared, (
                    f"PodMonitor {monitor['metadata']['name']}: no port {port} in {ident(doc)}"
                )
    for monitor in objects(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in objects(docs, "Service")
            if selector.items() <= (s["metadata"].get("labels") or {}).items()
        ]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        port = monitor["spec"]["endpoints"][0]["port"]
        scraped = [s for s in services if port in [p["name"] for p in s["spec"]["ports"]]]
        assert len(scraped) == 1, (
            f"ServiceMonitor {monitor['metadata']['name']}: port {port} on {len(scraped)} Services "
            "(each target must be scraped once)"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_rule_equals_alerts_file(target: str) -> None:
    rules_file = yaml.safe_load(ALERTS.read_text())
    rule = one(render(target), "PrometheusRule")
    assert rule["spec"]["groups"] == rules_file["groups"], (
        "the PrometheusRule's groups differ from observability/alerts.yml; edit both together"
    )


def test_alerts_cover_the_required_signals() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    exprs = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    signals = {
        "ingest rate drop": "quality_gate_(accepted|rejected)_total",
        "end-to-end p95": "fraud_e2e_latency_seconds_bucket",
        "error rate": "transformer_errors_total",
        "consumer lag": "consumer_lag_messages",
        "dead letters": "dead_letter_messages_total",
    }
    for signal, metric in signals.items():
        assert any(metric in expr for expr in exprs.values()), f"no alert on {signal} ({metric})"
    p95 = next(e for e in exprs.values() if "fraud_e2e_latency_seconds_bucket" in e)
    assert "histogram_quantile(0.95" in p95
    assert "0.010" in p95
    assert any("0.001" in e for e in exprs.values() if "transformer_errors_total" in e)
    promtool = shutil.which("promtool")
    if promtool:
        proc = _run(promtool, "check", "rules", ALERTS)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_are_generated_from_the_json_files() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no dashboards in observability/dashboards"
    maps = {
        key: cm
        for cm in objects(render("base"), "ConfigMap")
        if dig(cm, "metadata", "labels", "grafana_dashboard") == "1"
        for key in cm.get("data", {})
    }
    for path in files:
        dashboard = json.loads(path.read_text())
        missing = [key for key in ("uid", "title", "panels") if not dashboard.get(key)]
        assert not missing, f"{path.name}: no {missing}"
        assert path.name in maps, f"{path.name} is not in a grafana_dashboard ConfigMap"
        assert maps[path.name]["data"][path.name] == path.read_text(), (
            f"{path.name}: ConfigMap is not the file"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_kubeconform_accepts(target: str) -> None:
    proc = _run(VALIDATE, "check", target)
    assert proc.returncode == 0, f"kubeconform rejected kustomize/{target}:\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"Invalid: 0, Errors: 0, Skipped: 0", proc.stdout), proc.stdout


def test_kubeconform_rejects_the_broken_fixture() -> None:
    proc = _run(VALIDATE, "check", "tests/broken")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the broken fixture passed validation:\n{out}"
    assert "imagePullPolice" in out, f"the misspelled field was not reported:\n{out}"
    assert "could not find schema for FraudWidget" in out, f"the unknown kind was not reported:\n{out}"


def test_servers_listen_locally_unless_the_cluster_config_opens_them() -> None:
    """A laptop's components keep their metrics and the KServe servers on 127.0.0.1; pods
    must open them to the cluster (Prometheus, KServe's ingress), through the shared config
    every workload reads."""
    defaults = Settings(_env_file=None)
    assert (defaults.metrics_host, defaults.serving.bind_host) == ("127.0.0.1", "127.0.0.1")
    config = (ROOT / "kustomize" / "base" / "config" / "platform.env").read_text().splitlines()
    assert "FRAUD_METRICS_HOST=0.0.0.0" in config
    assert "FRAUD_SERVING__BIND_HOST=0.0.0.0" in config
