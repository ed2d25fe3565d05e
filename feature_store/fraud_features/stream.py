"""The streaming feature job: Kafka events in, fresh online features and a feature log out.

It consumes ``transactions`` (keyed by card) and ``fraud-labels`` with one consumer group,
and for every transaction records the features as they stood just before it (the feature
log, in the offline store) and writes the new card state and the hour's terminal values to
the Feast online store. All feature math is `fraudcore.features`, shared with the backfill.

Scaling out: run more replicas of the same consumer group.
* Card state follows the card-keyed partitions: each card's window history lives in the
  memory of the one replica that owns its partition, checkpointed to Redis.
* Terminal state is shared and keyed by terminal in Redis, updated atomically: per-hour
  transaction counters and per-(transaction hour, report hour) fraud counters, applied by a
  Lua script that also records the partition's applied offset, so a replayed record is
  never counted twice whichever replica replays it.
* Terminal values for a UTC hour ``h`` only read counters of hours before ``h - D`` and labels
  reported before ``h``. They are computed once the watermark allows it: every transaction
  partition has progressed past ``h - D`` and every label partition past the start of
  ``h`` (a partition read completely counts as complete: see `fraud_features.watermarks`
  for what that takes behind the quality gate). So two replicas compute the same values
  as one, in any interleaving.

Late and out-of-order events: a transaction older than its card's latest is applied at its
event time (it counts in later windows; values already served are not revised and the
feature log keeps what was served). A transaction or label older than the terminal
watermark by more than the label delay only reaches hours not yet computed.

Restart after a crash: the job resumes each transaction partition from its last checkpoint
(card histories plus the next offset, written before offsets are committed) and replays
from there. Replayed counter updates are skipped by the applied-offset guard, and the card
features it recomputes are the same, so there is no double counting and no gap. The
feature log may hold a replayed row twice; readers keep one row per transaction_id.

Redis away (restarting, failing over): the job waits for it without exiting, then does what
a restart does, in process: every owned partition resumes from its checkpoint in Redis
(`_resume_after_redis_outage`). Redis runs with an append-only file, so it comes back with
its state up to about the last second, consistent with itself; state it lost entirely is
detected and rebuilt (state marks, below).

The parts, one job each; `FeatureJob` here consumes, positions partitions, checkpoints and
runs them in order:
* `fraud_features.events`: parsing transactions and labels; dead letters for the rest.
* `fraud_features.terminals`: the shared terminal counters and the terminal values.
* `fraud_features.watermarks`: every partition's progress and the watermark.
* `fraud_features.card_state`: per-partition state, card histories and card features.
* `fraud_features.feature_log`: the feature log, written to the offline store.
* `fraud_features.redis_keys`: the Redis keys of all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import confluent_kafka
import redis
from confluent_kafka import TopicPartition
from prometheus_client import Counter, Histogram

# Checkpoints are pickled PartitionState and CardHistory objects, and those written by
# earlier versions name this module: both stay importable from here.
from fraud_features.card_state import CardFeatureBatch, CardHistory, PartitionState
from fraud_features.events import Transaction, parse_label, parse_transaction
from fraud_features.feature_log import FeatureLog
from fraud_features.redis_keys import LAYOUT, RedisKeys
from fraud_features.terminals import Increment, StateLostError, TerminalCounters
from fraud_features.watermarks import Progress, Watermark
from fraudcore.kafka import DeadLetters, OwnedPartitions, Record, commit_now
from fraudcore.service import Commit, Records, consume_loop
from fraudcore.settings import Settings

__all__ = ["CardHistory", "FeatureJob", "PartitionState"]

COMPONENT = "feature-job"
log = logging.getLogger(__name__)

EVENTS = Counter("feature_job_events", "Events applied by the feature job", ["kind"])
BATCH_SECONDS = Histogram(
    "feature_job_batch_seconds",
    "Time to process one polled batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HELD = Counter("feature_job_held_events", "Transactions held back until the terminal watermark allowed them")
REDIS_OUTAGES = Counter(
    "feature_job_redis_outages",
    "Times Redis stopped answering: the job waited for it, then resumed from its checkpoints",
)
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError)  # "loading the dataset" included
STATE_LOST = Counter(
    "feature_job_state_lost",
    "Partitions whose state Redis lost (in whole or its newest part), rebuilt by replaying them",
    ["when"],
)


class FeatureJob:
    def __init__(
        self,
        settings: Settings,
        *,
        group: str = "feature-job",
        writer: Any = None,
        redis_client: redis.Redis | None = None,
        log_features: bool = True,
        batch_records: int = 5000,
    ) -> None:
        self.settings = settings
        self.group = group
        self.tx_topic = settings.topics.transactions.name
        self.label_topic = settings.topics.labels.name
        self.redis = redis_client or redis.Redis(**settings.redis.client_kwargs())
        self.keys = RedisKeys(settings.features.namespace)
        if writer is None:
            from fraud_features.online import OnlineWriter
            from fraud_features.store import feature_store

            writer = OnlineWriter(feature_store(settings))
        self.writer = writer
        self.terminals = TerminalCounters(
            self.redis,
            self.keys,
            settings.features.label_delay_days,
            writer,
            settings.features.counter_retention_days,
        )
        self.progress = Progress(settings, self.redis, self.keys)
        self.dead_letters = DeadLetters(settings, COMPONENT)
        self.log_features = log_features
        self.feature_log = FeatureLog(settings)
        self.batch_records = batch_records
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.owned = OwnedPartitions(self._resume_at, self._release, self._forget)
        self.last_checkpoint = time.monotonic()
        self.consumer: confluent_kafka.Consumer | None = None
        self.processed = 0
        # Per partition, the state mark this job wrote with its last checkpoint.
        self.marks: dict[TopicPartition, int] = {}
        self.rebuilds = 0
        self.stop = threading.Event()  # run's

    # --- rebalance (librdkafka runs these between batches, on the loop's thread) -----------
    def _resume_at(self, tp: TopicPartition, committed: int | None) -> int | None:
        """Load a newly assigned partition's checkpoint; where its records resume (waiting
        for Redis if it is away)."""
        while True:
            try:
                return self._resume_from_redis(tp, committed)
            except REDIS_AWAY as error:
                self._wait_for_redis(error)

    def _resume_from_redis(self, tp: TopicPartition, committed: int | None) -> int | None:
        """A partition the group has read before (``committed``) whose state Redis no longer
        holds (no state mark) is rebuilt from the topic's retention instead of resuming
        with empty state."""
        known = self._holds_state(tp)
        if not known and self.redis.exists(self.keys.earlier_layout_mark(tp)):
            log.warning(
                "%s[%d]: the feature job's state in Redis has an earlier layout: rebuilding it "
                "in layout %s from the start of the topic's retention",
                tp.topic,
                tp.partition,
                LAYOUT,
            )
        elif not known and committed is not None:
            self._state_lost([tp], "at assignment")
        return self._load(tp, committed if known else None)

    def _holds_state(self, tp: TopicPartition) -> bool:
        """Whether Redis holds any of the partition's state: any of its own keys (a checkpoint or
        applied counters written before state marks existed included)."""
        return bool(
            self.redis.exists(self.keys.state_mark(tp), self.keys.checkpoint(tp), self.keys.applied(tp))
        )

    def _load(self, tp: TopicPartition, committed: int | None) -> int | None:
        """Take the partition's state and mark from Redis; return where its records resume
        (None: the beginning). Transactions resume at their checkpoint; labels where their
        counters stand, or earlier (a replayed increment is skipped, a lost one applied)."""
        state = PartitionState()
        resume = None
        if tp.topic == self.tx_topic:
            blob = self.redis.get(self.keys.checkpoint(tp))
            if blob:
                state = PartitionState.from_checkpoint(cast(bytes, blob))
                resume = state.next_offset
        else:
            applied = cast(bytes | None, self.redis.get(self.keys.applied(tp)))
            if applied is not None and int(applied) >= 0:
                resume = int(applied) if committed is None else min(int(applied), committed)
            else:
                resume = committed
        mark = cast(bytes | None, self.redis.get(self.keys.state_mark(tp)))
        if mark is None:
            self.marks.pop(tp, None)
        else:
            self.marks[tp] = int(mark)
        self.partitions[tp] = state
        return resume

    def _state_lost(self, tps: list[TopicPartition], when: str) -> None:
        STATE_LOST.labels(when).inc(len(tps))
        self.rebuilds += len(tps)
        log.error(
            "Redis no longer holds the feature job's state for %s (%s): rebuilding by replaying "
            "from what Redis still has, else from the start of the topic's retention",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps),
            when,
        )

    def _wait_for_redis(self, error: Exception) -> None:
        """Until Redis answers again (the consumer is not polled meanwhile); re-raises
        ``error`` if the job is stopped first (nothing more is checkpointed or committed)."""
        REDIS_OUTAGES.inc()
        log.warning("Redis is not answering (%s): waiting for it", error)
        started, delay = time.monotonic(), 0.25
        while not self.stop.is_set():
            try:
                self.redis.ping()
                log.info("Redis answers again after %.1f s", time.monotonic() - started)
                return
            except REDIS_AWAY:
                self.stop.wait(delay)
                delay = min(2 * delay, 5.0)
        raise error

    def _resume_after_redis_outage(self, error: Exception) -> None:
        """Redis stopped answering part-way through a batch: once it answers, reload every
        owned partition from what Redis holds and read it again from there, as a restart
        would. Whatever was applied before the outage is skipped on the replay (applied
        offsets), whatever was not is applied; if Redis came back without the partition's
        state (no AOF), it is rebuilt from the topic."""
        while True:
            self._wait_for_redis(error)
            try:
                self._reload_all()
                return
            except REDIS_AWAY as again:  # away again before the reload finished
                error = again

    def _reload_all(self) -> None:
        self.terminals.forget_computed()
        for tp in list(self.partitions):
            if tp in self.marks and not self._holds_state(tp):  # it had state before the outage
                self._state_lost([tp], "after an outage")
            self.owned.rewind(tp, self._load(tp, None))

    def _rebuild(self) -> None:
        """Redis lost state (emptied, or restarted from an older snapshot) while this job ran
        (a state mark is not the one last written or read). Such a loss takes the whole
        instance, so every owned partition is reloaded from what Redis still holds and its
        records are replayed from there; the terminal values computed so far are dropped."""
        owned = list(self.partitions)
        self._state_lost(owned, "while running")
        self.terminals.forget_computed()
        self.feature_log.discard()  # rows since the last checkpoint may have read lost state
        for tp in owned:
            self.owned.rewind(tp, self._load(tp, None))

    def _release(self, _revoked: list[TopicPartition]) -> Commit:
        """Before partitions move: checkpoint, so their next owner resumes where this
        replica stopped (OwnedPartitions commits what this returns)."""
        return self.checkpoint()

    def _forget(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.partitions.pop(tp, None)
            self.marks.pop(tp, None)

    # --- the batch --------------------------------------------------------------------------
    def handle(self, records: Records) -> Commit:
        try:
            return self._handle(records)
        except REDIS_AWAY as error:
            self._resume_after_redis_outage(error)  # this batch's records come again
            return {}

    def _idle(self) -> Commit:
        try:
            self._publish_progress()
            self.drain()
            return self._checkpoint_if_due()
        except REDIS_AWAY as error:
            self._resume_after_redis_outage(error)
            return {}

    def _handle(self, records: Records) -> Commit:
        t0 = time.perf_counter()
        # Counters first (exactly once per record), then progress, then features. A partition's
        # position moves only once its counters are applied and its transactions held, so a
        # failure part-way (Redis away) never lets a checkpoint commit past unapplied records.
        for tp, recs in self.owned.take(records).items():
            txs, increments = self._read(tp, recs)
            try:
                mark = self.terminals.apply(tp, increments, self.marks.get(tp))
            except StateLostError:
                self._rebuild()  # this batch's records come again, from the rebuilt positions
                return {}
            if mark is not None:
                self.marks[tp] = mark
            state = self.partitions[tp]
            state.held.extend(txs)
            state.next_offset = recs[-1].offset + 1
        self._publish_progress()
        self.drain()
        BATCH_SECONDS.observe(time.perf_counter() - t0)
        return self._checkpoint_if_due()

    def _read(self, tp: TopicPartition, records: list[Record]) -> tuple[list[Transaction], list[Increment]]:
        """A partition's records: its new transactions and the counter increments of all."""
        state = self.partitions[tp]
        txs: list[Transaction] = []
        if tp.topic == self.tx_topic:
            txs = state.fresh(self.dead_letters.parse_all(records, parse_transaction))
            increments = [self.terminals.transaction_increment(tx) for tx in txs]
            state.max_event_us = max([state.max_event_us, *(tx.t_us for tx in txs)])
            EVENTS.labels("transaction").inc(len(txs))
        else:
            labels = self.dead_letters.parse_all(records, parse_label)
            increments = [i for label in labels if (i := self.terminals.label_increment(label))]
            state.max_event_us = max([state.max_event_us, *(label.reported_us for label in labels)])
            if labels:
                EVENTS.labels("label").inc(len(labels))
        return txs, increments

    def _publish_progress(self) -> None:
        assert self.consumer is not None
        self.progress.publish(self.consumer, self.partitions)

    def drain(self) -> None:
        """Compute features for every held transaction whose terminal values are final.

        A partition whose head must wait for other partitions keeps its later transactions
        in order behind it (they are not blocked on), so this replica keeps consuming the
        partitions the watermark waits for.
        """
        assert self.consumer is not None
        waiting = [tp for tp, st in self.partitions.items() if st.held]
        if not waiting:
            return
        watermark = self.progress.watermark()
        for tp in waiting:
            state = self.partitions[tp]
            ready = self._ready(state.held, watermark)
            if ready:
                batch = state.held[:ready]
                self._features(tp, batch)
                state.held = state.held[ready:]  # only once their features are out
                self.processed += len(batch)
            if state.held and not ready:
                HELD.inc(len(state.held))

    def _ready(self, held: list[Transaction], watermark: Watermark) -> int:
        """How many of the held transactions, from the first, have final terminal values."""
        ready = 0
        for tx in held:
            if not self.terminals.final((tx.terminal_id, tx.hour), watermark):
                break
            ready += 1
        return ready

    def busy(self) -> bool:
        return any(st.held for st in self.partitions.values())

    # --- features ----------------------------------------------------------------------------
    def _features(self, tp: TopicPartition, txs: list[Transaction]) -> None:
        """Serve the transactions the features as they stood just before each, write the new
        card state and their hours' terminal values online, log what was served, and then add
        them to their cards' histories."""
        state = self.partitions[tp]
        cards = CardFeatureBatch.compute(state.cards, txs)
        self.writer.write_cards(*cards.latest_states())
        terminal_hours = [(tx.terminal_id, tx.hour) for tx in txs]
        self.terminals.compute(terminal_hours)
        if self.log_features:
            self.feature_log.add(tp.partition, txs, cards.served, self.terminals.values(terminal_hours))
        state.update_histories(txs)

    # --- checkpoints --------------------------------------------------------------------------
    def _checkpoint_if_due(self, force: bool = False) -> Commit:
        if (
            not force
            and time.monotonic() - self.last_checkpoint < self.settings.features.checkpoint_interval_s
        ):
            return {}
        return self.checkpoint()

    def checkpoint(self) -> Commit:
        """Feature log, then card state with its offsets, then (returned) the commit. While
        the object store is away the log cannot be written: nothing is checkpointed or
        committed past it (the online features keep flowing; the log catches up later)."""
        self.dead_letters.flush()
        offsets: Commit = {}
        marks: dict[TopicPartition, int] = {}
        marked = [tp for tp in self.partitions if tp in self.marks]
        watched = [self.keys.state_mark(tp) for tp in marked]
        with self.redis.pipeline(transaction=True) as pipe:
            # The checkpoint is written only over the state this job last saw (WATCH): if a
            # mark moved or went, Redis lost state meanwhile and the partitions are rebuilt.
            # Checked before the log is written: rows computed after a loss read counters
            # that were gone, and must not reach the log (their records are replayed). A loss
            # after this check fails the write below, and the logged rows predate it.
            if watched:
                pipe.watch(*watched)
                found = cast(list[bytes | None], pipe.mget(watched))
                if any(m is None or int(m) != self.marks[tp] for tp, m in zip(marked, found, strict=True)):
                    pipe.unwatch()
                    self._rebuild()
                    return {}
            if not self.feature_log.flush():
                return {}
            pipe.multi()
            for tp, state in self.partitions.items():
                resume = state.resume_offset
                if resume is None:
                    continue
                if tp.topic == self.tx_topic:
                    pipe.set(self.keys.checkpoint(tp), state.checkpoint())
                marks[tp] = self.marks.get(tp, 0) + 1
                pipe.set(self.keys.state_mark(tp), marks[tp])
                offsets[tp] = resume
            try:
                pipe.execute()
            except redis.WatchError:
                self._rebuild()
                return {}
        self.marks.update(marks)
        self.last_checkpoint = time.monotonic()
        return offsets

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> int:
        self.stop = stop
        # Each batch has a fixed cost (Redis scripts, watermarks, an online write), so a
        # trickle of single-record batches costs far more per event than a stream does:
        # the fetch waits for 256 KiB or ``stream_max_wait_ms`` (see FeatureSettings).
        self.consumer = self.owned.consumer(
            self.settings,
            self.group,
            [self.tx_topic, self.label_topic],
            **{"fetch.min.bytes": 256 * 1024, "fetch.wait.max.ms": self.settings.features.stream_max_wait_ms},
        )

        redis_failed = False
        try:
            return consume_loop(
                self.consumer,
                self.group,
                self.handle,
                stop=stop,
                max_records=self.batch_records,
                idle_exit_s=idle_exit_s,
                on_idle=self._idle,
                busy=self.busy,
            )
        except REDIS_AWAY:
            redis_failed = True  # stopped while Redis was away: what is in memory is not saved
            raise
        finally:
            try:
                if not redis_failed:
                    commit_now(self.consumer, self.checkpoint())
            finally:
                self.consumer.close()
                self.progress.close()
                self.dead_letters.close()
