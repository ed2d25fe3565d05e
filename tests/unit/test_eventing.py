"""The KafkaSource stand-in's offset bookkeeping and manifest reading (no broker needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fraud_app.eventing import DEFAULT_MANIFEST, Delivery, OffsetTracker, iso_duration_s, load_source
from fraudcore.kafka import Record


def record(offset: int, partition: int = 0, topic: str = "t") -> Record:
    return Record(topic, partition, offset, b"k", b"{}", 0)


def test_commits_never_pass_an_unfinished_record() -> None:
    tracker = OffsetTracker()
    for o in range(10, 15):
        tracker.started(record(o))
    tracker.finished(record(12))
    tracker.finished(record(11))
    assert tracker.committable() == {}  # 10 is still in flight
    tracker.finished(record(10))
    assert tracker.committable() == {("t", 0): 13}
    assert tracker.committable() == {}  # handed out once
    tracker.finished(record(14))
    assert tracker.committable() == {}
    tracker.finished(record(13))
    assert tracker.committable() == {("t", 0): 15}
    assert tracker.outstanding == 0


def test_random_finish_order_matches_the_lowest_unfinished_offset() -> None:
    rng = random.Random(7)
    tracker = OffsetTracker()
    offsets = {p: list(range(100 * p, 100 * p + 50)) for p in range(3)}
    for p, os_ in offsets.items():
        for o in os_:
            tracker.started(record(o, p))
    pending = [(p, o) for p, os_ in offsets.items() for o in os_]
    rng.shuffle(pending)
    committed: dict[tuple[str, int], int] = {}
    for i, (p, o) in enumerate(pending):
        tracker.finished(record(o, p))
        committed.update(tracker.committable())
        unfinished = {pp: [oo for (pp2, oo) in pending[i + 1 :] if pp2 == pp] for pp in offsets}
        for pp in offsets:
            if ("t", pp) in committed:
                # nothing below the committed position is still unfinished
                assert all(oo >= committed[("t", pp)] for oo in unfinished[pp])
    assert committed == {("t", p): 100 * p + 50 for p in offsets}
    assert tracker.outstanding == 0


def test_a_revoked_partition_is_forgotten_and_late_finishes_ignored() -> None:
    tracker = OffsetTracker()
    tracker.started(record(1, 0))
    tracker.started(record(5, 1))
    tracker.forget("t", 0)
    assert tracker.outstanding == 1
    tracker.finished(record(1, 0))  # finished after the revoke: no effect
    assert tracker.outstanding == 1
    assert tracker.committable() == {}
    tracker.finished(record(5, 1))
    assert tracker.committable() == {("t", 1): 6}


def test_a_record_started_twice_counts_once() -> None:
    tracker = OffsetTracker()
    tracker.started(record(3))
    tracker.started(record(3))
    assert tracker.outstanding == 1
    tracker.finished(record(3))
    tracker.finished(record(3))
    assert tracker.outstanding == 0
    assert tracker.committable() == {("t", 0): 4}


def test_durations_and_the_manifest() -> None:
    assert iso_duration_s("PT0.2S") == pytest.approx(0.2)
    assert iso_duration_s("PT1M30S") == 90
    assert iso_duration_s("P1DT1H") == 90_000
    with pytest.raises(ValueError, match="backoffDelay"):
        iso_duration_s("soon")
    spec = load_source()
    assert spec.topics == ["transactions"]
    assert spec.delivery.retry >= 1
    assert spec.sink_path.endswith(":predict")


def test_retry_delays_follow_knatives_formula() -> None:
    """Knative: backoffDelay x 2^n (exponential) or x n (linear) before retry n; the base
    manifest's policy gives 63 s of waits in all."""
    exponential = Delivery(retry=6, backoff_policy="exponential", backoff_delay_s=0.5)
    assert [exponential.delay_before_retry_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]
    linear = Delivery(retry=3, backoff_policy="linear", backoff_delay_s=0.5)
    assert [linear.delay_before_retry_s(n) for n in range(1, 4)] == [0.5, 1.0, 1.5]
    manifest = load_source(Path(__file__).resolve().parents[2] / DEFAULT_MANIFEST).delivery
    assert sum(manifest.delay_before_retry_s(n) for n in range(1, manifest.retry + 1)) == 63


def test_the_go_build_is_configured_from_the_manifest_and_the_settings() -> None:
    from pydantic import SecretStr

    from fraud_app.eventing import MAX_IN_FLIGHT, go_config
    from fraudcore.settings import KafkaSettings, Settings

    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_username="scorer", sasl_password=SecretStr("s3cret")
    )
    settings = Settings(kafka=kafka, metrics_host="::")
    spec = load_source().model_copy(update={"consumer_group": "g-1", "initial_offset": "earliest"})
    config = go_config(settings, spec, ["http://t0", "http://t1"], idle_exit_s=3)
    assert config["topics"] == spec.topics == ["transactions"]
    assert (config["consumer_group"], config["initial_offset"]) == ("g-1", "earliest")
    assert config["retry"] == spec.delivery.retry
    assert config["backoff_delay_s"] == spec.delivery.backoff_delay_s
    assert config["source"] == f"/apis/v1/namespaces/{spec.namespace}/kafkasources/{spec.name}#"
    assert config["sinks"] == ["http://t0", "http://t1"]
    assert config["max_in_flight"] == MAX_IN_FLIGHT
    assert (config["security_protocol"], config["sasl_password"]) == ("SASL_SSL", "s3cret")
    assert config["dead_letter_topic"] == settings.topics.dead_letter.name
    assert config["metrics_address"] == f"[::]:{settings.metrics_ports.dispatcher}"
    assert config["idle_exit_s"] == 3
    assert go_config(settings, spec, ["http://t0"])["idle_exit_s"] == -1  # never


def test_asking_for_the_go_build_where_it_is_missing_is_a_cli_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fraud_app import eventing
    from fraud_app.cli import app

    monkeypatch.setattr(eventing, "go_build", lambda: None)
    result = CliRunner().invoke(app, ["dispatch", "--engine", "go"])
    assert result.exit_code == 2
    assert "the Go build is missing" in result.output
    result = CliRunner().invoke(app, ["dispatch", "--engine", "rust"])
    assert result.exit_code == 2
    assert "--engine" in result.output
