"""The authenticated path against the real broker: the local Kafka's SASL_PLAINTEXT listener
with SCRAM-SHA-512 (``fraud up`` creates its user from the generated password in .env).

The quality gate runs on it end to end, so both client libraries authenticate the way they
do against a cluster's SCRAM listener: librdkafka (the gate's consumer and forwarder) and
kafka-python (admin, dead letters, this test's producer and reader). A wrong password is
refused by both, and the password appears in no log of the broker."""

from __future__ import annotations

import threading

import confluent_kafka
import pytest

from fraud_producers.gate import QualityGate
from fraudcore.kafka import broker_ready, librdkafka_producer, producer
from fraudcore.settings import Settings
from tests.helpers import dumps, isolated, read_topic, transaction


def over_scram(settings: Settings, password: str | None = None) -> Settings:
    """These settings' topics, reached through the local broker's SCRAM listener."""
    kafka = settings.kafka
    host = kafka.bootstrap_servers.rsplit(":", 1)[0]
    secret = kafka.local_scram_password.get_secret_value() if password is None else password
    scram = kafka.model_copy(
        update={
            "bootstrap_servers": f"{host}:{kafka.local_sasl_port}",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": kafka.local_scram_username,
            "sasl_password": type(kafka.sasl_password)(secret),
        }
    )
    return settings.model_copy(update={"kafka": scram})


@pytest.fixture
def scram_password(stack: Settings) -> str:
    password = stack.kafka.local_scram_password.get_secret_value()
    assert password, "fraud up writes FRAUD_KAFKA__LOCAL_SCRAM_PASSWORD to .env"
    return password


def test_the_gate_runs_end_to_end_on_the_scram_listener(
    stack: Settings, unique: str, scram_password: str
) -> None:
    settings = over_scram(isolated(stack, unique))
    good = [dumps(transaction(300 + i)) for i in range(40)]
    bad = [b"not json", dumps(transaction(999, amount=-1))]
    prod = producer(settings)
    for raw in [*good[:20], *bad, *good[20:]]:
        prod.send(settings.topics.raw.name, key=b"k", value=raw)
    prod.flush()
    prod.close()

    gate = QualityGate(settings, group=f"gate-scram-{unique}")
    gate.run(threading.Event(), idle_exit_s=3)

    assert [r.value for r in read_topic(settings, settings.topics.transactions.name, 40)] == good
    dead = read_topic(settings, settings.topics.dead_letter.name, 2)
    assert [r.value for r in dead] == bad
    assert all(dict(r.headers)["dlq-reason"] for r in dead)
    assert (gate.accepted, gate.rejected) == (40, 2)


def test_a_wrong_password_is_refused_by_the_broker(stack: Settings, scram_password: str) -> None:
    assert broker_ready(over_scram(stack), timeout_s=5)
    wrong = over_scram(stack, password=scram_password + "-wrong")
    assert not broker_ready(wrong, timeout_s=5)  # kafka-python
    errors: list[confluent_kafka.KafkaError] = []
    client = librdkafka_producer(wrong, error_cb=errors.append)
    with pytest.raises(confluent_kafka.KafkaException):
        client.list_topics(timeout=5)
    client.poll(1)
    del client  # librdkafka would go on retrying in its threads
    assert any(e.code() == confluent_kafka.KafkaError._AUTHENTICATION for e in errors), errors


def test_the_password_is_in_no_broker_log(stack: Settings, scram_password: str) -> None:
    logs = [*(stack.state_dir / "kafka").glob("*.log"), (stack.state_dir / "kafka" / "server.properties")]
    assert len(logs) == 2, "the broker writes its log and config under the state folder"
    for log in logs:
        assert scram_password not in log.read_text(errors="replace"), log
