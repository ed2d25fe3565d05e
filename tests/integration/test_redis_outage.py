"""The local Redis killed with -9 for 20 s while 200 transactions/s are scored (the dispatcher
delivering to the transformer, which reads Feast's online store in Redis) and the streaming
feature job and the archiver run as processes nobody restarts. Redis comes back on its own
append-only file. Then: every transaction has exactly one decision (after dedupe by decision
id), the decisions made while Redis was away are flagged ``features_fallback`` and counted,
the transformer reads features again by itself, the archive holds every transaction once,
and the feature job, which waited for Redis and resumed from its checkpoints, logged for
every transaction the features an offline recomputation gives."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraud_app import devstack
from fraud_features.store import offline_path
from fraudcore import features as F
from fraudcore.kafka import group_lag
from fraudcore.settings import Settings
from tests.helpers import start_processes, stop_processes, transaction
from tests.integration.test_object_store_outage import _objects, _wait_for
from tests.integration.test_serving_kill import (
    Flow,
    Serving,
    every_transaction_decided,
    retries,
    serving,  # noqa: F401  (the fixture)
)
from tests.serving_helpers import serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 200  # transactions per second
PRODUCE_S = 110.0  # the kill comes 15-40 s in (the workers' start), then 20 s down, then the catch-up
DOWN_S = 20.0
RECOVERED_AFTER_S = 10.0  # decisions published this long after Redis answers (at least) read features again


def _feature_log(settings: Settings) -> pd.DataFrame:
    """The feature log (serving_settings puts this test's offline store in a local folder)."""
    files = sorted(Path(offline_path(settings, "feature_log")).rglob("*.parquet"))
    frames = [pq.read_table(f).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["transaction_id"])


def _caught_up(settings: Settings, group: str, timeout_s: float) -> float | None:
    """When ``group`` had committed all but two seconds of transactions (its checkpoint
    interval plus one in hand); None if not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    topic = settings.topics.transactions.name
    while time.monotonic() < deadline:
        if group_lag(settings, group, [topic])[topic] <= 2 * RATE:
            return time.time()
        time.sleep(0.5)
    return None


def test_a_redis_kill_is_ridden_out_by_the_transformer_and_the_feature_job(
    serving: Serving,  # noqa: F811
    stack: Settings,
    request: pytest.FixtureRequest,
) -> None:
    settings = serving.settings
    run_id = uuid.uuid4().hex[:8]
    namespace = f"r{run_id}"
    archive_prefix = f"tests/redis-{run_id}"
    env = serving_env(
        settings,
        FRAUD_FEATURES__NAMESPACE=namespace,
        FRAUD_FEATURES__CHECKPOINT_INTERVAL_S="1",
        FRAUD_METRICS_PORTS__FEATURE_JOB="0",
        FRAUD_METRICS_PORTS__ARCHIVER="0",
    )
    fraud = [sys.executable, "-m", "fraud_app.cli"]
    commands = {
        "feature-job": [*fraud, "features", "stream", "--group", f"fj-{run_id}"],
        "archiver": [*fraud, "archive", "--group", f"arch-{run_id}", "--prefix", archive_prefix],
    }
    logs = {name: serving.tmp / f"{name}.log" for name in commands}
    procs = start_processes(commands, env, logs)
    request.addfinalizer(lambda: stop_processes(procs))  # whichever assertion fails first

    def context() -> str:
        workers = "\n".join(f"--- {name} ---\n{path.read_text()[-3000:]}" for name, path in logs.items())
        return f"{workers}\n{serving.logs()}"

    # Event times run with the wall clock, so the cards and terminal days the feature job writes
    # are within the online views' TTLs when the transformer reads them.
    start = datetime.now(UTC) + timedelta(seconds=2)
    total = int(RATE * PRODUCE_S)
    txns = [
        transaction(i, ts=start + timedelta(seconds=i / RATE), transaction_id=f"redis-{run_id}-{i:05d}")
        for i in range(total)
    ]
    wanted = {t["transaction_id"] for t in txns}
    redis_server = devstack.Redis(stack)

    def refused() -> float:
        """Online lookups the store refused or failed (not those past their time budget)."""
        return serving.transformer.metric("transformer_errors_total", kind="feature_store")

    def lookup_errors() -> float:
        """Failed online lookups the transformer counted (refused, or past its budget)."""
        return refused() + serving.transformer.metric("transformer_errors_total", kind="feature_timeout")

    retries_before = retries()
    flow = Flow.start(serving, txns, RATE, f"redis-{run_id}", None)  # the manifest's delivery policy
    try:
        assert flow.wait_for_decisions(RATE * 10, timeout_s=60) >= RATE * 10, context()
        # ... and the feature job has state in Redis (its first checkpoints) when Redis dies.
        assert _wait_for(lambda: len(_feature_log(settings)) > RATE, 60), context()
        pid = redis_server.pid()
        assert pid is not None, "the local Redis is not running"
        errors_before = lookup_errors()
        killed_at = time.time()
        os.killpg(pid, signal.SIGKILL)
        try:
            time.sleep(DOWN_S)
            dead = [name for name, proc in procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited while Redis was down\n{context()}"
            errors_during = lookup_errors() - errors_before
        finally:
            restart_at = time.time()
            redis_server.start()  # the same append-only file: the rest of the suite needs it too
        back_at = time.time()
        # The feature job then catches up 20 s of backlog. On this one machine it competes with
        # the transformer for the CPU, and lookups past their 50 ms budget fall back too: the
        # steady state is judged once the job has caught up (in a cluster they have their own).
        caught_up_at = _caught_up(settings, f"fj-{run_id}", timeout_s=120)
        assert caught_up_at is not None, f"the feature job did not catch up\n{context()}"
        recovered_at = max(back_at + RECOVERED_AFTER_S, caught_up_at)
        time.sleep(max(0.0, recovered_at - time.time()))
        refused_before = refused()
        decisions = flow.decisions_once_all_in(wanted, timeout_s=180)
        refused_after = refused() - refused_before
    finally:
        flow.stop()

    try:
        every_transaction_decided(
            flow, decisions, wanted, retries_before, f"Redis down {back_at - killed_at:.1f} s", serving
        )
        # Flagged while Redis was away (a request already past its lookup at the kill aside),
        # and features again once it answers, with nobody restarting the transformer.
        fallback = {t: flow.reader.fallback[t][0] for t in wanted}
        published = {t: min(ts for _, ts in decisions[t]) for t in wanted}
        during = [fallback[t] for t in wanted if killed_at + 1 < published[t] < restart_at]
        after = [fallback[t] for t in wanted if published[t] > recovered_at]
        print(
            f"Redis restarted in {back_at - restart_at:.1f} s; "
            f"decisions while Redis was down: {len(during)}, {sum(during)} flagged; "
            f"the feature job caught up {caught_up_at - back_at:.1f} s after it answered; "
            f"from {recovered_at - back_at:.1f} s after: {len(after)}, {sum(after)} flagged"
        )
        assert len(during) > RATE * (DOWN_S - 5), "decisions went on while Redis was down"
        assert all(during), f"{len(during) - sum(during)} decisions not flagged while Redis was down"
        assert after, "no decision came after Redis was back"
        assert refused_after == 0, f"{refused_after} lookups still refused after Redis was back"
        # No refusals (above); what still falls back are lookups past their 50 ms budget while
        # the transformer shares this machine's two cores with the catching-up job (2.2 % in one run).
        assert sum(after) <= 0.05 * len(after), f"{sum(after)} of {len(after)} still fall back\n{context()}"
        assert errors_during > 0, "the failed lookups are counted"

        # The feature job and the archiver rode it out, and nothing is missing or doubled.
        archived = lambda: _objects(settings, settings.s3.raw_bucket, f"{archive_prefix}/transactions/")  # noqa: E731
        assert _wait_for(lambda: wanted <= set(archived()["transaction_id"]), 120), context()
        assert _wait_for(lambda: wanted <= set(_feature_log(settings)["transaction_id"]), 120), context()
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        assert not dead, f"{dead} exited after Redis came back\n{context()}"
        assert "Redis is not answering" in logs["feature-job"].read_text(), context()
    finally:
        stop_processes(procs)  # the archiver and the feature log flush on the way out

    archive = archived()
    assert not archive.duplicated(["kafka_partition", "kafka_offset"]).any(), "a record archived twice"
    assert len(archive) == total
    assert set(archive["transaction_id"]) == wanted
    tx = pd.DataFrame(txns)[["transaction_id", "card_id", "terminal_id", "amount", "timestamp"]]
    tx["timestamp"] = pd.to_datetime(tx["timestamp"], utc=True)
    offline = F.offline_features(tx.sort_values("timestamp", kind="stable"))
    served = _feature_log(settings).drop_duplicates("transaction_id")  # a replay may log a row twice
    merged = served.merge(offline, on="transaction_id", suffixes=("_served", "_offline"))
    assert len(merged) == total
    differing = {
        name: int((~np.isclose(merged[f"{name}_served"], merged[f"{name}_offline"], rtol=0, atol=1e-6)).sum())
        for name in F.MODEL_FEATURES
    }
    assert not any(differing.values()), {k: v for k, v in differing.items() if v}
