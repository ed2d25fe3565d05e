"""The streaming feature job: Kafka events in, fresh online features and a feature log out.

It consumes ``transactions`` (keyed by card) and ``fraud-labels`` with one consumer group,
and for every transaction records the features as they stood just before it (the feature
log, in the offline store) and writes the new card state and the day's terminal values to
the Feast online store. All feature math is `fraudcore.features`, shared with the backfill.

Scaling out: run more replicas of the same consumer group.
* Card state follows the card-keyed partitions: each card's window history lives in the
  memory of the one replica that owns its partition, checkpointed to Redis.
* Terminal state is shared and keyed by terminal in Redis, updated atomically: per-day
  transaction counters and per-(transaction day, report day) fraud counters, applied by a
  Lua script that also records the partition's applied offset, so a replayed record is
  never counted twice whichever replica replays it.
* Terminal values for a UTC day ``d`` only read counters of days before ``d - D`` and labels
  reported before ``d``. They are computed once the watermark allows it: every transaction
  partition has progressed past day ``d - D`` and every label partition past the start of
  ``d`` (a caught-up partition counts as complete). So two replicas compute the same values
  as one, in any interleaving.

Late and out-of-order events: a transaction older than its card's latest is applied at its
event time (it counts in later windows; values already served are not revised and the
feature log keeps what was served). A transaction or label older than the terminal
watermark by more than the label delay only reaches days not yet computed.

Restart after a crash: the job resumes each transaction partition from its last checkpoint
(card histories plus the next offset, written before offsets are committed) and replays
from there. Replayed counter updates are skipped by the applied-offset guard, and the card
features it recomputes are the same, so there is no double counting and no gap. The
feature log may hold a replayed row twice; readers keep one row per transaction_id.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from fraudcore import features as F
from fraudcore.events import parse_timestamp
from fraudcore.kafka import NewPartitions, by_partition, committed_or_beginning, dead_letter
from fraudcore.kafka import consumer as make_consumer
from fraudcore.kafka import producer as make_producer
from fraudcore.service import Commit, Records, consume_loop
from fraudcore.settings import Settings

log = logging.getLogger(__name__)
COMPONENT = "feature-job"

EVENTS = Counter("feature_job_events", "Events applied by the feature job", ["kind"])
LATE = Counter("feature_job_late_events", "Transactions older than their card's latest event")
BATCH_SECONDS = Histogram(
    "feature_job_batch_seconds",
    "Time to process one polled batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HELD = Counter("feature_job_held_events", "Transactions held back until the terminal watermark allowed them")

# Applies counter increments for one partition exactly once: ARGV holds (offset, hash, field)
# triples in offset order; those below the partition's applied offset were applied before.
APPLY_LUA = """
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
local last = applied
for i = 1, #ARGV, 3 do
  local offset = tonumber(ARGV[i])
  if offset >= applied then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], 1)
    redis.call('EXPIRE', ARGV[i + 1], 5184000)
    if offset + 1 > last then last = offset + 1 end
  end
end
if last > applied then redis.call('SET', KEYS[1], last) end
return last
"""

# Every counter hash of a batch's terminals in one reply (parsed in C by hiredis).
FETCH_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

INF = float("inf")


@dataclass
class Transaction:
    offset: int
    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    t_us: int


@dataclass
class CardHistory:
    """A card's events of the last 30 days before its latest one, in event-time order."""

    t_us: list[int] = field(default_factory=list)
    cents: list[int] = field(default_factory=list)
    terminal: list[str] = field(default_factory=list)


@dataclass
class PartitionState:
    cards: dict[str, CardHistory] = field(default_factory=dict)
    next_offset: int | None = None  # after the last record whose counters are applied
    max_event_us: int = -(2**62)
    # Transactions whose counters are applied but whose features wait for the watermark,
    # in partition order.
    held: list[Transaction] = field(default_factory=list)

    @property
    def resume_offset(self) -> int | None:
        """Where a restart must resume: the first transaction without features yet."""
        return self.held[0].offset if self.held else self.next_offset


_TX_FIELDS = ("transaction_id", "card_id", "terminal_id", "amount", "timestamp")
_LABEL_FIELDS = ("terminal_id", "transaction_timestamp", "reported_at")


def _require(event: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(event, dict):
        raise ValueError("payload: must be a JSON object")
    missing = [f for f in fields if f not in event]
    if missing:
        raise ValueError("; ".join(f"{f}: is required" for f in missing))


def _parse_transaction(value: bytes, offset: int) -> Transaction:
    event = orjson.loads(value)
    _require(event, _TX_FIELDS)
    amount = float(event["amount"])
    if not amount > 0:
        raise ValueError("amount: must be > 0")
    ts = parse_timestamp(event["timestamp"])
    t_us = int(ts.timestamp()) * F.US_PER_S + ts.microsecond
    ids = [event["transaction_id"], event["card_id"], event["terminal_id"]]
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError("transaction_id, card_id, terminal_id: must be non-empty strings")
    return Transaction(offset, ids[0], ids[1], ids[2], amount, t_us)


def _to_us(value: str) -> int:
    ts = parse_timestamp(value)
    return int(ts.timestamp()) * F.US_PER_S + ts.microsecond


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]}: is required"
    if isinstance(exc, orjson.JSONDecodeError):
        return "payload: not valid UTF-8 JSON"
    return str(exc) or type(exc).__name__


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
        self.ns = settings.features.namespace
        self.delay = settings.features.label_delay_days
        self.tx_topic = settings.topics.transactions.name
        self.label_topic = settings.topics.labels.name
        self.redis = redis_client or redis.Redis(host=settings.redis.host, port=settings.redis.port)
        self.apply_script = self.redis.register_script(APPLY_LUA)
        self.fetch_script = self.redis.register_script(FETCH_LUA)
        if writer is None:
            from fraud_features.online import OnlineWriter
            from fraud_features.store import feature_store

            writer = OnlineWriter(feature_store(settings))
        self.writer = writer
        self.log_features = log_features
        self.batch_records = batch_records
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.assignments = NewPartitions(on_revoked=self._forget)
        self.terminal_cache: dict[tuple[str, int], tuple[float, ...]] = {}
        self.feature_log: list[pd.DataFrame] = []
        self.log_offsets: dict[int, list[int]] = {}
        self.last_checkpoint = time.monotonic()
        self.consumer: KafkaConsumer | None = None
        self.dlq = make_producer(settings)
        self.processed = 0

    # --- keys ---------------------------------------------------------------------------
    def _k(self, *parts: object) -> str:
        return ":".join([self.ns, *map(str, parts)])

    # --- rebalance ----------------------------------------------------------------------
    def _forget(self, tp: TopicPartition) -> None:
        """A revoked partition's state goes: its next owner resumes from the checkpoint."""
        self.partitions.pop(tp, None)

    def _resume_at(self, tp: TopicPartition) -> int:
        """Load a newly assigned partition's checkpoint; where its records resume."""
        assert self.consumer is not None
        state = PartitionState()
        if tp.topic == self.tx_topic:
            blob = self.redis.get(self._k("ckpt", tp.topic, tp.partition))
            if blob:
                state = pickle.loads(cast(bytes, blob))  # written by this job only (trusted)
        self.partitions[tp] = state
        if state.next_offset is not None:
            return state.next_offset
        return committed_or_beginning(self.consumer, tp)

    # --- the batch --------------------------------------------------------------------------
    def handle(self, records: Records) -> Commit:
        t0 = time.perf_counter()
        assert self.consumer is not None
        by_tp = by_partition(records)
        self.assignments.start_new(self.consumer, by_tp, self._resume_at)
        for tp in [tp for tp in by_tp if tp not in self.partitions]:
            del by_tp[tp]  # revoked while they were in flight: the new owner reads them

        new_tx: dict[TopicPartition, list[Transaction]] = {}
        increments: dict[TopicPartition, list[str]] = {}
        for tp, recs in by_tp.items():
            args: list[str] = []
            state = self.partitions[tp]
            if tp.topic == self.tx_topic:
                txs = []
                for r in recs:
                    try:
                        tx = _parse_transaction(r.value, r.offset)
                    except Exception as exc:  # bad input: quarantine, never crash
                        self._dead_letter(r, _reason(exc))
                        continue
                    txs.append(tx)
                    args += [str(r.offset), self._k("tc", tx.terminal_id), str(tx.t_us // F.DAY_US)]
                    state.max_event_us = max(state.max_event_us, tx.t_us)
                new_tx[tp] = txs
                EVENTS.labels("transaction").inc(len(txs))
            else:
                for r in recs:
                    try:
                        event = orjson.loads(r.value)
                        _require(event, _LABEL_FIELDS)
                        t_us, rep_us = _to_us(event["transaction_timestamp"]), _to_us(event["reported_at"])
                        terminal = event["terminal_id"]
                        if not (isinstance(terminal, str) and terminal):
                            raise ValueError("terminal_id: must be a non-empty string")
                    except Exception as exc:
                        self._dead_letter(r, _reason(exc))
                        continue
                    args += [
                        str(r.offset),
                        self._k("tf", terminal),
                        f"{t_us // F.DAY_US}:{rep_us // F.DAY_US}",
                    ]
                    state.max_event_us = max(state.max_event_us, rep_us)
                    EVENTS.labels("label").inc()
            increments[tp] = args
            state.next_offset = recs[-1].offset + 1
        # Counters first (exactly once per record), then progress, then features.
        for tp, args in increments.items():
            if args:
                self.apply_script(keys=[self._k("applied", tp.topic, tp.partition)], args=args)
        self._publish_progress()
        for tp, txs in new_tx.items():
            self.partitions[tp].held.extend(txs)
        self.drain()
        BATCH_SECONDS.observe(time.perf_counter() - t0)
        return self._checkpoint_if_due()

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
        tx_wm, label_wm = self._watermarks()
        for tp in waiting:
            state = self.partitions[tp]
            ready = 0
            for tx in state.held:
                day = tx.t_us // F.DAY_US
                if (tx.terminal_id, day) in self.terminal_cache or (
                    tx_wm >= (day - self.delay) * F.DAY_US and label_wm >= day * F.DAY_US
                ):
                    ready += 1
                else:
                    break
            if ready:
                batch, state.held = state.held[:ready], state.held[ready:]
                self._features(tp, batch)
                self.processed += len(batch)
            if state.held and not ready:
                HELD.inc(len(state.held))

    def busy(self) -> bool:
        return any(st.held for st in self.partitions.values())

    def _dead_letter(self, record: Any, reason: str) -> None:
        label = reason.split(":")[0] if ":" in reason else "payload"
        dead_letter(self.dlq.send, self.settings, COMPONENT, label, reason, record)

    # --- watermarks ------------------------------------------------------------------------
    def _publish_progress(self) -> None:
        assert self.consumer is not None
        mapping: dict[str, str] = {}
        for tp in self.consumer.assignment():
            state = self.partitions.get(tp)
            high = self.consumer.highwater(tp)
            caught_up = (
                high is not None
                and state is not None
                and state.next_offset is not None
                and state.next_offset >= high
            )
            if high == 0 or caught_up:
                mapping[f"{tp.topic}:{tp.partition}"] = "inf"
            elif state is not None and state.max_event_us > -(2**62):
                mapping[f"{tp.topic}:{tp.partition}"] = str(state.max_event_us)
        if mapping:
            self.redis.hset(self._k("progress"), mapping=mapping)

    def _watermarks(self) -> tuple[float, float]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self._k("progress")))
        progress = {k.decode(): float(v) for k, v in raw.items()}
        topics = self.settings.topics
        tx = min(progress.get(f"{self.tx_topic}:{p}", -INF) for p in range(topics.transactions.partitions))
        labels = min(progress.get(f"{self.label_topic}:{p}", -INF) for p in range(topics.labels.partitions))
        return tx, labels

    # --- features ----------------------------------------------------------------------------
    def _terminal_values(self, pairs: list[tuple[str, int]]) -> None:
        missing = sorted({p for p in pairs if p not in self.terminal_cache}, key=lambda p: p[1])
        if not missing:
            return
        terminals = sorted({m for m, _ in missing})
        keys = [k for m in terminals for k in (self._k("tc", m), self._k("tf", m))]
        replies = self.fetch_script(keys=keys, args=[])
        # Counters become pseudo-events at day starts: the shared function then applies the
        # very same windows and "reported before the day" rule as the backfill.
        tx_rows: list[tuple[int, int, int]] = []  # (terminal code, day, count)
        fr_rows: list[tuple[int, int, int, int]] = []  # (terminal code, tx day, report day, count)
        for code in range(len(terminals)):
            flat = replies[2 * code]
            tx_rows += [(code, int(flat[j]), int(flat[j + 1])) for j in range(0, len(flat), 2)]
            flat = replies[2 * code + 1]
            for j in range(0, len(flat), 2):
                txday, repday = flat[j].split(b":")
                fr_rows.append((code, int(txday), int(repday), int(flat[j + 1])))
        tx = np.array(tx_rows, dtype=np.int64).reshape(-1, 3)
        fr = np.array(fr_rows, dtype=np.int64).reshape(-1, 4)
        tx_term, tx_t = np.repeat(tx[:, 0], tx[:, 2]), np.repeat(tx[:, 1], tx[:, 2]) * F.DAY_US
        fr_term, fr_t = np.repeat(fr[:, 0], fr[:, 3]), np.repeat(fr[:, 1], fr[:, 3]) * F.DAY_US
        fr_rep = np.repeat(fr[:, 2], fr[:, 3]) * F.DAY_US
        index = {m: i for i, m in enumerate(terminals)}
        q_term = np.array([index[m] for m, _ in missing], dtype=np.int64)
        q_day = np.array([d for _, d in missing], dtype=np.int64)
        values = F.terminal_features(q_term, q_day, tx_term, tx_t, fr_term, fr_t, fr_rep, self.delay)
        for i, pair in enumerate(missing):
            self.terminal_cache[pair] = tuple(float(values[n][i]) for n in F.TERMINAL_FEATURES)
        # Only today's and yesterday's values can be read by a live transaction (the view's
        # TTL is two days): a backfill computes older days for the feature log only.
        recent = q_day >= int(time.time() // 86_400) - 1
        if recent.any():
            self.writer.write_terminals(
                [m for (m, _), keep in zip(missing, recent, strict=True) if keep],
                q_day[recent] * F.DAY_US,
                {name: column[recent] for name, column in values.items()},
            )
        if len(self.terminal_cache) > 500_000:  # values of past days are never needed again
            today = int(q_day.max())
            self.terminal_cache = {k: v for k, v in self.terminal_cache.items() if k[1] >= today - 1}

    def _features(self, tp: TopicPartition, txs: list[Transaction]) -> None:
        state = self.partitions[tp]
        cards = {tx.card_id for tx in txs}
        hist_card: list[str] = []
        hist_t: list[int] = []
        hist_c: list[int] = []
        hist_term: list[str] = []
        for card in cards:
            h = state.cards.get(card)
            if h:
                hist_card += [card] * len(h.t_us)
                hist_t += h.t_us
                hist_c += h.cents
                hist_term += h.terminal
        n_hist = len(hist_t)
        card_ids = np.array(hist_card + [tx.card_id for tx in txs], dtype=object)
        t_us = np.array(hist_t + [tx.t_us for tx in txs], dtype=np.int64)
        cents = np.concatenate([np.array(hist_c, dtype=np.int64), F.to_cents([tx.amount for tx in txs])])
        terminals = np.array(hist_term + [tx.terminal_id for tx in txs], dtype=object)
        query = np.zeros(len(t_us), dtype=bool)
        query[n_hist:] = True
        result = F.card_features(F.codes(card_ids), t_us, cents, F.codes(terminals), query)

        # Online: each card's state after its latest event (by event time).
        frame = pd.DataFrame({"card": card_ids, "t": t_us, "row": np.arange(len(t_us))})
        latest = frame.sort_values(["t", "row"]).groupby("card", sort=False).tail(1)
        rows = latest["row"].to_numpy()
        self.writer.write_cards(
            list(latest["card"]), latest["t"].to_numpy(), {n: result.state[n][rows] for n in F.CARD_STATE}
        )

        # Terminal values of each transaction's day.
        pairs = [(tx.terminal_id, tx.t_us // F.DAY_US) for tx in txs]
        self._terminal_values(pairs)

        if self.log_features:
            new_t = t_us[n_hist:]
            request = F.request_features(np.array([tx.amount for tx in txs]), new_t, result.served)
            terminal_rows = np.array([self.terminal_cache[p] for p in pairs], dtype=np.float64)
            log_frame = pd.DataFrame(
                {
                    "transaction_id": [tx.transaction_id for tx in txs],
                    "card_id": [tx.card_id for tx in txs],
                    "terminal_id": [tx.terminal_id for tx in txs],
                    "timestamp": pd.to_datetime(new_t, unit="us", utc=True),
                    "kafka_partition": tp.partition,
                    "kafka_offset": [tx.offset for tx in txs],
                }
            )
            for name in F.MODEL_FEATURES:
                if name in request:
                    log_frame[name] = request[name]
                elif name in result.served:
                    log_frame[name] = result.served[name]
            for j, name in enumerate(F.TERMINAL_FEATURES):
                log_frame[name] = terminal_rows[:, j]
            log_frame["card_last_tx_time"] = result.served["card_last_tx_time"]
            self.feature_log.append(log_frame)

        # Update histories: insert in event-time order, keep 30 days before the latest event.
        for tx in txs:
            h = state.cards.setdefault(tx.card_id, CardHistory())
            cents_i = round(tx.amount * 100)
            if h.t_us and tx.t_us < h.t_us[-1]:
                LATE.inc()
                pos = int(np.searchsorted(np.array(h.t_us), tx.t_us, side="right"))
                h.t_us.insert(pos, tx.t_us)
                h.cents.insert(pos, cents_i)
                h.terminal.insert(pos, tx.terminal_id)
            else:
                h.t_us.append(tx.t_us)
                h.cents.append(cents_i)
                h.terminal.append(tx.terminal_id)
        horizon_s = F.CARD_HISTORY_S * F.US_PER_S
        for card in cards:
            h = state.cards[card]
            cut = int(np.searchsorted(np.array(h.t_us), h.t_us[-1] - horizon_s, side="right"))
            if cut:
                del h.t_us[:cut], h.cents[:cut], h.terminal[:cut]

    # --- checkpoints --------------------------------------------------------------------------
    def _checkpoint_if_due(self, force: bool = False) -> Commit:
        if (
            not force
            and time.monotonic() - self.last_checkpoint < self.settings.features.checkpoint_interval_s
        ):
            return {}
        return self.checkpoint()

    def checkpoint(self) -> Commit:
        """Feature log, then card state with its offsets, then (returned) the commit."""
        self.dlq.flush()
        self._flush_feature_log()
        offsets: Commit = {}
        pipe = self.redis.pipeline(transaction=True)
        for tp, state in self.partitions.items():
            resume = state.resume_offset
            if resume is None:
                continue
            if tp.topic == self.tx_topic:
                snapshot = PartitionState(state.cards, resume, state.max_event_us)
                pipe.set(self._k("ckpt", tp.topic, tp.partition), pickle.dumps(snapshot, protocol=5))
            offsets[tp] = OffsetAndMetadata(resume, "", -1)
        pipe.execute()
        self.last_checkpoint = time.monotonic()
        return offsets

    def _flush_feature_log(self) -> None:
        if not self.feature_log:
            return
        frame = pd.concat(self.feature_log, ignore_index=True)
        self.feature_log = []
        from fraud_features.store import offline_path, storage_target

        for partition, part in frame.groupby("kafka_partition"):
            first, last = int(part["kafka_offset"].min()), int(part["kafka_offset"].max())
            name = f"p{int(cast(int, partition)):03d}-o{first:012d}-{last:012d}"
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), buf, compression="zstd")
            storage_target(
                self.settings, f"{offline_path(self.settings, 'feature_log')}/{name}.parquet", buf.getvalue()
            )

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> int:
        # Each batch has a fixed cost (Redis scripts, watermarks, an online write), so a
        # trickle of single-record batches costs far more per event than a stream does:
        # wait up to 50 ms for 32 KiB, which keeps features fresh and batches useful.
        self.consumer = make_consumer(
            self.settings,
            self.group,
            self.tx_topic,
            self.label_topic,
            listener=self.assignments,
            max_poll_records=self.batch_records,
            fetch_min_bytes=32 * 1024,
            fetch_max_wait_ms=50,
        )

        def idle() -> None:
            if self.consumer is not None:
                self.assignments.start_new(self.consumer, {}, self._resume_at)
            self._publish_progress()
            self.drain()
            offsets = self._checkpoint_if_due()
            if offsets and self.consumer is not None:
                self.consumer.commit(offsets)

        try:
            return consume_loop(
                self.consumer,
                self.group,
                self.handle,
                stop=stop,
                idle_exit_s=idle_exit_s,
                on_idle=idle,
                busy=self.busy,
            )
        finally:
            offsets = self.checkpoint()
            if offsets:
                self.consumer.commit(offsets)
            self.consumer.close()
            self.dlq.close()
