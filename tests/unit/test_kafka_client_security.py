"""The Kafka security settings and how they reach every client.

``fraudcore.settings.KafkaSettings`` holds the protocol, SASL credentials and TLS files;
``fraudcore.kafka`` maps them onto librdkafka's configuration and kafka-python's keyword
arguments, and is the only module that builds a client (checked on the source below)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import certifi
import confluent_kafka
import confluent_kafka.admin
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import SecretStr, ValidationError

import fraudcore.kafka as fk
from fraudcore.kafka import kafka_python_security, librdkafka_security
from fraudcore.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ["fraudcore", "producers", "feature_store", "pipelines", "predictors", "transformers"]
SOURCE_ROOTS += ["monitoring", "console", "app"]
CLIENTS_MODULE = ROOT / "fraudcore" / "kafka.py"
PASSWORD = "s3cr3t-Pa55word"
CA = "/etc/fraud/kafka-ca/ca.crt"


def kafka(**values: Any) -> KafkaSettings:
    return KafkaSettings(**values)


def settings_with(**values: Any) -> Settings:
    return Settings(_env_file=None, kafka=KafkaSettings(**values))


STRIMZI = {  # what the cloud overlays set: SCRAM over TLS, the cluster CA as a file
    "bootstrap_servers": "fraud-kafka-kafka-bootstrap:9093",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "quality-gate",
    "sasl_password": PASSWORD,
    "ssl_ca_file": CA,
}


# ------------------------------------------------------------------------- the mapping


def test_the_default_is_the_local_broker_with_nothing_added() -> None:
    defaults = Settings(_env_file=None).kafka
    assert defaults.security_protocol == "PLAINTEXT"
    assert librdkafka_security(defaults) == {}
    assert kafka_python_security(defaults) == {}


@pytest.mark.parametrize(
    ("values", "librdkafka", "kafka_python"),
    [
        pytest.param(
            STRIMZI,
            {
                "security.protocol": "sasl_ssl",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": "quality-gate",
                "sasl.password": PASSWORD,
                "ssl.ca.location": CA,
            },
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "quality-gate",
                "sasl_plain_password": PASSWORD,
                "ssl_cafile": CA,
            },
            id="SASL_SSL+SCRAM-SHA-512+CA",
        ),
        pytest.param(
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"}
            | {"sasl_username": "u", "sasl_password": PASSWORD},
            {
                "security.protocol": "sasl_ssl",
                "sasl.mechanisms": "SCRAM-SHA-256",
                "sasl.username": "u",
                "sasl.password": PASSWORD,
            },
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "u",
                "sasl_plain_password": PASSWORD,
            },
            id="SASL_SSL+SCRAM-SHA-256, the system's CAs",
        ),
        pytest.param(
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
            | {"sasl_username": "u", "sasl_password": PASSWORD},
            {
                "security.protocol": "sasl_plaintext",
                "sasl.mechanisms": "PLAIN",
                "sasl.username": "u",
                "sasl.password": PASSWORD,
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_plain_password": PASSWORD,
            },
            id="SASL_PLAINTEXT+PLAIN",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_ca_file": CA},
            {"security.protocol": "ssl", "ssl.ca.location": CA},
            {"security_protocol": "SSL", "ssl_cafile": CA},
            id="SSL, server authentication only",
        ),
        pytest.param(
            {"security_protocol": "SSL", "ssl_ca_file": CA}
            | {"ssl_cert_file": "/certs/user.crt", "ssl_key_file": "/certs/user.key"},
            {
                "security.protocol": "ssl",
                "ssl.ca.location": CA,
                "ssl.certificate.location": "/certs/user.crt",
                "ssl.key.location": "/certs/user.key",
            },
            {
                "security_protocol": "SSL",
                "ssl_cafile": CA,
                "ssl_certfile": "/certs/user.crt",
                "ssl_keyfile": "/certs/user.key",
            },
            id="SSL, mutual TLS",
        ),
    ],
)
def test_each_protocol_maps_onto_both_libraries(
    values: dict[str, Any], librdkafka: dict[str, Any], kafka_python: dict[str, Any]
) -> None:
    settings = kafka(**values)
    assert librdkafka_security(settings) == librdkafka
    assert kafka_python_security(settings) == kafka_python


def test_the_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in STRIMZI.items():
        monkeypatch.setenv(f"FRAUD_KAFKA__{name.upper()}", value)
    settings = Settings(_env_file=None).kafka
    assert isinstance(settings.sasl_password, SecretStr)
    assert librdkafka_security(settings)["sasl.password"] == PASSWORD
    assert kafka_python_security(settings)["ssl_cafile"] == CA


def test_kafka_python_knows_every_argument() -> None:
    mtls = {"ssl_cert_file": "/c", "ssl_key_file": "/k"}
    kwargs = kafka_python_security(kafka(**STRIMZI, **mtls))
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(kwargs) - set(client.DEFAULT_CONFIG)
        assert not unknown, f"{client.__name__} has no {sorted(unknown)}"


@pytest.mark.parametrize("client", [confluent_kafka.Producer, confluent_kafka.Consumer])
def test_librdkafka_accepts_the_configuration(client: Callable[[dict[str, Any]], Any]) -> None:
    """librdkafka checks its configuration, and loads the CA file, when a client is built
    (no connection is made before the first request)."""
    base = {"bootstrap.servers": "127.0.0.1:9", "group.id": "g"}
    secured = librdkafka_security(kafka(**{**STRIMZI, "ssl_ca_file": certifi.where()}))
    client({**base, **secured})
    with pytest.raises(confluent_kafka.KafkaException):  # the file is read, not just passed on
        client({**base, **secured, "ssl.ca.location": "/nonexistent/ca.crt"})


# ---------------------------------------------------------------------- the password


def test_the_password_is_never_printed() -> None:
    settings = settings_with(**STRIMZI)
    assert isinstance(settings.kafka.sasl_password, SecretStr)
    for text in (repr(settings), str(settings), repr(settings.kafka), settings.model_dump_json()):
        assert PASSWORD not in text
    assert "quality-gate" in repr(settings.kafka)  # the repr does show the settings


def test_a_rejected_password_is_not_echoed() -> None:
    with pytest.raises(ValidationError) as rejected:
        kafka(sasl_username="u", sasl_password=PASSWORD)  # credentials without a SASL protocol
    assert PASSWORD not in str(rejected.value)


# ---------------------------------------------------------------- inconsistent options


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ssl_ca_file": CA}, "need kafka.security_protocol SSL or SASL_SSL"),
        ({"security_protocol": "SASL_PLAINTEXT", "ssl_ca_file": CA}, "SSL or SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_cert_file": "/c"}, "go together"),
        ({"security_protocol": "SSL", "sasl_username": "u"}, "need a SASL_*"),
        ({"security_protocol": "SASL"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ],
)
def test_inconsistent_options_are_rejected(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        kafka(**values)


@pytest.mark.parametrize("missing", ["sasl_username", "sasl_password"])
def test_sasl_without_credentials_fails_when_a_client_is_built(missing: str) -> None:
    """Not when the settings load: a process that never talks to Kafka still starts."""
    settings = settings_with(**{k: v for k, v in STRIMZI.items() if k != missing})
    for mapping in (librdkafka_security, kafka_python_security):
        with pytest.raises(ValueError, match="FRAUD_KAFKA__SASL_USERNAME"):
            mapping(settings.kafka)


# ------------------------------------------------------- every client gets the options


class BuiltError(Exception):
    """Raised by a stand-in client class: the configuration it was given."""

    def __init__(self, library: str, config: dict[str, Any]) -> None:
        super().__init__(library)
        self.library = library
        self.config = config


def _librdkafka_client(config: dict[str, Any]) -> None:
    raise BuiltError("librdkafka", dict(config))


def _kafka_python_client(*_topics: str, **config: Any) -> None:
    raise BuiltError("kafka-python", config)


# Each function of fraudcore.kafka that builds a client, called the way its users call it.
HELPERS: dict[str, Callable[[Settings], Any]] = {
    "admin": fk.admin,
    "producer": fk.producer,
    "librdkafka_producer": fk.librdkafka_producer,
    "librdkafka_consumer": lambda s: fk.librdkafka_consumer(s, "g", ["transactions"]),
    "partition_reader": lambda s: fk.partition_reader(s, "g"),
    "consumer": lambda s: fk.consumer(s, "g", "model-events"),
    "upsert_scram_user": lambda s: fk.upsert_scram_user(s, "fraud-local", "p"),
}
# Helpers that build theirs through one of the above.
INDIRECT: dict[str, Callable[[Settings], Any]] = {
    "group_lag": lambda s: fk.group_lag(s, "archiver", ["transactions"]),
    "OwnedPartitions.consumer": lambda s: fk.OwnedPartitions(
        lambda _tp, _c: None, lambda _tps: {}, lambda _tps: None
    ).consumer(s, "archiver", ["transactions"]),
}


@pytest.fixture
def stand_in_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fk.confluent_kafka, "Producer", _librdkafka_client)
    monkeypatch.setattr(fk.confluent_kafka, "Consumer", _librdkafka_client)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", _librdkafka_client)
    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(fk, name, _kafka_python_client)


@pytest.mark.usefixtures("stand_in_clients")
@pytest.mark.parametrize("helper", [*HELPERS, *INDIRECT])
def test_every_client_gets_the_security_options(helper: str) -> None:
    settings = settings_with(**STRIMZI)
    with pytest.raises(BuiltError) as built:
        {**HELPERS, **INDIRECT}[helper](settings)
    library, config = built.value.library, built.value.config
    expected = (
        librdkafka_security(settings.kafka)
        if library == "librdkafka"
        else kafka_python_security(settings.kafka)
    )
    assert expected.items() <= config.items(), f"{helper}: {library} client without the security options"
    bootstrap = config.get("bootstrap.servers", config.get("bootstrap_servers"))
    assert bootstrap == STRIMZI["bootstrap_servers"]


@pytest.mark.usefixtures("stand_in_clients")
@pytest.mark.parametrize("helper", [*HELPERS, *INDIRECT])
def test_the_local_broker_gets_no_security_options(helper: str) -> None:
    with pytest.raises(BuiltError) as built:
        {**HELPERS, **INDIRECT}[helper](Settings(_env_file=None))
    keys = {k.replace("_", ".") for k in built.value.config}
    assert not {k for k in keys if k.startswith(("security.", "sasl.", "ssl."))}, helper


# ------------------------------------------------------ no client is built elsewhere

CLIENT_LIBRARIES = ("confluent_kafka", "kafka", "aiokafka")
CLIENT_CLASSES = {
    "Producer",
    "Consumer",
    "AdminClient",
    "SerializingProducer",
    "DeserializingConsumer",
    "KafkaProducer",
    "KafkaConsumer",
    "KafkaAdminClient",
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return f"{owner}.{node.attr}" if owner else None
    return None


def client_constructions(source: str) -> Iterator[tuple[int, str, str]]:
    """(line, enclosing function, class) of each Kafka client a module builds, through
    whatever name it imported the library or the class under."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> the qualified name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:  # import a.b as c: c is a.b
                    aliases[alias.asname] = alias.name
                else:  # import a.b: binds a
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def visit(node: ast.AST, function: str) -> Iterator[tuple[int, str, str]]:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Call) and (name := _dotted(child.func)):
                head, _, rest = name.partition(".")
                qualified = ".".join(p for p in (aliases.get(head, head), rest) if p)
                if qualified.split(".")[0] in CLIENT_LIBRARIES and qualified.split(".")[-1] in CLIENT_CLASSES:
                    yield child.lineno, function, qualified.split(".")[-1]
            yield from visit(child, inner)

    yield from visit(tree, "<module>")


def source_files() -> list[Path]:
    return sorted(p for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*.py"))


@pytest.mark.parametrize(
    ("snippet", "found"),
    [
        ("import confluent_kafka as ck\nck.Consumer({})\n", ["Consumer"]),
        ("import confluent_kafka\nconfluent_kafka.Producer({})\n", ["Producer"]),
        ("from confluent_kafka.admin import AdminClient\nAdminClient({})\n", ["AdminClient"]),
        ("from kafka import KafkaProducer as P\ndef f():\n    return P()\n", ["KafkaProducer"]),
        ("import kafka\nkafka.KafkaConsumer('t')\n", ["KafkaConsumer"]),
        ("from kafka import KafkaConsumer\ndef f(c: KafkaConsumer) -> None:\n    c.poll()\n", []),
        ("from producer import EventProducer\nEventProducer(settings)\n", []),
    ],
)
def test_the_scan_finds_client_constructions(snippet: str, found: list[str]) -> None:
    assert [cls for _, _, cls in client_constructions(snippet)] == found


def test_no_module_but_fraudcore_kafka_builds_a_client() -> None:
    files = source_files()
    assert CLIENTS_MODULE in files, "the scan misses the sources"
    assert len(files) > 50, "the scan misses the sources"
    outside = [
        f"{path.relative_to(ROOT)}:{line} builds a {cls} (use fraudcore.kafka's helpers)"
        for path in files
        if path != CLIENTS_MODULE
        for line, _, cls in client_constructions(path.read_text())
    ]
    assert not outside, "\n".join(outside)


def test_every_client_fraudcore_kafka_builds_is_checked_above() -> None:
    builders = {function for _, function, _ in client_constructions(CLIENTS_MODULE.read_text())}
    assert builders == set(HELPERS), (
        "fraudcore.kafka builds clients in functions the security test does not call: "
        f"{sorted(builders ^ set(HELPERS))} (add them to HELPERS)"
    )
