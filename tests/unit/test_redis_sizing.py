"""`fraud features size-redis` on a small population: the figures add up, agree with Redis's
own MEMORY USAGE, and come from a private server that requires AUTH (so the feature job's
writer, which connects through Feast's connection string, really sends the password)."""

from __future__ import annotations

import shutil

import pytest
import redis

from fraud_features.sizing import measure, private_redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def test_the_private_server_refuses_clients_without_the_password() -> None:
    with private_redis("Sizing-Password_1") as port:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
        assert redis.Redis(host="127.0.0.1", port=port, password="Sizing-Password_1").ping()


def test_bytes_per_card_and_terminal_add_up_and_match_memory_usage() -> None:
    result = measure(cards=400, terminals=400, card_events=30, counter_days=20, partitions=2)
    assert result["bytes_per_card"] == pytest.approx(
        result["card_online_bytes"] + result["card_checkpoint_bytes"], abs=1
    )
    assert result["bytes_per_terminal"] == pytest.approx(
        result["terminal_online_bytes"] + result["terminal_counter_bytes"], abs=1
    )
    samples = result["memory_usage_samples"]
    # used_memory per key also counts the key's slot in the keyspace: a little above MEMORY USAGE.
    assert samples["card_online_hash"] <= result["card_online_bytes"] <= 2 * samples["card_online_hash"]
    assert (
        samples["terminal_online_hash"]
        <= result["terminal_online_bytes"]
        <= 2 * samples["terminal_online_hash"]
    )
    counters = samples["terminal_transaction_counts"] + samples["terminal_fraud_counts"]
    assert counters <= result["terminal_counter_bytes"] <= 2 * counters
    # 30 events of a card's history: each an event time, an amount and a terminal id.
    assert 30 * 10 <= result["card_checkpoint_bytes"] <= 30 * 60
    assert result["population"]["cards"] == 400


def test_a_terminal_busy_around_the_clock_holds_a_counter_field_per_hour() -> None:
    quiet = measure(cards=50, terminals=200, card_events=5, counter_days=5, active_hours=1, partitions=1)
    busy = measure(cards=50, terminals=200, card_events=5, counter_days=5, active_hours=24, partitions=1)
    assert busy["population"]["active_hours"] == 24
    # A field per day either way; a busy day's field holds 24 "<hour>:<count>" pairs, not one.
    extra = busy["terminal_counter_bytes"] - quiet["terminal_counter_bytes"]
    assert 5 * 23 * 3 <= extra <= 5 * 23 * 12
    assert busy["terminal_online_bytes"] == pytest.approx(quiet["terminal_online_bytes"], rel=0.2)
