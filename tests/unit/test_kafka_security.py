"""Kafka's security on a cluster, checked on the rendered manifests.

The cloud overlays (eks, gke) run Kafka with SCRAM-SHA-512 authentication on its only
listener (TLS) and simple authorization; every client of the platform authenticates as its
own KafkaUser, whose ACLs allow exactly what the code does: the topics of
``fraudcore.settings.TopicSettings`` and the consumer groups the code uses, nothing by
wildcard. The brokers' metrics are scraped.

The base and the kind overlay stay as the local stack runs Kafka (plaintext, no
authentication): the laptop's `fraud` commands, the demo and the benchmarks connect with
the default settings, and the broker is reachable only from that machine.
"""

from __future__ import annotations

import inspect
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from fraudcore.kafka import librdkafka_security
from fraudcore.settings import KafkaSettings
from tests.unit.test_manifests import (
    CLOUD,
    LOCAL,
    Doc,
    default_settings,
    dig,
    ident,
    objects,
    one,
    platform_config,
    render,
)

# What each platform client does with Kafka, from the code: topic names from the settings,
# consumer groups from the code (see group_ids), the Knative objects from their spec.
READ, WRITE, GROUP = "Read", "Write", "Group"
# Only looked at: a topic's end offsets, a group's committed offsets (never joined).
DESCRIBE, DESCRIBE_GROUP = "Describe", "DescribeGroup"
OPERATIONS = {"Read", "Write", "Describe"}  # all any client needs
EXTERNAL_USERS = {  # users of clients outside these manifests
    "fraud-model-publisher": "the training pipeline's publish step and `fraud promote`",
}
# Listener authentication -> the SASL mechanism clients must use.
MECHANISMS = {"scram-sha-512": "SCRAM-SHA-512"}


def group_ids() -> dict[str, str]:
    """The consumer group (or, for per-process groups, its fixed prefix) each component uses,
    read from the code: the CLI defaults the Deployments run with, the predictor's
    per-process group, the model monitor's tail reader."""
    from fraud_console.cli import serve as console_serve
    from fraud_features.cli import features_stream
    from fraud_monitor.cli import monitor
    from fraud_producers.cli import archive, gate

    def default(command: Any) -> str:
        value = inspect.signature(command).parameters["group"].default.default
        assert isinstance(value, str)
        return value

    return {
        "quality-gate": default(gate),
        "archiver": default(archive),
        "feature-job": default(features_stream),
        "model-monitor": default(monitor),
        "console": default(console_serve),
    }


def predictor_group() -> str:
    from fraud_predictor.events import ChampionWatcher

    watcher = ChampionWatcher(default_settings(), SimpleNamespace(name="fraud"))  # type: ignore[arg-type]
    return watcher.group


def monitor_tail_group(monkeypatch: pytest.MonkeyPatch) -> str:
    """The group id the model monitor's tail reader is built with (no broker is reached)."""
    import fraud_monitor.service as service

    class Built(Exception):  # noqa: N818 - a stop signal, not an error
        pass

    seen: list[str] = []

    def reader(_settings: Any, group: str, **_overrides: Any) -> None:
        seen.append(group)
        raise Built

    monkeypatch.setattr(service, "partition_reader", reader)
    monitor = object.__new__(service.ModelMonitor)
    monitor.settings = default_settings()
    monitor.group = group_ids()["model-monitor"]
    with pytest.raises(Built):
        monitor._tail()
    return seen[0]


def console_reader_groups(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The group ids the console's partition readers are built with (its replay of the cases,
    its search for a label, its transaction lookups); no broker is reached."""
    import fraud_console.journal as journal

    class Built(Exception):  # noqa: N818 - a stop signal, not an error
        pass

    seen: list[str] = []

    def reader(_settings: Any, group: str, **_overrides: Any) -> None:
        seen.append(group)
        raise Built

    settings = default_settings()
    monkeypatch.setattr(journal, "partition_reader", reader)
    monkeypatch.setattr(journal, "closed_since", lambda _case: datetime.now(UTC))
    with pytest.raises(Built):
        next(journal.replay(settings))
    with pytest.raises(Built):
        journal.TransactionFinder(settings)
    log = object.__new__(journal.KafkaCaseLog)
    log.settings = settings
    with pytest.raises(Built):
        log.find_label(SimpleNamespace(case_id="case"))  # type: ignore[arg-type]
    assert len(seen) == 3, seen
    return set(seen)


def needs(docs: list[Doc]) -> dict[str, dict[str, set[str]]]:
    """KafkaUser -> operation -> the topics (or groups) its client uses."""
    t = default_settings().topics
    groups = group_ids()
    source = one(docs, "KafkaSource")["spec"]
    sink = one(docs, "KafkaSink")["spec"]
    return {
        "fraud-producer": {WRITE: {t.raw.name, t.labels.name}},
        "fraud-quality-gate": {
            READ: {t.raw.name},
            WRITE: {t.transactions.name, t.dead_letter.name},
            GROUP: {groups["quality-gate"]},
        },
        "fraud-archiver": {
            READ: {t.transactions.name, t.labels.name},
            WRITE: {t.dead_letter.name},
            GROUP: {groups["archiver"]},
        },
        "fraud-feature-job": {
            READ: {t.transactions.name, t.labels.name},
            WRITE: {t.dead_letter.name},
            GROUP: {groups["feature-job"]},
            # Whether the quality gate has forwarded all of the ingress topic (watermarks).
            DESCRIBE: {t.raw.name},
            DESCRIBE_GROUP: {default_settings().features.gate_group},
        },
        "fraud-model-monitor": {
            READ: {t.scores.name, t.shadow_scores.name, t.labels.name},
            WRITE: {t.dead_letter.name},
            GROUP: {groups["model-monitor"]},
        },
        "fraud-console": {
            READ: {t.scores.name, t.cases.name, t.labels.name, t.transactions.name},
            WRITE: {t.cases.name, t.labels.name, t.dead_letter.name},
            GROUP: {groups["console"]},
        },
        "fraud-transformer": {WRITE: {t.scores.name, t.shadow_scores.name}},
        "fraud-predictor": {READ: {t.model_events.name}, WRITE: {t.dead_letter.name}},
        "fraud-model-publisher": {WRITE: {t.model_events.name}},
        "fraud-scoring-source": {READ: set(source["topics"]), GROUP: {source["consumerGroup"]}},
        "fraud-dlq-sink": {WRITE: {sink["topic"]}},
    }


# ---------------------------------------------------------------------------- helpers


def kafka_users(docs: list[Doc]) -> dict[str, Doc]:
    return {u["metadata"]["name"]: u for u in objects(docs, "KafkaUser")}


def allows(user: Doc, resource: str, name: str, operation: str) -> bool:
    """Whether ``user``'s ACLs allow ``operation`` on ``resource`` ``name`` (Read and Write
    imply Describe, as in Kafka)."""
    for acl in dig(user, "spec", "authorization", "acls") or []:
        target = acl["resource"]
        if acl.get("type", "allow") != "allow" or target["type"] != resource:
            continue
        if target.get("patternType", "literal") == "prefix":
            matched = name.startswith(target["name"])
        else:
            matched = target["name"] == name
        implied = operation == "Describe" and bool({"Read", "Write"} & set(acl["operations"]))
        if matched and (operation in acl["operations"] or "All" in acl["operations"] or implied):
            return True
    return False


def granted(user: Doc) -> dict[str, set[str]]:
    """Operation -> resource names its ACLs list (topics for Read/Write/Describe, groups for
    Group and, where the group is only described, DescribeGroup)."""
    out: dict[str, set[str]] = {}
    for acl in dig(user, "spec", "authorization", "acls") or []:
        target = acl["resource"]
        operations = set(acl["operations"])
        looks_only = not operations & {READ, WRITE}
        if target["type"] == "group":
            out.setdefault(DESCRIBE_GROUP if looks_only else GROUP, set()).add(target["name"])
        for operation in operations & {READ, WRITE}:
            if target["type"] == "topic":
                out.setdefault(operation, set()).add(target["name"])
        if target["type"] == "topic" and looks_only:
            out.setdefault(DESCRIBE, set()).add(target["name"])
    return out


@dataclass
class KafkaClient:
    where: str
    container: Doc  # the container (or the InferenceService's model spec)
    volumes: list[Doc]  # the pod's volumes


def kafka_clients(docs: list[Doc]) -> Iterator[KafkaClient]:
    """Every container of the platform that gets its settings, Kafka's included, from
    fraud-config: the workers and the KServe servers (the Feast images talk to Redis only)."""
    for doc in docs:
        pods: list[tuple[str, Doc, list[Doc]]] = []
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pods += [(f"{ident(doc)} {c['name']}", c, pod.get("volumes") or []) for c in pod["containers"]]
        elif doc["kind"] == "InferenceService":
            for component in ("predictor", "transformer"):
                spec = doc["spec"][component]
                containers = [spec["model"]] if "model" in spec else spec.get("containers", [])
                pods += [(f"{ident(doc)} {component}", c, spec.get("volumes") or []) for c in containers]
        for where, container, volumes in pods:
            if "fraud-platform/feast" in (container.get("image") or ""):
                continue
            configured = any(
                (dig(source, "configMapRef", "name") or "").startswith("fraud-config")
                for source in container.get("envFrom") or []
            )
            if configured:
                yield KafkaClient(where, container, volumes)


def env(container: Doc, name: str) -> Doc | None:
    return next((e for e in container.get("env") or [] if e["name"] == name), None)


def listener_for(kafka: Doc, port: int) -> Doc:
    [listener] = [lst for lst in kafka["spec"]["kafka"]["listeners"] if lst["port"] == port]
    return listener


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------------------------- the cloud overlays


@pytest.mark.parametrize("target", CLOUD)
def test_every_listener_authenticates_and_the_cluster_authorizes(target: str) -> None:
    kafka = one(render(target), "Kafka")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert listeners, "no listener"
    for listener in listeners:
        assert listener["tls"], f"listener {listener['name']}: plaintext"
        assert dig(listener, "authentication", "type") in MECHANISMS, (
            f"listener {listener['name']}: anonymous"
        )
    assert dig(kafka, "spec", "kafka", "authorization", "type") == "simple"
    # No platform client is a super user (Strimzi's own components get what they need).
    assert not dig(kafka, "spec", "kafka", "authorization", "superUsers")
    assert dig(kafka, "spec", "entityOperator", "userOperator") is not None, (
        "no User Operator for the KafkaUsers"
    )


@pytest.mark.parametrize("target", CLOUD)
def test_every_client_connects_to_an_authenticated_listener(target: str) -> None:
    docs = render(target)
    kafka = one(docs, "Kafka")
    config = platform_config(docs)
    addresses = {"fraud-config": config["FRAUD_KAFKA__BOOTSTRAP_SERVERS"]}
    for doc in objects(docs, "KafkaSource") + objects(docs, "KafkaSink"):
        for address in doc["spec"]["bootstrapServers"]:
            addresses[ident(doc)] = address
    for where, address in addresses.items():
        host, port = address.rsplit(":", 1)
        assert host.split(".")[0] == f"{kafka['metadata']['name']}-kafka-bootstrap", f"{where}: {address}"
        listener = listener_for(kafka, int(port))
        assert listener["tls"], f"{where}: {address} is plaintext"
        assert "authentication" in listener, f"{where}: {address} is anonymous"

    # The settings every platform container reads: TLS and the listener's SASL mechanism.
    [mechanism] = {MECHANISMS[lst["authentication"]["type"]] for lst in kafka["spec"]["kafka"]["listeners"]}
    kafka_env = {k: v for k, v in config.items() if k.startswith("FRAUD_KAFKA__")}
    fields = {f"FRAUD_KAFKA__{name.upper()}" for name in KafkaSettings.model_fields}
    assert set(kafka_env) <= fields, f"not settings: {sorted(set(kafka_env) - fields)}"
    assert kafka_env["FRAUD_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert kafka_env["FRAUD_KAFKA__SASL_MECHANISM"] == mechanism
    assert kafka_env["FRAUD_KAFKA__SSL_CA_FILE"], "no CA for the cluster's self-signed certificates"


@pytest.mark.parametrize("target", CLOUD)
def test_every_platform_client_authenticates_as_its_own_kafka_user(target: str) -> None:
    docs = render(target)
    kafka = one(docs, "Kafka")
    users = kafka_users(docs)
    config = platform_config(docs)
    ca_secret = f"{kafka['metadata']['name']}-cluster-ca-cert"
    ca_file = config["FRAUD_KAFKA__SSL_CA_FILE"]
    clients = list(kafka_clients(docs))
    found = {c.where.split(" ")[0] for c in clients}
    expected = {
        f"Deployment/{d}"
        for d in ("producer", "quality-gate", "archiver", "feature-job", "model-monitor", "console")
    }
    assert expected | {"InferenceService/fraud"} <= found, "the scan misses Kafka clients"

    owners: dict[str, str] = {}
    problems = []
    for client in clients:
        username = env(client.container, "FRAUD_KAFKA__SASL_USERNAME") or {}
        password = dig(env(client.container, "FRAUD_KAFKA__SASL_PASSWORD"), "valueFrom", "secretKeyRef") or {}
        name = username.get("value", "")
        if name not in users:
            problems.append(f"{client.where}: user {name!r} is no KafkaUser")
            continue
        if name in owners:
            problems.append(f"{client.where}: shares KafkaUser {name} with {owners[name]}")
        owners[name] = client.where
        # Strimzi's Secret for the user: named after it, the password under `password`.
        if (password.get("name"), password.get("key"), password.get("optional", False)) != (
            name,
            "password",
            False,
        ):
            problems.append(f"{client.where}: password not from Secret {name} key password: {password}")
        # The cluster CA as the file the settings name.
        mount = next(
            (
                m
                for m in client.container.get("volumeMounts") or []
                if m["mountPath"] == posixpath.dirname(ca_file)
            ),
            None,
        )
        volume = next((v for v in client.volumes if mount and v["name"] == mount["name"]), {})
        items = {i["key"]: i["path"] for i in dig(volume, "secret", "items") or []}
        if dig(volume, "secret", "secretName") != ca_secret or items.get("ca.crt") != posixpath.basename(
            ca_file
        ):
            problems.append(f"{client.where}: {ca_file} is not ca.crt of Secret {ca_secret}")
        # And the settings these make are complete: a client can be built from them.
        values = {k.removeprefix("FRAUD_KAFKA__").lower(): v for k, v in config.items() if "KAFKA__" in k}
        values |= {"sasl_username": name, "sasl_password": "from-the-secret"}
        assert librdkafka_security(KafkaSettings(**values))["sasl.username"] == name
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", CLOUD)
def test_knative_authenticates_as_its_own_kafka_users(target: str) -> None:
    """The KafkaSource and the KafkaSink read credentials Secrets in eventing-kafka-broker's
    format (protocol, sasl.mechanism, user, password, ca.crt), created at deploy time; each
    KafkaUser takes its password from that Secret, so the two agree."""
    docs = render(target)
    kafka = one(docs, "Kafka")
    users = kafka_users(docs)
    by_password_secret = {
        dig(u, "spec", "authentication", "password", "valueFrom", "secretKeyRef", "name"): name
        for name, u in users.items()
        if dig(u, "spec", "authentication", "password")
    }

    net = one(docs, "KafkaSource")["spec"]["net"]
    assert net["sasl"]["enable"] is True
    refs = {field: net["sasl"][field]["secretKeyRef"] for field in ("user", "password", "type")}
    assert {field: r["key"] for field, r in refs.items()} == {
        "user": "user",
        "password": "password",
        "type": "sasl.mechanism",
    }
    [secret] = {r["name"] for r in refs.values()}
    assert by_password_secret.get(secret) == "fraud-scoring-source", (
        f"{secret}: no KafkaUser takes its password"
    )
    assert net["tls"]["enable"] is True
    assert net["tls"]["caCert"]["secretKeyRef"] == {
        "name": f"{kafka['metadata']['name']}-cluster-ca-cert",
        "key": "ca.crt",
    }

    sink_secret = one(docs, "KafkaSink")["spec"]["auth"]["secret"]["ref"]["name"]
    assert by_password_secret.get(sink_secret) == "fraud-dlq-sink", (
        f"{sink_secret}: no KafkaUser takes its password"
    )
    assert sink_secret != secret, "the source and the sink share credentials"


@pytest.mark.parametrize("target", CLOUD)
def test_kafka_users_allow_exactly_what_their_clients_do(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(target)
    kafka = one(docs, "Kafka")
    users = kafka_users(docs)
    wanted = needs(docs)
    assert set(users) == set(wanted), (
        f"KafkaUsers differ from the platform's clients: {sorted(set(users) ^ set(wanted))}"
    )

    topics = {t["spec"].get("topicName", t["metadata"]["name"]) for t in objects(docs, "KafkaTopic")}
    assert topics == {t.name for t in default_settings().topics.all()}
    codes_groups = {*group_ids().values(), one(docs, "KafkaSource")["spec"]["consumerGroup"]}
    # Groups a client only assigns partitions under (never joined nor committed): librdkafka
    # still looks up their coordinator, which the ACLs must allow.
    per_process = {
        "fraud-predictor": {predictor_group()},
        "fraud-model-monitor": {monitor_tail_group(monkeypatch)},
        "fraud-console": console_reader_groups(monkeypatch),
    }

    problems = []
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"], name
        assert user["metadata"]["namespace"] == kafka["metadata"]["namespace"], name
        assert dig(user, "spec", "authentication", "type") == "scram-sha-512", name
        assert dig(user, "spec", "authorization", "type") == "simple", name
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            where = f"KafkaUser {name}: {resource['type']} {resource.get('name')!r}"
            if acl.get("type", "allow") != "allow" or not set(acl["operations"]) <= OPERATIONS:
                problems.append(f"{where}: {acl.get('type', 'allow')} {acl['operations']}")
            if resource["type"] == "topic":
                if resource.get("patternType", "literal") != "literal" or resource.get("name") not in topics:
                    problems.append(f"{where}: not one existing topic")
            elif resource["type"] == "group":
                prefix = resource.get("patternType") == "prefix"
                ids = [*codes_groups, *(g for groups in per_process.values() for g in groups)]
                if not any(g.startswith(resource["name"]) if prefix else g == resource["name"] for g in ids):
                    problems.append(f"{where}: no group the code uses")
                if not resource.get("name"):
                    problems.append(f"{where}: every group")
            else:
                problems.append(f"{where}: not a topic or a group")
        # Least privilege: the topics and groups its client uses, no more, no less.
        want = wanted[name]
        for operation in (READ, WRITE, DESCRIBE, DESCRIBE_GROUP):
            if granted(user).get(operation, set()) != want.get(operation, set()):
                problems.append(
                    f"KafkaUser {name}: {operation} on {granted(user).get(operation)}, needs {want.get(operation)}"
                )
            for topic in want.get(operation, set()) if operation != DESCRIBE_GROUP else ():
                if not allows(user, "topic", topic, operation):
                    problems.append(f"KafkaUser {name}: cannot {operation} {topic}")
        for group in want.get(GROUP, set()) | per_process.get(name, set()):
            if not allows(user, "group", group, "Read"):
                problems.append(f"KafkaUser {name}: cannot use group {group}")
        for group in want.get(DESCRIBE_GROUP, set()):
            if not allows(user, "group", group, "Describe") or allows(user, "group", group, "Read"):
                problems.append(f"KafkaUser {name}: must describe group {group}, and no more")
        if not want.get(GROUP) and name not in per_process and GROUP in granted(user):
            problems.append(f"KafkaUser {name}: a group, but its client consumes none")
    assert not problems, "\n".join(problems)

    # The Deployments use the code's default groups (no --group in their commands).
    for name in ("quality-gate", "archiver", "feature-job", "model-monitor", "console"):
        [container] = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert "--group" not in container["command"] + container.get("args", []), name


def test_the_feature_job_watches_the_group_the_gate_joins() -> None:
    assert default_settings().features.gate_group == group_ids()["quality-gate"]


@pytest.mark.parametrize("target", CLOUD)
def test_every_kafka_user_has_a_client(target: str) -> None:
    docs = render(target)
    used = {dig(env(c.container, "FRAUD_KAFKA__SASL_USERNAME"), "value") for c in kafka_clients(docs)}
    used |= {"fraud-scoring-source", "fraud-dlq-sink"}  # checked by the Knative test above
    unused = set(kafka_users(docs)) - used - set(EXTERNAL_USERS)
    assert not unused, f"KafkaUsers nobody uses: {sorted(unused)}"


@pytest.mark.parametrize("target", CLOUD)
def test_the_brokers_metrics_are_exported_and_scraped(target: str) -> None:
    docs = render(target)
    kafka = one(docs, "Kafka")
    metrics = kafka["spec"]["kafka"]["metricsConfig"]
    assert metrics["type"] == "jmxPrometheusExporter"
    ref = metrics["valueFrom"]["configMapKeyRef"]
    config_map = one(docs, "ConfigMap", ref["name"])
    assert config_map["metadata"]["namespace"] == kafka["metadata"]["namespace"]
    rules = yaml.safe_load(config_map["data"][ref["key"]])
    assert rules["lowercaseOutputName"] is True
    assert rules["rules"], "no rules: nothing would be exported"
    for rule in rules["rules"]:
        re.compile(rule["pattern"])  # Java and Python agree on these patterns
    assert any(
        re.match(r["pattern"], "kafka.server<type=ReplicaManager, name=UnderReplicatedPartitions><>Value")
        for r in rules["rules"]
    ), "under-replicated partitions are not exported"
    assert any(
        re.match(
            r["pattern"],
            "kafka.server<type=socket-server-metrics, listener=TLS-9093, networkProcessor=3><>failed-authentication-total",
        )
        for r in rules["rules"]
    ), "failed authentications are not exported"

    monitors = [
        m
        for m in objects(docs, "PodMonitor")
        if dig(m, "spec", "selector", "matchLabels", "strimzi.io/cluster") == kafka["metadata"]["name"]
        and dig(m, "spec", "selector", "matchLabels", "strimzi.io/kind") == "Kafka"
    ]
    assert len(monitors) == 1, "the brokers need one PodMonitor"
    assert monitors[0]["spec"]["podMetricsEndpoints"][0]["port"] == "tcp-prometheus"
    assert monitors[0]["metadata"]["namespace"] == kafka["metadata"]["namespace"]


# ----------------------------------------------------------------- base and kind: local


@pytest.mark.parametrize("target", LOCAL)
def test_the_local_cluster_runs_kafka_as_the_local_stack_does(target: str) -> None:
    """Plaintext, anonymous, no ACLs: `fraud` commands on the laptop, the demo and the
    benchmarks talk to the kind cluster's broker with the default settings (PLAINTEXT, no
    credentials), and only that machine reaches it. The cloud overlays are tested above."""
    docs = render(target)
    kafka = one(docs, "Kafka")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        assert not listener["tls"], listener["name"]
        assert "authentication" not in listener, listener["name"]
    assert "authorization" not in kafka["spec"]["kafka"]
    assert not objects(docs, "KafkaUser")
    config = platform_config(docs)
    assert not {
        k for k in config if k.startswith("FRAUD_KAFKA__") and ("SASL" in k or "SSL" in k or "SECURITY" in k)
    }
    assert port_of(config["FRAUD_KAFKA__BOOTSTRAP_SERVERS"]) == listener_for(kafka, 9092)["port"]
    for client in kafka_clients(docs):
        assert env(client.container, "FRAUD_KAFKA__SASL_USERNAME") is None, client.where
    assert "net" not in one(docs, "KafkaSource")["spec"]
    assert "auth" not in one(docs, "KafkaSink")["spec"]
    # The defaults those clients then use add nothing to a client's configuration.
    assert librdkafka_security(default_settings().kafka) == {}
