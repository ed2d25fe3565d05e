"""What keeps the platform observable and restartable on a cluster, checked on the rendered
manifests: the KServe monitors select the port the pods expose in each deployment mode,
every scraped component has an absent() alert, workers' liveness is their consume-loop
health, the KServe servers have startup probes, and the KafkaSource bounds how long one
event can hold a partition, starts new groups at the earliest offset, and has its dead
letters counted by the dead-letter alert."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraud_app.eventing import iso_duration_s
from fraudcore.metrics import HEALTH_PATH
from tests.unit.test_manifests import ALERTS, ROOT, TARGETS, Doc, dig, objects, one, render

# KServe labels every pod of an InferenceService component with these (both modes).
KSERVE_POD_LABELS = ("serving.kserve.io/inferenceservice", "component")
# Knative Serving renames the (single) port of the user container to this.
KNATIVE_USER_PORT = "user-port"
STANDARD_MODES = {"Standard", "RawDeployment"}
KNATIVE_MODES = {"Knative", "Serverless"}

# Where each scraped component of the platform defines its metrics.
COMPONENT_SOURCES = {
    "producer": "producers/fraud_producers/producer.py",
    "quality-gate": "producers/fraud_producers/gate.py",
    "archiver": "producers/fraud_producers/archive.py",
    "feature-job": "feature_store/fraud_features",
    "model-monitor": "monitoring/fraud_monitor",
    "console": "console/fraud_console",
    "fraud-transformer": "transformers/fraud_transformer",
    "fraud-predictor": "predictors/fraud_predictor",
}
THIRD_PARTY_MONITORS = {"kafka-exporter"}
DEFINITION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")
SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")

# A failing event must not hold its partition (ordering: ordered) for longer than this: long
# enough to ride out a dependency's restart (a bad event is a 4xx, dead-lettered at once),
# short enough that a dependency that stays down reaches the dead-letter topic.
PARTITION_HOLD_LIMIT_S = 90.0
# ... and the retries must outlast a predictor down for 30 s that takes up to 20 s to restart.
MIN_RETRY_BACKOFF_S = 50.0
# ... and a healthy request must never be cut: 100 times the end-to-end p95 objective.
MIN_DELIVERY_TIMEOUT_S = 1.0


def alert_rules() -> dict[str, Doc]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


# ------------------------------------------------------------------ monitors (scraping)


def kserve_server(docs: list[Doc], component: str) -> Doc:
    """The container that serves an InferenceService component (the runtime's, for a model)."""
    spec = one(docs, "InferenceService", "fraud")["spec"][component]
    if component == "transformer":
        container: Doc = spec["containers"][0]
        return container
    model = spec["model"]
    runtime = one(docs, "ServingRuntime", model["runtime"])["spec"]["containers"][0]
    return {**runtime, **{k: v for k, v in model.items() if k in ("ports", "startupProbe")}}


def http_port(container: Doc) -> int:
    argv = container.get("command", []) + container.get("args", [])
    return int(argv[argv.index("--http_port") + 1])


def pod_ports(mode: str, container: Doc) -> list[tuple[str, int]]:
    """(name, number) of the server's ports as its running pod lists them."""
    declared = [(p.get("name", ""), p["containerPort"]) for p in container.get("ports", [])]
    if mode in STANDARD_MODES:
        return declared  # plain Deployments: the ports as written
    if mode in KNATIVE_MODES:
        assert len(declared) == 1, "Knative allows the user container one port"
        return [(KNATIVE_USER_PORT, declared[0][1])]
    raise AssertionError(f"unknown KServe deployment mode {mode!r}")


def selected(endpoint: Doc, ports: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ports a PodMonitor endpoint keeps (by name, or by number)."""
    if "port" in endpoint:
        return [p for p in ports if p[0] == endpoint["port"]]
    if "portNumber" in endpoint:
        return [p for p in ports if p[1] == endpoint["portNumber"]]
    return ports  # no selector: every declared port


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("component", ["transformer", "predictor"])
def test_kserve_monitors_scrape_the_port_the_pods_expose(target: str, component: str) -> None:
    docs = render(target)
    isvc = one(docs, "InferenceService", "fraud")
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    server = kserve_server(docs, component)
    ports = pod_ports(mode, server)
    labels = {KSERVE_POD_LABELS[0]: "fraud", KSERVE_POD_LABELS[1]: component}
    monitors = [
        m
        for m in objects(docs, "PodMonitor")
        if m["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(monitors) == 1, f"{component}: {len(monitors)} PodMonitors select its pods"
    endpoints = monitors[0]["spec"]["podMetricsEndpoints"]
    for endpoint in endpoints:
        assert selected(endpoint, ports), f"{target} ({mode}): {endpoint} selects none of {ports}"
    scraped = {p for endpoint in endpoints for p in selected(endpoint, ports)}
    assert {number for _name, number in scraped} == {http_port(server)}, (
        f"{target} ({mode}): scrapes {scraped}, the server's metrics are on {http_port(server)}"
    )


def test_the_base_monitors_would_miss_knative_pods() -> None:
    """The check above can fail: the declared name `http1` is gone in Knative mode."""
    docs = render("base")
    server = kserve_server(docs, "transformer")
    [endpoint] = one(docs, "PodMonitor", "fraud-transformer")["spec"]["podMetricsEndpoints"]
    assert selected(endpoint, pod_ports("Standard", server)) == [("http1", 8080)]
    assert selected(endpoint, pod_ports("Knative", server)) == []


def _base(name: str) -> str:
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)


def defined_in(source: str) -> set[str]:
    path = ROOT / source
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    return {_base(m) for f in files for m in DEFINITION.findall(Path(f).read_text())}


def test_every_scraped_component_has_an_absent_alert() -> None:
    monitors = {m["metadata"]["name"] for m in objects(render("base"), "PodMonitor")} - THIRD_PARTY_MONITORS
    assert monitors == set(COMPONENT_SOURCES), "a PodMonitor without a known source (COMPONENT_SOURCES)"
    absent = {
        _base(metric): name
        for name, rule in alert_rules().items()
        for metric in re.findall(r"\babsent\(\s*([a-zA-Z_:][\w:]*)", rule["expr"])
    }
    missing = []
    for component, source in COMPONENT_SOURCES.items():
        covered = defined_in(source) & set(absent)
        if component == "producer":
            # A simulator at 0 replicas by default: an absent() alert would always fire. What
            # it feeds is watched by the ingest-rate alert instead.
            assert not covered
            assert all(one(render(t), "Deployment", "producer")["spec"]["replicas"] == 0 for t in TARGETS)
            assert "quality_gate_(accepted|rejected)_total" in alert_rules()["FraudIngestRateDrop"]["expr"]
            continue
        if not covered:
            missing.append(component)
    assert not missing, f"no absent() alert on a metric of {missing}"


# ------------------------------------------------------------------------------ probes


@pytest.mark.parametrize("target", TARGETS)
def test_worker_liveness_is_the_consume_loop_health(target: str) -> None:
    workers = 0
    for deployment in objects(render(target), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            metrics = [p for p in container.get("ports", []) if p.get("name") == "metrics"]
            if not metrics or container.get("command", [""])[0] != "fraud":
                continue  # not a platform process (Feast's server has its own /health)
            workers += 1
            where = f"Deployment/{deployment['metadata']['name']}"
            live = dig(container, "livenessProbe", "httpGet") or {}
            assert live.get("path") == HEALTH_PATH, f"{where}: liveness is {live.get('path')}"
            assert live.get("port") in ("metrics", metrics[0]["containerPort"]), where
            ready = dig(container, "readinessProbe", "httpGet") or {}
            # A worker takes no traffic: ready once its metrics server is up. A platform
            # process that serves (the console's `http` port) is ready when that server says so.
            served = [p for p in container.get("ports", []) if p.get("name") == "http"]
            allowed = ("metrics", metrics[0]["containerPort"])
            if served:
                allowed = ("http", served[0]["containerPort"])
            assert ready.get("port") in allowed, where
    assert workers >= 5, "the platform's workers (and producer) were not found"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("component", ["transformer", "predictor"])
def test_kserve_servers_have_a_startup_probe(target: str, component: str) -> None:
    server = kserve_server(render(target), component)
    startup = server.get("startupProbe")
    assert startup, f"{component}: no startupProbe (liveness would kill a slow warm-up)"
    assert dig(startup, "httpGet", "port") == http_port(server)
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"{component}: {budget} s to start"


# ------------------------------------------------------------------------- KafkaSource


def worst_partition_hold_s(delivery: Doc) -> float:
    """How long one failing event keeps its partition waiting: every attempt timing out,
    with Knative's backoff (linear: delay x n; exponential: delay x 2^n) between them."""
    timeout = iso_duration_s(delivery["timeout"])
    delay = iso_duration_s(delivery.get("backoffDelay", "PT0S"))
    retries = int(delivery.get("retry", 0))
    factor = (lambda n: 2**n) if delivery.get("backoffPolicy") == "exponential" else (lambda n: n)
    return (retries + 1) * timeout + sum(delay * factor(n) for n in range(1, retries + 1))


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_source_bounds_how_long_one_event_holds_a_partition(target: str) -> None:
    source = one(render(target), "KafkaSource")["spec"]
    delivery = source["delivery"]
    assert "timeout" in delivery, "no per-attempt timeout: one hung request stalls its partition"
    assert iso_duration_s(delivery["timeout"]) >= MIN_DELIVERY_TIMEOUT_S
    assert worst_partition_hold_s(delivery) <= PARTITION_HOLD_LIMIT_S, worst_partition_hold_s(delivery)
    backoffs = worst_partition_hold_s({**delivery, "timeout": "PT0S"})
    assert backoffs >= MIN_RETRY_BACKOFF_S, (
        f"{backoffs} s of retries: a dependency restart dead-letters events"
    )


def test_the_partition_hold_arithmetic() -> None:
    delivery = {"timeout": "PT2S", "retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}
    assert worst_partition_hold_s(delivery) == pytest.approx(4 * 2 + 0.2 + 0.4 + 0.8)
    assert worst_partition_hold_s({**delivery, "timeout": "PT30S"}) > PARTITION_HOLD_LIMIT_S


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_source_starts_a_new_group_at_the_earliest_offset(target: str) -> None:
    assert one(render(target), "KafkaSource")["spec"]["initialOffset"] == "earliest"


@pytest.mark.parametrize("target", TARGETS)
def test_the_dead_letter_alert_counts_the_kafka_source_dead_letters(target: str) -> None:
    docs = render(target)
    dead = one(docs, "KafkaSource")["spec"]["delivery"]["deadLetterSink"]["ref"]
    topic = one(docs, dead["kind"], dead["name"])["spec"]["topic"]
    expr: Any = alert_rules()["FraudDeadLetterRateHigh"]["expr"]
    assert "dead_letter_messages_total" in expr, "the components' own dead letters"
    assert re.search(rf'kafka_topic_partition_current_offset\{{[^}}]*topic="{re.escape(topic)}"', expr), (
        f"the KafkaSink's topic {topic} is not counted"
    )
