"""The streaming feature job against real Kafka, Redis and Feast: parity with the backfill,
replicas, crash recovery and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import TopicPartition

from fraud_features.events import Transaction
from fraud_features.stream import FeatureJob
from fraudcore import features as F
from fraudcore.kafka import group_lag, producer
from fraudcore.service import Commit, Records
from fraudcore.settings import Settings
from tests.helpers import env_for, isolated, produce_history, read_topic, simulated


def _settings(stack: Settings, unique: str, tmp_path: Path) -> Settings:
    from fraud_features.store import apply

    base = isolated(stack, unique)
    features = base.features.model_copy(
        update={
            "namespace": f"t{unique}",
            "offline_root": str(tmp_path / "offline"),
            "checkpoint_interval_s": 0.5,
            "project": f"t{unique}",
            "registry": str(tmp_path / "registry.db"),
        }
    )
    settings = base.model_copy(update={"features": features})
    apply(settings)  # this test's own Feast project: online values never collide with others
    return settings


def _feature_log(settings: Settings) -> pd.DataFrame:
    root = Path(settings.features.offline_root) / "feature_log"
    frame = pd.concat([pd.read_parquet(p) for p in sorted(root.glob("*.parquet"))], ignore_index=True)
    return frame


def _assert_same_features(served: pd.DataFrame, expected: pd.DataFrame) -> None:
    merged = served.merge(expected, on="transaction_id", suffixes=("_served", "_offline"))
    assert len(merged) == len(expected)
    for name in F.MODEL_FEATURES:
        np.testing.assert_allclose(
            merged[f"{name}_served"], merged[f"{name}_offline"], rtol=0, atol=1e-6, err_msg=name
        )


def with_analyst_verdicts(transactions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The chargebacks plus analysts' verdicts: a fraud confirmed two days before its
    chargeback (counted once, from the earlier report), "legitimate" on genuine transactions
    (counted nothing) and fraud on some genuine ones (counted, as any fraud verdict)."""
    rng = np.random.default_rng(5)
    early = labels.sample(n=min(20, len(labels)), random_state=5).assign(
        reported_at=lambda f: f["reported_at"] - pd.Timedelta(days=2), is_fraud=True
    )
    genuine = transactions.loc[transactions["is_fraud"] == 0]
    picked = genuine.iloc[rng.choice(len(genuine), 40, replace=False)]
    judged = pd.DataFrame(
        {
            "transaction_id": picked["transaction_id"].to_numpy(),
            "card_id": picked["card_id"].to_numpy(),
            "terminal_id": picked["terminal_id"].to_numpy(),
            "transaction_timestamp": pd.DatetimeIndex(picked["timestamp"]),
            "reported_at": pd.DatetimeIndex(picked["timestamp"]) + pd.Timedelta(hours=6),
            "scenario": np.zeros(len(picked), np.int8),
            "is_fraud": [i % 4 == 0 for i in range(len(picked))],
        }
    )
    analysts = pd.concat([early, judged], ignore_index=True).assign(source="analyst", analyst="ana")
    frame = pd.concat([labels.assign(source="chargeback", is_fraud=True), analysts], ignore_index=True)
    return frame.sort_values("reported_at", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def history() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    transactions, chargebacks = simulated(days=40, jitter_days=2.0)
    labels = with_analyst_verdicts(transactions, chargebacks)
    offline = F.offline_features(transactions, labels)
    assert not offline.equals(F.offline_features(transactions, chargebacks))  # the verdicts count
    return transactions, labels, offline


def test_online_features_equal_the_offline_backfill(
    stack: Settings, unique: str, tmp_path: Path, history
) -> None:
    transactions, labels, offline = history
    settings = _settings(stack, unique, tmp_path)
    from fraud_features.store import feature_store

    produce_history(settings, transactions, labels)
    job = FeatureJob(settings, group=f"fj-{unique}")
    job.run(threading.Event(), idle_exit_s=3)
    assert job.processed == len(transactions)

    served = _feature_log(settings)
    assert served["transaction_id"].is_unique
    _assert_same_features(served, offline)
    assert (offline["terminal_risk_30d"] > 0).any()  # the comparison covered known frauds

    # The online store holds each card's state after its latest transaction, and today's
    # terminal values: what the transformer will read.
    store = feature_store(settings)
    last = transactions.sort_values("timestamp").groupby("card_id").tail(1).head(5)
    rows = [{"card_id": c} for c in last["card_id"]]
    online = store.get_online_features(
        features=[f"card_features:{n}" for n in F.CARD_FEATURES], entity_rows=rows
    )
    got = online.to_df()
    t_us = F.to_us(transactions["timestamp"])
    state = F.card_features(
        F.codes(transactions["card_id"]),
        t_us,
        F.to_cents(transactions["amount"]),
        F.codes(transactions["terminal_id"]),
    ).state
    for i, idx in enumerate(last.index):
        pos = transactions.index.get_loc(idx)
        for name in F.CARD_FEATURES:
            assert abs(got[name].iloc[i] - state[name][pos]) < 1e-6, name


def test_counters_beyond_the_retention_are_dropped_and_the_features_stay_equal(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    """60 days streamed in 4-day steps through the shortest counter retention the job accepts
    (2 x 7 + 30 + 1 days): every terminal's first weeks of counters go, and the features
    still equal the backfill."""
    transactions, labels = simulated(days=60, customers=40, terminals=80, seed=3)
    offline = F.offline_features(transactions, labels)
    retention = 2 * F.LABEL_DELAY_DAYS + max(F.TERMINAL_WINDOWS_DAYS.values()) + 1
    settings = _settings(stack, unique, tmp_path)
    settings = settings.model_copy(
        update={"features": settings.features.model_copy(update={"counter_retention_days": retention})}
    )
    job = FeatureJob(settings, group=f"fj-{unique}")
    stop = threading.Event()
    failures: list[str] = []

    def run() -> None:
        try:
            job.run(stop)
        except BaseException as exc:  # said in the assertion below, not only on stderr
            failures.append(f"{type(exc).__name__}: {exc!r}")
            raise

    runner = threading.Thread(target=run)
    runner.start()
    try:
        step = pd.Timedelta(days=4)
        start = transactions["timestamp"].min().floor("D")
        while start <= transactions["timestamp"].max():
            end = start + step
            chunk = transactions.loc[(transactions["timestamp"] >= start) & (transactions["timestamp"] < end)]
            reported = labels.loc[(labels["reported_at"] >= start) & (labels["reported_at"] < end)]
            done = job.processed + len(chunk)
            produce_history(settings, chunk, reported)
            _wait_for(partial(_reached, job, done, failures), f"the job to process the days from {start}")
            assert not failures, failures
            start = end
    finally:
        stop.set()
        runner.join(timeout=60)
    assert job.processed == len(transactions)
    _assert_same_features(_feature_log(settings), offline)

    # A terminal's counters were last read for its latest hour: nothing from before the
    # retention behind that hour is left.
    day = F.to_us(transactions["timestamp"]) // F.DAY_US
    hour = F.hour_of(F.to_us(transactions["timestamp"]))
    span = pd.DataFrame({"terminal": transactions["terminal_id"], "day": day}).groupby("terminal")["day"]
    first, last = span.min(), span.max()
    assert (first < last - retention).sum() >= 30  # over half the terminals had days to drop
    last_hours = pd.Series(hour).groupby(transactions["terminal_id"].to_numpy()).max()
    for terminal, last_hour in last_hours.items():
        oldest = last_hour - retention * F.HOURS_PER_DAY
        key = job.keys.transaction_counts(str(terminal))  # a field per day
        kept = [int(f) for f in cast(list[bytes], job.redis.hkeys(key))]
        assert min(kept, default=last_hour) >= oldest // F.HOURS_PER_DAY, (key, sorted(kept))
        key = job.keys.fraud_counts(str(terminal))  # a field per (transaction hour, report hour)
        kept = [int(f.split(b":")[0]) for f in cast(list[bytes], job.redis.hkeys(key))]
        assert min(kept, default=last_hour) >= oldest, (key, sorted(kept))
    # The once-only fraud markers go by transaction day too.
    marked = cast(
        list[tuple[bytes, float]], job.redis.zrange(job.keys.counted_days(), 0, -1, withscores=True)
    )
    fraud_days = F.to_us(labels["transaction_timestamp"]) // F.DAY_US
    assert fraud_days.min() < day.max() - retention  # some frauds were that old
    assert marked
    assert min(score for _, score in marked) >= day.max() - retention
    assert not job.redis.exists(job.keys.counted_frauds(int(fraud_days.min())))


class Replicas:
    """Feature-job replicas of one consumer group, each on its own thread with its own stop."""

    def __init__(
        self, settings: Settings, group: str, count: int, job: type[FeatureJob] = FeatureJob
    ) -> None:
        self.settings, self.group = settings, group
        self.jobs = [job(settings, group=group) for _ in range(count)]
        self.stops = [threading.Event() for _ in self.jobs]
        self.threads = [
            threading.Thread(target=j.run, args=(s,)) for j, s in zip(self.jobs, self.stops, strict=True)
        ]

    def start(self) -> Replicas:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in self.stops:
            s.set()
        for t in self.threads:
            t.join(timeout=60)

    @property
    def processed(self) -> int:
        return sum(j.processed for j in self.jobs)

    def lag(self) -> int:
        topics = [self.settings.topics.transactions.name, self.settings.topics.labels.name]
        return sum(group_lag(self.settings, self.group, topics).values())

    def run_until_caught_up(self, timeout_s: float = 240) -> None:
        """Until the group has committed every partition's end offset (read from the broker):
        the wait is on the work, not on idle time."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and self.lag():
                time.sleep(0.5)
        finally:
            self.stop()
        assert not self.lag(), "the group did not reach the partitions' end offsets"


def _reached(job: FeatureJob, processed: int, failures: list[str]) -> bool:
    return bool(failures) or job.processed >= processed


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class _SmallBatches(FeatureJob):
    """A replica that reads 25 records at a time and, while ``slow`` is set, pauses briefly
    before each batch, so a backlog lasts while members join and leave. The pauses are
    short: a rebalance waits for every member's next poll."""

    slow = threading.Event()

    def __init__(self, settings: Settings, *, group: str) -> None:
        super().__init__(settings, group=group, batch_records=25)
        self.records_read = 0

    def handle(self, records: Records) -> Commit:
        if self.slow.is_set():
            time.sleep(0.05)
        commit = super().handle(records)
        self.records_read += len(records)
        return commit


def test_two_replicas_produce_the_same_features_as_one(
    stack: Settings, unique: str, tmp_path: Path, history
) -> None:
    transactions, labels, offline = history
    settings = _settings(stack, unique, tmp_path)
    produce_history(settings, transactions, labels)
    # Slow at first, so that the first member to join does not work off the whole backlog
    # before the second has joined.
    _SmallBatches.slow.set()
    try:
        replicas = Replicas(settings, f"fj-{unique}", 2, _SmallBatches).start()
        _wait_for(lambda: all(j.owned.next for j in replicas.jobs), "both replicas to own partitions", 120)
    finally:
        _SmallBatches.slow.clear()
    replicas.run_until_caught_up()
    assert replicas.processed >= len(transactions)
    assert all(j.processed > 0 for j in replicas.jobs), "both replicas should own partitions"
    served = _feature_log(settings).drop_duplicates("transaction_id", keep="last")
    _assert_same_features(served, offline)


def test_a_replica_joining_and_leaving_mid_stream_skips_and_double_counts_nothing(
    stack: Settings, unique: str, tmp_path: Path, history
) -> None:
    """Rebalances while a backlog is worked off: a third replica joins, takes partitions
    from the two running ones, reads some of them, and leaves again (possibly with
    transactions it still holds for the watermark: their new owners take them up from its
    checkpoint)."""
    transactions, labels, offline = history
    settings = _settings(stack, unique, tmp_path)
    group = f"fj-{unique}"
    produce_history(settings, transactions, labels)
    _SmallBatches.slow.set()
    try:
        replicas = Replicas(settings, group, 2, _SmallBatches)
        third = Replicas(settings, group, 1, _SmallBatches)  # built first: start-up is slow under load
        replicas.start()
        _wait_for(lambda: replicas.processed > 0, "the first replicas to start")
        third.start()
        joined = cast(_SmallBatches, third.jobs[0])
        _wait_for(lambda: joined.records_read > 0, "the third replica to read its partitions", timeout_s=120)
        third.stop()
        at_leave = replicas.processed + third.processed
    finally:
        _SmallBatches.slow.clear()
    replicas.run_until_caught_up()
    assert at_leave < len(transactions), "the backlog was done before the third replica left"
    served = _feature_log(settings)
    assert set(served["transaction_id"]) == set(transactions["transaction_id"])  # no gap
    _assert_same_features(served.drop_duplicates("transaction_id", keep="last"), offline)  # no double count


def test_sigkill_restart_neither_double_counts_nor_skips(
    stack: Settings, unique: str, tmp_path: Path, history
) -> None:
    transactions, labels, offline = history
    settings = _settings(stack, unique, tmp_path)
    from fraud_features.store import apply

    apply(settings)
    env = env_for(settings)
    env.update(
        {
            "FRAUD_FEATURES__NAMESPACE": settings.features.namespace,
            "FRAUD_FEATURES__OFFLINE_ROOT": settings.features.offline_root,
            "FRAUD_FEATURES__CHECKPOINT_INTERVAL_S": "0.3",
            "FRAUD_METRICS_PORTS__FEATURE_JOB": "0",
        }
    )
    cmd = [sys.executable, "-m", "fraud_app.cli", "features", "stream", "--group", f"fj-{unique}"]
    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    half = len(transactions) // 2
    produce_history(settings, transactions.iloc[:half], labels)
    root = Path(settings.features.offline_root) / "feature_log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(root.glob("*.parquet")):
        time.sleep(0.05)
    # Kill it without warning while the second half streams in.
    second = threading.Thread(
        target=produce_history, args=(settings, transactions.iloc[half:], labels.iloc[:0])
    )
    second.start()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    second.join()
    before = _feature_log(settings)
    assert 0 < before["transaction_id"].nunique() < len(transactions), (tmp_path / "job.log").read_text()[
        -3000:
    ]

    done = subprocess.run([*cmd, "--idle-exit-s", "3"], env=env, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = _feature_log(settings).drop_duplicates("transaction_id", keep="last")
    assert len(served) == len(transactions)  # no gap
    _assert_same_features(served, offline)  # no double counting


def test_events_missing_fields_go_to_dead_letter_and_the_job_continues(
    stack: Settings, unique: str, tmp_path: Path
) -> None:
    settings = _settings(stack, unique, tmp_path)
    from fraud_features.store import apply

    apply(settings)
    transactions, labels = simulated(days=3, customers=20, terminals=40)
    prod = producer(settings)
    prod.send(settings.topics.transactions.name, key=b"C1", value=b'{"transaction_id": "x", "card_id": "C1"}')
    prod.send(settings.topics.transactions.name, key=b"C1", value=b"\x00garbage")
    prod.send(settings.topics.labels.name, key=b"C1", value=b'{"transaction_id": "y"}')
    prod.flush()
    produce_history(settings, transactions, labels)
    job = FeatureJob(settings, group=f"fj-{unique}")
    job.run(threading.Event(), idle_exit_s=3)
    assert job.processed == len(transactions)
    dead = read_topic(settings, settings.topics.dead_letter.name, 3)
    reasons = sorted(dict(r.headers)["dlq-reason"].decode() for r in dead)
    assert reasons == [
        "payload: not valid UTF-8 JSON",
        "terminal_id: is required; amount: is required; timestamp: is required",
        "terminal_id: is required; transaction_timestamp: is required; reported_at: is required",
    ]


# One script, so the keys go at once, as a Redis that lost its data loses them: a scan and
# deletes from outside would let the running job write between them (a partial loss, which
# a Redis without eviction never has).
WIPE_LUA = """
local deleted, cursor = 0, '0'
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 5000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do deleted = deleted + redis.call('DEL', key) end
until cursor == '0'
return deleted
"""


def _wipe_redis(settings: Settings) -> int:
    """Delete every Redis key of this test's job and Feast project at once: card
    checkpoints, marks, counters, online features."""
    import redis

    with redis.Redis(**settings.redis.client_kwargs()) as db:
        return int(db.eval(WIPE_LUA, 0, f"*{settings.features.namespace}*"))


def _assert_online_equals_offline(settings: Settings, transactions: pd.DataFrame) -> None:
    from fraud_features.store import feature_store

    last = transactions.sort_values("timestamp").groupby("card_id").tail(1)
    online = (
        feature_store(settings)
        .get_online_features(
            features=[f"card_features:{n}" for n in F.CARD_FEATURES],
            entity_rows=[{"card_id": c} for c in last["card_id"]],
        )
        .to_df()
    )
    state = F.card_features(
        F.codes(transactions["card_id"]),
        F.to_us(transactions["timestamp"]),
        F.to_cents(transactions["amount"]),
        F.codes(transactions["terminal_id"]),
    ).state
    positions = np.array([transactions.index.get_loc(idx) for idx in last.index], dtype=np.int64)
    for name in F.CARD_FEATURES:
        np.testing.assert_allclose(
            online[name].to_numpy(dtype=float), state[name][positions], rtol=0, atol=1e-6, err_msg=name
        )


class LosesStateOnce(FeatureJob):
    """Redis loses the job's state once, after a third of the transactions, just before the
    job computes terminal values it has not computed yet: it computes them from the lost
    counters before it can notice."""

    def __init__(self, settings: Settings, after: int, **kwargs: object) -> None:
        super().__init__(settings, batch_records=200, **kwargs)  # type: ignore[arg-type]
        self.after = after
        self.wiped = 0

    def _features(self, tp: TopicPartition, txs: list[Transaction]) -> None:
        due = not self.wiped and self.processed >= self.after
        if due and any((tx.terminal_id, tx.hour) not in self.terminals.cache for tx in txs):
            self.wiped = _wipe_redis(self.settings)
        super()._features(tp, txs)


def test_redis_losing_the_job_state_is_detected_and_rebuilt_not_served_as_zeros(
    stack: Settings, unique: str, tmp_path: Path, history
) -> None:
    """The job's Redis state (checkpoints, counters, online features) deleted twice: while
    the job runs, and while it is stopped. Both times the job notices (its state marks are
    gone), replays its partitions from the topics' retention, and ends with the online
    features and the feature log equal to the offline recomputation: no row computed from
    the lost state reaches the log."""
    transactions, labels, offline = history
    settings = _settings(stack, unique, tmp_path)
    produce_history(settings, transactions, labels)

    job = LosesStateOnce(settings, after=len(transactions) // 3, group=f"fj-{unique}")
    job.run(threading.Event(), idle_exit_s=3)
    assert job.wiped > 0
    assert job.rebuilds > 0, "the loss went unnoticed"
    logged = _feature_log(settings)  # every row, a replay's second ones included
    assert set(logged["transaction_id"]) == set(offline["transaction_id"])
    first = logged.groupby("transaction_id").cumcount() == 0
    replayed = logged.loc[~first, "transaction_id"]
    _assert_same_features(logged[first], offline)
    _assert_same_features(logged[~first], offline[offline["transaction_id"].isin(replayed)])
    _assert_online_equals_offline(settings, transactions)

    # Lost while the job is down: the next start sees committed offsets without state.
    assert _wipe_redis(settings) > 0
    again = FeatureJob(settings, group=f"fj-{unique}")
    again.run(threading.Event(), idle_exit_s=3)
    assert again.rebuilds > 0
    assert again.processed == len(transactions)  # everything replayed, from the start
    _assert_online_equals_offline(settings, transactions)
