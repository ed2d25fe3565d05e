"""`fraud features size-redis`: Redis memory per card and per terminal, measured.

Starts a private ``redis-server`` (a free port, a temporary folder, AUTH on, nothing saved),
writes a population through the feature job's own write paths and reads ``used_memory``
after each kind of key, so the figures are what Redis really allocates for them:

* per card: its online features (``OnlineWriter.write_cards``: one Feast hash per card)
  and its 30-day history in the job's partition checkpoints (``PartitionState.checkpoint``,
  a string per partition);
* per terminal: its online features (``OnlineWriter.write_terminals``) and its counters
  (``TerminalCounters.apply``: a hash of per-hour transaction counts packed per day, and one of
  fraud counts).

The Redis manifests are sized from these figures (see kustomize/base/redis/redis.yaml).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
from confluent_kafka import TopicPartition
from feast import FeatureStore
from pydantic import SecretStr

from fraud_features.card_state import CardHistory, PartitionState
from fraud_features.feast_layout import entity_key
from fraud_features.online import OnlineWriter
from fraud_features.redis_keys import RedisKeys
from fraud_features.store import repo_config
from fraud_features.terminals import Increment, TerminalCounters
from fraudcore import features as F
from fraudcore.settings import Settings

BATCH = 1_000  # entities per write call, as the job batches them
FIRST_DAY = 20_000  # an arbitrary UTC day (days since the epoch) for the measured events
FIRST_HOUR = FIRST_DAY * F.HOURS_PER_DAY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(password: str, server: str = "redis-server") -> Iterator[int]:
    """A throw-away redis-server on 127.0.0.1 that requires ``password``; yields its port.
    The password goes in on stdin, as on Kubernetes, never on the command line."""
    binary = shutil.which(server)
    if binary is None:
        raise RuntimeError(f"{server} not found (the local stack installs Debian's redis-server)")
    with tempfile.TemporaryDirectory(prefix="fraud-redis-size-") as home:
        port = _free_port()
        command = [binary, "-", "--bind", "127.0.0.1", "--port", str(port), "--dir", home]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        log = (Path(home) / "redis.log").open("wb")
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        assert process.stdin is not None
        process.stdin.write(f"requirepass {password}\n".encode())
        process.stdin.close()
        try:
            client = redis.Redis(host="127.0.0.1", port=port, password=password)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError as error:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log_text = (Path(home) / "redis.log").read_text()
                        raise RuntimeError(f"{server} did not start: {log_text}") from error
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def _memory(client: redis.Redis) -> int:
    info = cast(dict[str, Any], client.info("memory"))
    return (
        int(info["used_memory"])
        - int(info.get("mem_clients_normal", 0))
        - int(info.get("used_memory_scripts_eval", 0))
    )


def _used(client: redis.Redis, settle_s: float = 0.5, timeout_s: float = 10.0) -> int:
    """``used_memory`` less what is not per key (client buffers, cached scripts), once the
    server's cron has settled it (it trims large new strings and freed buffers shortly after)."""
    deadline = time.monotonic() + timeout_s
    used = _memory(client)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = _memory(client)
        if now == used:
            break
        used = now
    return used


def _ids(prefix: str, n: int, length: int) -> list[str]:
    return [f"{prefix}{i:0{length - len(prefix)}d}" for i in range(n)]


def _batches(n: int) -> Iterator[slice]:
    for start in range(0, n, BATCH):
        yield slice(start, min(start + BATCH, n))


def measure(
    cards: int = 10_000,
    terminals: int = 10_000,
    card_events: int = 60,
    counter_days: int = 60,
    active_hours: int = 1,
    fraud_fields: int = 2,
    id_length: int = 16,
    partitions: int | None = None,
    server: str = "redis-server",
) -> dict[str, Any]:
    """Bytes of Redis memory per card and per terminal, measured on a private redis-server.

    ``card_events``: a card's transactions in its 30-day history (the simulator's default
    customer makes 2 a day: 60). ``counter_days``: days of transaction counts per terminal
    (the job keeps ``features.counter_retention_days``, 60 by default: older days' fields are
    dropped, the terminal windows reaching 37 days back). ``active_hours``: hours of each of
    those days with transactions at the terminal, a count each in the day's field (1 for the
    Handbook's population, about one transaction per terminal a day; 24 for a terminal busy
    around the clock). ``fraud_fields``: (transaction hour, report hour) fraud counts per
    terminal. ``id_length``: characters of a card or terminal id."""
    settings = Settings(_env_file=None)
    partitions = partitions or settings.topics.transactions.partitions
    password = secrets.token_urlsafe(24)
    rng = np.random.default_rng(0)
    card_ids = _ids("C", cards, id_length)
    terminal_ids = _ids("T", terminals, id_length)
    with private_redis(password, server) as port:
        settings = settings.model_copy(
            update={
                "redis": settings.redis.model_copy(update={"port": port, "password": SecretStr(password)})
            }
        )
        store = FeatureStore(repo_path=str(settings.features.repo), config=repo_config(settings))
        writer = OnlineWriter(store)  # connects with Feast's connection string (AUTH included)
        client = redis.Redis(**settings.redis.client_kwargs())
        keys = RedisKeys(settings.features.namespace)
        counters = TerminalCounters(
            client, keys, settings.features.label_delay_days, writer, settings.features.counter_retention_days
        )
        now_us = FIRST_HOUR * F.HOUR_US + counter_days * F.DAY_US
        delay_hours = settings.features.label_delay_days * F.HOURS_PER_DAY
        fraud_hour_fields = [f"{FIRST_HOUR + i}:{FIRST_HOUR + i + delay_hours}" for i in range(fraud_fields)]

        def write_cards(ids: list[str]) -> None:
            for part in _batches(len(ids)):
                n = part.stop - part.start
                state = {name: rng.random(n) * 100 for name in F.CARD_STATE}
                writer.write_cards(ids[part], np.full(n, now_us, dtype=np.int64), state)

        def write_terminals(ids: list[str]) -> None:
            for part in _batches(len(ids)):
                n = part.stop - part.start
                values = {name: rng.random(n) for name in F.TERMINAL_FEATURES}
                writer.write_terminals(ids[part], np.full(n, now_us, dtype=np.int64), values)

        def count(ids: list[str]) -> None:
            offset = 0
            mark: int | None = None
            for part in _batches(len(ids)):
                increments: list[Increment] = []
                for terminal in ids[part]:
                    fields = [
                        (keys.transaction_counts(terminal), str(FIRST_DAY + d), str(h))
                        for d in range(counter_days)
                        for h in range(active_hours)
                    ]
                    fields += [(keys.fraud_counts(terminal), field, "") for field in fraud_hour_fields]
                    for key, field, hour in fields:
                        increments.append((offset, key, field, "", "", "", hour))
                        offset += 1
                mark = counters.apply(TopicPartition("transactions", 0), increments, mark)

        # One batch of each first, then everything removed: the scripts' one-off memory (the
        # script cache, the Lua client's buffers at their batch size) is not counted per key.
        warm_up = _ids("W", min(BATCH, cards, terminals), id_length)
        write_cards(warm_up)
        write_terminals(warm_up)
        count(warm_up)
        client.flushall()

        used = {"empty": _used(client)}
        write_cards(card_ids)
        used["card_online"] = _used(client)
        write_terminals(terminal_ids)
        used["terminal_online"] = _used(client)
        count(terminal_ids)
        used["terminal_counters"] = _used(client)

        # Card histories as the job checkpoints them: cards spread over the partitions.
        horizon_us = F.CARD_HISTORY_S * F.US_PER_S
        states = [PartitionState(next_offset=cards) for _ in range(partitions)]
        for i, card in enumerate(card_ids):
            times = np.sort(rng.integers(now_us - horizon_us + 1, now_us, card_events))
            amounts = rng.integers(100, 50_000, card_events)
            visited = rng.integers(0, terminals, card_events)
            states[i % partitions].cards[card] = CardHistory(
                [int(t) for t in times], [int(c) for c in amounts], [terminal_ids[t] for t in visited]
            )
        blobs = [state.checkpoint() for state in states]
        for p, blob in enumerate(blobs):
            client.set(keys.checkpoint(TopicPartition("transactions", p)), blob)
        used["card_checkpoints"] = _used(client)

        card_online = (used["card_online"] - used["empty"]) / cards
        terminal_online = (used["terminal_online"] - used["card_online"]) / terminals
        terminal_counters = (used["terminal_counters"] - used["terminal_online"]) / terminals
        card_checkpoint = (used["card_checkpoints"] - used["terminal_counters"]) / cards
        project = settings.features.project
        samples = {
            "card_online_hash": client.memory_usage(entity_key(project, "card_id", card_ids[0])),
            "terminal_online_hash": client.memory_usage(entity_key(project, "terminal_id", terminal_ids[0])),
            "terminal_transaction_counts": client.memory_usage(keys.transaction_counts(terminal_ids[0])),
            "terminal_fraud_counts": client.memory_usage(keys.fraud_counts(terminal_ids[0])),
            "partition_checkpoint": client.memory_usage(keys.checkpoint(TopicPartition("transactions", 0))),
        }
        version = cast(dict[str, Any], client.info("server"))["redis_version"]
    return {
        "bytes_per_card": round(card_online + card_checkpoint),
        "bytes_per_terminal": round(terminal_online + terminal_counters),
        "card_online_bytes": round(card_online),
        "card_checkpoint_bytes": round(card_checkpoint),
        "terminal_online_bytes": round(terminal_online),
        "terminal_counter_bytes": round(terminal_counters),
        "largest_checkpoint_bytes": max(len(b) for b in blobs),
        "empty_used_memory_bytes": used["empty"],
        "memory_usage_samples": samples,
        "population": {
            "cards": cards,
            "terminals": terminals,
            "card_events": card_events,
            "counter_days": counter_days,
            "active_hours": active_hours,
            "fraud_fields": fraud_fields,
            "id_length": id_length,
            "partitions": partitions,
        },
        "redis_version": version,
    }
