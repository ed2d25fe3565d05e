"""Redis on Kubernetes, checked on the rendered manifests: the in-cluster server's memory
sizing and AUTH, every client's password from the Secret, Feast's connection string, and a
managed, replicated Redis over TLS in the cloud overlays."""

from __future__ import annotations

import base64
import posixpath
import re
from typing import Any

import pytest
from feast.infra.online_stores.redis import RedisOnlineStore

from fraudcore.settings import RedisSettings
from tests.unit.test_manifests import (
    CLOUD,
    LOCAL,
    TARGETS,
    Doc,
    ident,
    objects,
    one,
    platform_config,
    pod_specs,
    render,
)

# Measured by `fraud features size-redis` (bytes of Redis memory as the feature job writes
# them) and the population the in-cluster Redis is sized for (kustomize/base/redis/redis.yaml).
BYTES_PER_CARD = 1_705
CHECKPOINT_BYTES_PER_CARD = 1_258
BYTES_PER_TERMINAL = 3_205
FIXED_BYTES = 16_000_000
CARDS, TERMINALS = 100_000, 20_000
GROWTH_MARGIN = 1.2  # maxmemory over the peak
FORK_HEADROOM = 1.5  # container limit over maxmemory: AOF-rewrite fork, fragmentation

# Every workload whose containers talk to Redis (the Feast online store or the feature job's
# and model monitor's state), by kind and name; "InferenceService/fraud transformer" is KServe's.
REDIS_CLIENTS = {
    "Deployment/feature-job",
    "Deployment/model-monitor",
    "Deployment/console",
    "Deployment/feast-server",
    "Job/feast-apply",
    "CronJob/feast-materialize",
    "InferenceService/fraud transformer",
}
FEAST_CLI = {"Deployment/feast-server", "Job/feast-apply", "CronJob/feast-materialize"}
PASSWORD_VARIABLES = {"FRAUD_REDIS__PASSWORD", "REDIS_PASSWORD", "REDISCLI_AUTH"}

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|kb|mb|gb)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match[1]) * UNITS[match[2]]


def redis_secret(docs: list[Doc]) -> Doc:
    [secret] = [s for s in objects(docs, "Secret") if s["metadata"]["name"].startswith("fraud-redis-")]
    return secret


def secret_ref(env: Doc) -> dict[str, Any]:
    ref: dict[str, Any] = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
    return ref


def assert_from_redis_secret(docs: list[Doc], env: Doc, where: str) -> None:
    ref = secret_ref(env)
    secret = redis_secret(docs)
    assert ref.get("name") == secret["metadata"]["name"], (
        f"{where}: {env['name']} is not from Secret fraud-redis"
    )
    assert ref.get("key") == "REDIS_PASSWORD", where
    assert ref["key"] in secret["data"], where
    assert not ref.get("optional"), f"{where}: {env['name']} must not be optional"


def redis_server(docs: list[Doc]) -> Doc:
    statefulset = one(docs, "StatefulSet", "redis")
    pod = statefulset["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "redis"]
    return server


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"redis-server needs exactly one {name}"
    return args[args.index(name) + 1]


def client_containers(docs: list[Doc]) -> dict[str, Doc]:
    """The first container of each Redis client's pod (where it runs), by workload."""
    found = {where: pod["containers"][0] for where, pod in pod_specs(docs) if where in REDIS_CLIENTS}
    assert set(found) == REDIS_CLIENTS, f"missing Redis clients: {sorted(REDIS_CLIENTS - set(found))}"
    return found


def client_pods(docs: list[Doc]) -> dict[str, Doc]:
    return {where: pod for where, pod in pod_specs(docs) if where in REDIS_CLIENTS}


def resolved_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it: the ConfigMap, then each env
    entry in order with $(VAR) expanded; Secret values are the rendered placeholders."""
    env = dict(platform_config(docs))
    secrets = {s["metadata"]["name"]: s for s in objects(docs, "Secret")}
    for entry in container.get("env") or []:
        if "value" in entry:
            value = entry["value"]
            for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
                assert name in env, f"$({name}) in {entry['name']} is defined nowhere before it"
                value = value.replace(f"$({name})", env[name])
            env[entry["name"]] = value
        elif secret_ref(entry):
            ref = secret_ref(entry)
            secret = secrets.get(ref["name"])
            if secret is not None and ref["key"] in secret["data"]:
                env[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def settings_from(env: dict[str, str]) -> RedisSettings:
    """RedisSettings as fraudcore reads them from FRAUD_REDIS__* variables."""
    prefix = "FRAUD_REDIS__"
    return RedisSettings.model_validate(
        {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )


# ----------------------------------------------------------------------- the tests


@pytest.mark.parametrize("target", LOCAL)
def test_maxmemory_covers_the_population_and_leaves_fork_headroom(target: str) -> None:
    server = redis_server(render(target))
    args = server["args"]
    maxmemory = to_bytes(flag(args, "--maxmemory"))
    limit = to_bytes(server["resources"]["limits"]["memory"])
    assert limit >= FORK_HEADROOM * maxmemory, (
        "the memory limit leaves no room for the fork and fragmentation"
    )
    peak = CARDS * (BYTES_PER_CARD + CHECKPOINT_BYTES_PER_CARD) + TERMINALS * BYTES_PER_TERMINAL + FIXED_BYTES
    assert maxmemory >= GROWTH_MARGIN * peak, "maxmemory is below the documented population's peak"
    # Redis holds state that must not vanish: eviction is never allowed.
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert flag(args, "--appendonly") == "yes"


@pytest.mark.parametrize("target", LOCAL)
def test_the_redis_server_requires_a_password_from_the_secret(target: str) -> None:
    docs = render(target)
    server = redis_server(docs)
    # The password enters on stdin (`redis-server -`), never in an argument.
    argv = server.get("command", []) + server.get("args", [])
    script = argv[2] if argv[:2] == ["sh", "-c"] else ""
    assert re.search(r"exec redis-server - \"\$@\" <<EOF\nrequirepass \$REDIS_PASSWORD\nEOF", script), argv
    assert not any("requirepass" in a for a in argv[3:]), "requirepass in redis-server's arguments"
    env = {e["name"]: e for e in server["env"]}
    assert_from_redis_secret(docs, env["REDIS_PASSWORD"], "redis")
    # The readiness probe authenticates and checks the answer (redis-cli exits 0 on NOAUTH).
    assert_from_redis_secret(docs, env["REDISCLI_AUTH"], "redis probe")
    assert "PONG" in " ".join(server["readinessProbe"]["exec"]["command"])

    pod = one(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    [exporter] = [c for c in pod["containers"] if c["name"] == "exporter"]
    exporter_env = {e["name"]: e for e in exporter["env"]}
    assert_from_redis_secret(docs, exporter_env["REDIS_PASSWORD"], "redis exporter")


@pytest.mark.parametrize("target", TARGETS)
def test_every_redis_client_gets_the_password_from_the_secret(target: str) -> None:
    docs = render(target)
    for where, container in client_containers(docs).items():
        env = {e["name"]: e for e in container.get("env") or []}
        assert "FRAUD_REDIS__PASSWORD" in env, f"{where} gets no Redis password"
        assert_from_redis_secret(docs, env["FRAUD_REDIS__PASSWORD"], where)

    # Nowhere a password as a literal, nor in a ConfigMap.
    for where, pod in pod_specs(docs):
        for container in pod.get("containers") or []:
            for entry in container.get("env") or []:
                if entry["name"] in PASSWORD_VARIABLES:
                    assert "value" not in entry, f"{where}: {entry['name']} is a literal"
    for config_map in objects(docs, "ConfigMap"):
        keys = set(config_map.get("data") or {})
        assert not keys & (PASSWORD_VARIABLES | {"FEAST_REDIS"}), (
            f"{ident(config_map)} holds a Redis password"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_the_feast_cli_connects_as_the_platforms_settings_say(target: str) -> None:
    """FEAST_REDIS, composed in each Feast container, is the connection string fraudcore
    builds from the same FRAUD_REDIS__* settings and password (parsed as Feast parses it)."""
    docs = render(target)
    for where, container in client_containers(docs).items():
        env = resolved_env(docs, container)
        settings = settings_from(env)
        assert settings.password.get_secret_value().startswith("placeholder-"), where
        if where not in FEAST_CLI:
            continue
        composed = RedisOnlineStore._parse_connection_string(env["FEAST_REDIS"])
        expected = RedisOnlineStore._parse_connection_string(settings.feast_connection_string())
        if not settings.ssl:  # ssl=false spelled out, or left out: the same connection
            composed[1].pop("ssl", None)
        assert composed == expected, f"{where}: FEAST_REDIS differs from the platform's settings"


@pytest.mark.parametrize("target", CLOUD)
def test_production_uses_a_managed_replicated_redis_over_tls(target: str) -> None:
    docs = render(target)
    # No single-replica Redis in the cluster: no workload runs a Redis image, no Service
    # named redis is left for clients to reach.
    for where, pod in pod_specs(docs):
        for container in pod.get("containers") or []:
            image = container.get("image", "")
            assert not re.match(r"(docker\.io/)?(library/)?redis[:@]", image), f"{where} runs {image}"
    assert not [s for s in objects(docs, "Service") if s["metadata"]["name"].startswith("redis")]

    config = platform_config(docs)
    settings = settings_from(config)
    assert settings.ssl, "the managed Redis is reached over TLS"
    assert settings.host not in {"redis", "127.0.0.1", "localhost"}
    for where, pod in client_pods(docs).items():
        # A CA file, when named, is mounted into every client from a ConfigMap that has it.
        if settings.ssl_ca_certs:
            folder, file = posixpath.split(settings.ssl_ca_certs)
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts") or []}
            assert folder in mounts, f"{where} does not mount {folder}"
            volume = next(v for v in pod["volumes"] if v["name"] == mounts[folder])
            config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
            assert file in config_map["data"], f"{ident(config_map)} has no {file}"
