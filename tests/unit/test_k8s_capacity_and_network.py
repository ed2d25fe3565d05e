"""The cloud overlays can reach their autoscaling targets: the ordered KafkaSource's partitions
leave room for the transformer's pods, and the NetworkPolicies admit what Knative needs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.unit.test_manifests import CLOUD, TARGETS, Doc, objects, one, render

# The capacity model (see components/production/kustomization.yaml): the rate the cloud
# overlays are sized for, and the transformer's request time under load.
TARGET_EVENTS_PER_S = 2_000
REQUEST_SECONDS = 0.020

TRANSFORMER_POD = {"serving.kserve.io/inferenceservice": "fraud", "component": "transformer"}


def partitions(docs: list[Doc], topic: str) -> int:
    return int(one(docs, "KafkaTopic", topic)["spec"]["partitions"])


@pytest.mark.parametrize("target", CLOUD)
def test_partitions_leave_room_for_the_transformers_concurrency(target: str) -> None:
    docs = render(target)
    source = one(docs, "KafkaSource", "fraud-scoring")
    assert source["spec"]["ordering"] == "ordered"  # one request in flight per partition
    [topic] = source["spec"]["topics"]
    in_flight_cap = partitions(docs, topic)
    needed = math.ceil(TARGET_EVENTS_PER_S * REQUEST_SECONDS)
    assert in_flight_cap >= needed, (
        f"{target}: {in_flight_cap} partitions cap the source at {in_flight_cap} requests in flight; "
        f"{TARGET_EVENTS_PER_S}/s at {REQUEST_SECONDS * 1000:.0f} ms needs {needed}"
    )
    transformer = one(docs, "InferenceService", "fraud")["spec"]["transformer"]
    assert transformer["scaleMetric"] == "concurrency"
    pods_the_cap_allows = in_flight_cap / transformer["scaleTarget"]
    pods_needed = needed / transformer["scaleTarget"]
    assert pods_the_cap_allows >= pods_needed
    assert transformer["maxReplicas"] >= math.ceil(pods_needed), "maxReplicas below the target's pods"
    # The gate forwards transactions-raw key by key into transactions: same parallelism.
    assert partitions(docs, "transactions-raw") == in_flight_cap


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def admitted(docs: list[Doc], pod: dict[str, str], namespace: str, port: int) -> bool:
    """Whether some ingress NetworkPolicy selecting ``pod`` admits ``namespace`` on ``port``."""
    for policy in objects(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]) or not _matches(spec["podSelector"], pod):
            continue
        for rule in spec.get("ingress") or []:
            ports = [p.get("port") for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            peers = rule.get("from") or []
            if not peers or any(
                "namespaceSelector" in peer
                and "podSelector" not in peer
                and _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                for peer in peers
            ):
                return True
    return False


@pytest.mark.parametrize("target", TARGETS)
def test_ingress_is_denied_by_default(target: str) -> None:
    deny = [
        p
        for p in objects(render(target), "NetworkPolicy")
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    assert deny, f"{target}: no default-deny ingress policy, so the checks below would prove nothing"
    assert not admitted(render(target), TRANSFORMER_POD, "some-other-namespace", 8012)


@pytest.mark.parametrize("target", CLOUD)
@pytest.mark.parametrize(
    ("namespace", "port", "why"),
    [
        ("knative-serving", 8012, "the activator forwards requests to queue-proxy"),
        ("knative-serving", 9090, "the autoscaler scrapes queue-proxy's concurrency metrics"),
        ("kourier-system", 8012, "the gateway sends requests to queue-proxy"),
        ("istio-system", 8012, "the gateway sends requests to queue-proxy"),
        ("monitoring", 9091, "Prometheus scrapes queue-proxy's request metrics"),
    ],
)
def test_knative_reaches_the_inference_pods(target: str, namespace: str, port: int, why: str) -> None:
    assert admitted(render(target), TRANSFORMER_POD, namespace, port), f"{target}: {namespace}:{port} ({why})"


CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "CustomResourceDefinition",
}


@pytest.mark.parametrize("target", TARGETS)
def test_every_namespaced_object_lands_in_the_platforms_namespace(target: str) -> None:
    """An object without a namespace goes wherever kubectl's context points (usually
    `default`), where the policies, Secrets and Services it needs do not exist."""
    stray = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in render(target)
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != "fraud"
    ]
    assert not stray, f"{target}: outside namespace fraud: {stray}"
