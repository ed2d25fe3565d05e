"""The local broker's configuration (``fraud up``): an authenticated listener beside the
plaintext one with no secret in the file, and a disk bound on every partition."""

from __future__ import annotations

from pathlib import Path

from fraud_app import devstack
from fraudcore.settings import Settings


def _properties(tmp_path: Path) -> dict[str, str]:
    settings = Settings(_env_file=None, state_dir=tmp_path, kafka={"local_scram_password": "Sekret-123"})
    broker = devstack.Kafka(settings)
    broker.home.mkdir(parents=True, exist_ok=True)
    text = broker._config().read_text()
    assert "Sekret-123" not in text  # SCRAM users live in the cluster metadata
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_scram_listener_beside_the_plaintext_one(tmp_path: Path) -> None:
    props = _properties(tmp_path)
    assert props["listeners"].split(",")[:2] == [
        "PLAINTEXT://127.0.0.1:19092",
        "SASL_PLAINTEXT://127.0.0.1:19094",
    ]
    assert "SASL_PLAINTEXT://127.0.0.1:19094" in props["advertised.listeners"]
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"


def test_every_partition_has_a_bounded_size(tmp_path: Path) -> None:
    props = _properties(tmp_path)
    retention, segment = int(props["log.retention.bytes"]), int(props["log.segment.bytes"])
    assert 0 < segment < retention <= 1024**3
    assert int(props["log.retention.hours"]) <= 168
